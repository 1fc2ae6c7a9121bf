"""Messages to the customer at each visible step, from editable per-language templates."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date
from babel.numbers import format_currency

from complaints_resolution.domain import Case
from complaints_shared.datafiles import read_data_file
from complaints_shared.envelope import NewEvent

STEPS = {
    "CaseAssigned": "assigned",
    "ClarificationRequested": "clarification",
    "SolutionProposed": "proposal",
    "SolutionAgreed": "agreement",
    "CaseResolved": "resolution",
}
REMEDY_WORDS = {
    "repair",
    "replacement",
    "refund",
    "repeat_performance",
    "price_reduction",
    "apology",
    "goodwill_gesture",
    "explanation",
}


@dataclass(frozen=True)
class Messages:
    by_language: dict[str, dict[str, Any]]
    default_language: str

    @classmethod
    def load(
        cls, languages: tuple[str, ...], default: str, override_dir: Path | None = None
    ) -> Messages:
        out: dict[str, dict[str, Any]] = {}
        for lang in languages:
            name = f"messages.{lang}.toml"
            text = read_data_file("complaints_resolution", "templates", name, override_dir)
            raw = tomllib.loads(text)
            for step in STEPS.values():
                if not {"subject", "body"} <= set(raw.get(step, {})):
                    raise ValueError(f"{name}: [{step}] needs subject and body")
            out[lang] = raw
        return cls(out, default)


def _when(value: str, language: str, timezone: str) -> str:
    local = datetime.fromisoformat(value).astimezone(ZoneInfo(timezone))
    return f"{format_date(local, format='long', locale=language)} {local:%H:%M}"


def _option(o: dict[str, Any], language: str) -> str:
    money = (
        f" ({format_currency(o['amount'], o['currency'], locale=language)})"
        if o.get("amount")
        else ""
    )
    return f"{o['option_id']}. {o['description']}{money}"


def with_customer_message(
    events: list[NewEvent], case: Case, messages: Messages, timezone: str
) -> list[NewEvent]:
    """The events, the customer-visible ones carrying the message to deliver."""
    lang = case.language if case.language in messages.by_language else messages.default_language
    t = messages.by_language[lang]
    out = []
    for e in events:
        step = STEPS.get(e.type)
        if step is None:
            out.append(e)
            continue
        d = e.data
        owner = d.get("owner") or case.owner or {}
        values = {
            "customer_name": case.customer_name or "",
            "reference": case.reference,
            "owner_name": owner.get("name", ""),
            "owner_contact": owner.get("contact", ""),
            "questions": "\n".join(f"- {q}" for q in d.get("questions", [])),
            "options": "\n".join(_option(o, lang) for o in d.get("options", [])),
            "outcome": d.get("agreed_outcome", ""),
            "indicators": "\n".join(f"- {i}" for i in d.get("indicators", [])),
            "deadline": _when(d["deadline"], lang, timezone) if d.get("deadline") else "",
            "summary": d.get("summary", ""),
        }
        values["greeting"] = (
            t["greeting"] if case.customer_name else t["greeting_anonymous"]
        ).format_map(values)
        values["signature"] = t["signature"]
        message = {
            "channel": case.reply_channel,
            "language": lang,
            "subject": t[step]["subject"].format_map(values),
            "body": t[step]["body"].format_map(values),
        }
        out.append(NewEvent(type=e.type, data={**d, "customer_message": message}))
    return out
