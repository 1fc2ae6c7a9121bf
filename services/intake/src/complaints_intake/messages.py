"""Messages to the customer: the acknowledgement, rendered from editable per-language
templates."""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from complaints_shared.templates import load_language_templates
from complaints_shared.vocabulary import Channel, format_when

PLACEHOLDERS = frozenset(
    {"greeting", "customer_name", "reference", "subject", "due", "channel_phrase"}
)


@dataclass(frozen=True)
class Template:
    language: str
    subject: str
    greeting: str
    greeting_anonymous: str
    body: str
    channel_phrase: dict[str, str]


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def load_templates(
    languages: tuple[str, ...], override_dir: Path | None = None
) -> dict[str, Template]:
    """Every language's template, checked now so that a broken file stops the start."""
    raw_by_language = load_language_templates(
        "complaints_intake",
        "acknowledgement",
        languages,
        {
            "": ("subject", "greeting", "greeting_anonymous", "body"),
            "channel_phrase": tuple(Channel),
        },
        override_dir,
    )
    out: dict[str, Template] = {}
    for lang, raw in raw_by_language.items():
        t = Template(
            lang,
            raw["subject"],
            raw["greeting"],
            raw["greeting_anonymous"],
            raw["body"].strip("\n"),
            dict(raw["channel_phrase"]),
        )
        for part in (t.subject, t.greeting, t.greeting_anonymous, t.body):
            unknown = _fields(part) - PLACEHOLDERS
            if unknown:
                raise ValueError(f"acknowledgement.{lang}.toml: unknown placeholders {unknown}")
        out[lang] = t
    return out


def render(
    template: Template,
    *,
    customer_name: str | None,
    reference: str,
    subject: str,
    due: datetime,
    timezone: str,
    reply_channel: str,
) -> Message:
    values = {
        "customer_name": customer_name or "",
        "reference": reference,
        "subject": subject,
        "due": format_when(due, template.language, timezone, zone_name=True),
        "channel_phrase": template.channel_phrase[reply_channel],
    }
    greeting = template.greeting if customer_name else template.greeting_anonymous
    values["greeting"] = greeting.format_map(values)
    return Message(template.subject.format_map(values), template.body.format_map(values))
