"""Suggestion and alert rules (data files): the policy taxonomy's category keywords, strongly
negative wording, and the signals of public exposure and of a safety incident in the text."""

from __future__ import annotations

import itertools
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from complaints_intake.text import Found, Lexicon, Lexicons, words
from complaints_shared.datafiles import read_data_file
from complaints_shared.policy import IntakePolicy

SHOUTING_RATIO = 0.6
SHOUTING_MIN_LETTERS = 20

_ASCII_LETTERS = string.ascii_letters.encode()
_ASCII_CAPITALS = string.ascii_uppercase.encode()
_NOT_ASCII = re.compile(r"[^\x00-\x7f]+")


def _letters(text: str) -> tuple[int, int]:
    """How many letters ``text`` has (``str.isalpha``), and how many of them are capitals
    (``str.isupper``).  Its ASCII characters are counted as bytes, in C; the others (a few in
    most texts of Latin script) one by one: 5,000 characters of Portuguese in about 70 µs,
    against 200 asking each."""
    ascii_part = text.encode("ascii", "ignore")
    letters = len(ascii_part) - len(ascii_part.translate(None, _ASCII_LETTERS))
    capitals = len(ascii_part) - len(ascii_part.translate(None, _ASCII_CAPITALS))
    others = list(filter(str.isalpha, "".join(_NOT_ASCII.findall(text))))
    return letters + len(others), capitals + sum(map(str.isupper, others))


def _load(name: str, override_dir: Path | None) -> dict[str, Any]:
    return tomllib.loads(read_data_file("complaints_intake", "rules", name, override_dir))


@dataclass(frozen=True)
class NegativeWording:
    score: int
    terms: list[str]


@dataclass(frozen=True)
class Signals:
    """Reason codes of what the text suggests (empty: nothing)."""

    public_exposure: tuple[str, ...] = ()
    safety: tuple[str, ...] = ()


CHILD = "child"  # a safety code that counts only together with another one


@dataclass(frozen=True)
class IntakeRules:
    categories: dict[str, Lexicon]
    weighted_negative: tuple[tuple[int, Lexicon], ...]
    public_exposure: dict[str, Lexicon]
    safety: dict[str, Lexicon]
    # every lexicon above, in this order, asked about a text at once; and where each group's are
    everything: Lexicons = field(init=False, repr=False, compare=False)
    _groups: tuple[slice, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups = (
            list(self.categories.values()),
            [lexicon for _, lexicon in self.weighted_negative],
            list(self.public_exposure.values()),
            list(self.safety.values()),
        )
        object.__setattr__(self, "everything", Lexicons(itertools.chain(*groups)))
        bounds, start = [], 0
        for group in groups:
            bounds.append(slice(start, start + len(group)))
            start += len(group)
        object.__setattr__(self, "_groups", tuple(bounds))

    def _matches(self, norm: str) -> tuple[Found, ...]:
        """What each lexicon finds in ``norm``: (categories, negative wording, public
        exposure, safety), each in its lexicons' order."""
        found = self.everything.search(norm)
        return tuple(found[g] for g in self._groups)

    @classmethod
    def load(cls, policy: IntakePolicy, override_dir: Path | None = None) -> IntakeRules:
        negative = _load("negative_wording.toml", override_dir)
        signals = _load("signals.toml", override_dir)
        return cls(
            {c: Lexicon.of(words) for c, words in policy.category_keywords.items()},
            tuple((int(v["weight"]), Lexicon.of(v["terms"])) for v in negative.values()),
            {code: Lexicon.of(v["terms"]) for code, v in signals["public_exposure"].items()},
            {code: Lexicon.of(v["terms"]) for code, v in signals["safety"].items()},
        )

    def signals(self, text: str, norm: str | None = None) -> Signals:
        """The reason codes of public exposure and of a safety incident the text suggests
        (``norm``: the text normalised, when the caller has it already, best as
        :func:`~complaints_intake.text.words`; so in each method)."""
        norm = words(text) if norm is None else norm
        _, _, public_found, safety_found = self._matches(norm)
        public = tuple(
            c for c, hits in zip(self.public_exposure, public_found, strict=True) if hits
        )
        safety = tuple(c for c, hits in zip(self.safety, safety_found, strict=True) if hits)
        if safety == (CHILD,):  # a child alone is no safety incident
            safety = ()
        return Signals(public, safety)

    def suggest_category(self, text: str, norm: str | None = None) -> tuple[str, list[str]]:
        """The category with most keyword matches (ties: policy order), else ``other``."""
        norm = words(text) if norm is None else norm
        best, best_hits = "other", tuple[str, ...]()
        for category, hits in zip(self.categories, self._matches(norm)[0], strict=True):
            if len(hits) > len(best_hits):
                best, best_hits = category, hits
        return best, list(best_hits)

    def negative_wording(self, text: str, norm: str | None = None) -> NegativeWording:
        norm = words(text) if norm is None else norm
        score, terms = 0, list[str]()
        for (weight, _), hits in zip(self.weighted_negative, self._matches(norm)[1], strict=True):
            score += weight * len(hits)
            terms.extend(hits)
        letters, capitals = _letters(text)
        if letters >= SHOUTING_MIN_LETTERS and capitals / letters >= SHOUTING_RATIO:
            score, terms = score + 1, [*terms, "(shouting)"]
        if text.count("!") >= 3:
            score, terms = score + 1, [*terms, "(!!!)"]
        return NegativeWording(score, terms)
