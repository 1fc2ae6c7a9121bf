"""The platform's shared vocabulary: channels, severities, remedies, the contact field each
channel replies on, text normalisation, "satisfied", and how dates are shown to customers.

Every service speaks these words; each is defined here and nowhere else.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date


class Channel(StrEnum):
    in_person = "in_person"
    phone = "phone"
    email = "email"
    letter = "letter"
    web = "web"
    chat = "chat"
    social = "social"


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class Remedy(StrEnum):
    """What a solution offers (UK Consumer Rights Act remedies, and the softer ones)."""

    repair = "repair"
    replacement = "replacement"
    refund = "refund"
    repeat_performance = "repeat_performance"
    price_reduction = "price_reduction"
    apology = "apology"
    goodwill_gesture = "goodwill_gesture"
    explanation = "explanation"


MONEY_REMEDIES = frozenset({Remedy.refund, Remedy.price_reduction, Remedy.goodwill_gesture})

CONTACT_FIELD: dict[str, str] = {
    Channel.email: "email",
    Channel.phone: "phone",
    Channel.letter: "postal_address",
}
"""The customer field a reply on the channel goes to; other channels reach the customer through
the gateway, by the complaint's reference."""

# ISO 4217 currencies whose minor unit is not the cent (every other has two decimals)
_ZERO_DECIMALS = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX")
_ZERO_DECIMALS_TOO = ("UYI", "VND", "VUV", "XAF", "XOF", "XPF")
_MINOR_UNITS = {
    **dict.fromkeys((*_ZERO_DECIMALS, *_ZERO_DECIMALS_TOO), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def normalise_amount(amount: Decimal, currency: str) -> Decimal:
    """``amount`` with exactly its currency's decimals (``10.5 EUR`` → ``10.50``, ``1000 JPY``
    → ``1000``); finer than the currency's minor unit is a ``ValueError``."""
    exponent = Decimal(1).scaleb(-_MINOR_UNITS.get(currency, 2))
    normalised = amount.quantize(exponent)
    if normalised != amount:
        raise ValueError(f"{currency} has {_MINOR_UNITS.get(currency, 2)} decimals at most")
    return normalised


SATISFIED_MIN_SCORE = 4
"""CSS counts answers scoring 4 or 5 of 5 as satisfied."""

REOPEN_MAX_SCORE = 2
"""An answer scoring 2 or less (or saying the problem is not solved) reopens the case."""


def satisfied(score: int) -> bool:
    return score >= SATISFIED_MIN_SCORE


def _class_of(code_points: list[int]) -> str:
    """A regular expression's character class of ``code_points`` (ascending), as ranges."""
    ranges: list[list[int]] = []
    for cp in code_points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )


# The combining marks (accents and the like: what NFKD splits off a letter) of the Basic
# Multilingual Plane, by unicodedata: one character class, which the regular expression engine
# answers by a table lookup a character.  Taking them off a text so is 3-5 times as quick as
# asking unicodedata about each character (5,000 characters of Portuguese, Hungarian or Greek);
# a text with characters beyond that plane (rare: emoji, historic scripts) is also asked
# character by character, for the marks there.
_BMP_MARKS = re.compile(
    f"[{_class_of([cp for cp in range(0x10000) if unicodedata.combining(chr(cp))])}]+"
)


def normalise(text: str | None) -> str:
    """Lower case, no accents, single spaces: ``"Péssimo  Dia"`` → ``"pessimo dia"``.  Every
    complaint's text passes here (its rules, its duplicate check): its cost grows with the
    text, so each step is one pass in C where one does the same."""
    if not text:
        return ""
    folded = text.casefold()
    if not folded.isascii():  # ASCII has no accents to take off (and NFKD leaves it as it is)
        folded = _BMP_MARKS.sub("", unicodedata.normalize("NFKD", folded))
        if max(folded, default="\0") > "\uffff":
            folded = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(folded.split())  # runs of white space as one space, none at the ends


def format_when(at: datetime, language: str, timezone: str, *, zone_name: bool = False) -> str:
    """A date and time as a customer of ``language`` reads it, in the business time zone:
    ``"12 de março de 2026 14:30"`` (with ``zone_name``: ``"… 14:30 (WET)"``)."""
    local = at.astimezone(ZoneInfo(timezone))
    text = f"{_long_date(local.date(), language)} {local:%H:%M}"
    return f"{text} ({local.tzname()})" if zone_name else text


@functools.lru_cache(maxsize=4096)
def _long_date(day: date, language: str) -> str:
    """A day in ``language``'s long form (about 20 µs in the formatting library; the days
    messages name are few: deadlines and appointments of the coming weeks)."""
    return format_date(day, format="long", locale=language)


ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
"""A name or subject: no control characters (no line breaks), as it may end up in an e-mail
header."""


def load_formats(languages: Iterable[str]) -> None:
    """Have the formatting library read ``languages``' data now.  It reads a language's data
    from disk the first time it formats in it (5-14 ms a language, measured), which the first
    customer written to in that language waited for, inside the transaction that recorded
    the message (a complaint's acknowledgement: with the other complaints of its group)."""
    for language in languages:
        Locale.parse(language).date_formats  # noqa: B018 (read for its effect: the data loads)


def known_language(code: str) -> bool:
    """Whether ``code`` is a language the formatting library knows (``xx`` is well-formed but
    names no language)."""
    try:
        Locale.parse(code)
    except (UnknownLocaleError, ValueError):
        return False
    return True
