"""Messages to the customer at each visible step, from editable per-language templates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babel.numbers import format_currency

from complaints_resolution.domain import Case
from complaints_shared.events import DomainEvent
from complaints_shared.events import resolution as ev
from complaints_shared.templates import load_language_templates
from complaints_shared.vocabulary import Channel, format_when

STEPS = {
    ev.CaseAssigned.event_name(): "assigned",
    ev.ClarificationRequested.event_name(): "clarification",
    ev.SolutionProposed.event_name(): "proposal",
    ev.SolutionAgreed.event_name(): "agreement",
    ev.CaseResolved.event_name(): "resolution",
}


@dataclass(frozen=True)
class Messages:
    by_language: dict[str, dict[str, Any]]
    default_language: str

    @classmethod
    def load(
        cls, languages: tuple[str, ...], default: str, override_dir: Path | None = None
    ) -> Messages:
        required: dict[str, tuple[str, ...]] = {s: ("subject", "body") for s in STEPS.values()}
        required[""] = ("greeting", "greeting_anonymous", "signature")
        return cls(
            load_language_templates(
                "complaints_resolution", "messages", languages, required, override_dir
            ),
            default,
        )


def _option(o: ev.SolutionOption, language: str) -> str:
    money = (
        f" ({format_currency(o.amount, o.currency, locale=language)})"
        if o.amount is not None and o.currency
        else ""
    )
    return f"{o.option_id}. {o.description}{money}"


def _values(p: ev.CustomerVisible, case: Case, lang: str, timezone: str) -> dict[str, str]:
    owner = p.owner if isinstance(p, ev.CaseAssigned) else case.owner
    values = {
        "customer_name": case.customer_name or "",
        "reference": case.reference,
        "owner_name": owner.name if owner else "",
        "owner_contact": owner.contact if owner else "",
        "questions": "",
        "options": "",
        "outcome": "",
        "indicators": "",
        "deadline": "",
        "summary": "",
    }
    match p:
        case ev.ClarificationRequested():
            values["questions"] = "\n".join(f"- {q}" for q in p.questions)
        case ev.SolutionProposed():
            values["options"] = "\n".join(_option(o, lang) for o in p.options)
        case ev.SolutionAgreed():
            values["outcome"] = p.agreed_outcome
            values["indicators"] = "\n".join(f"- {i}" for i in p.indicators)
            values["deadline"] = format_when(p.deadline, lang, timezone)
        case ev.CaseResolved():
            values["summary"] = p.summary
    return values


def with_customer_message(
    events: Sequence[DomainEvent], case: Case, messages: Messages, timezone: str
) -> list[DomainEvent]:
    """The events, the customer-visible ones carrying the message to deliver."""
    lang = case.language if case.language in messages.by_language else messages.default_language
    t = messages.by_language[lang]
    out: list[DomainEvent] = []
    for e in events:
        step = STEPS.get(e.name)
        if step is None or not isinstance(e, ev.CustomerVisible):
            out.append(e)
            continue
        values = _values(e, case, lang, timezone)
        values["greeting"] = (
            t["greeting"] if case.customer_name else t["greeting_anonymous"]
        ).format_map(values)
        values["signature"] = t["signature"]
        message = ev.CustomerMessage(
            channel=Channel(case.reply_channel),
            language=lang,
            subject=t[step]["subject"].format_map(values),
            body=t[step]["body"].format_map(values),
        )
        out.append(e.model_copy(update={"customer_message": message}))
    return out


def telling(
    decide: Callable[[Case | None], Sequence[DomainEvent]], messages: Messages, timezone: str
) -> Callable[[Case | None], list[DomainEvent]]:
    """A decision whose customer-visible events carry the message the customer is sent."""

    def decided(case: Case | None) -> list[DomainEvent]:
        events = list(decide(case))
        if case is None or not events:
            return events
        return with_customer_message(events, case, messages, timezone)

    return decided
