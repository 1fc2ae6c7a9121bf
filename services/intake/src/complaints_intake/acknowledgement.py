"""The acknowledgement message, rendered from editable per-language templates."""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_date

from complaints_shared.datafiles import read_data_file

PLACEHOLDERS = frozenset(
    {"greeting", "customer_name", "reference", "subject", "due", "channel_phrase"}
)
CHANNELS = ("in_person", "phone", "email", "letter", "web", "chat", "social")


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
    out: dict[str, Template] = {}
    for lang in languages:
        raw = tomllib.loads(
            read_data_file(
                "complaints_intake", "templates", f"acknowledgement.{lang}.toml", override_dir
            )
        )
        try:
            t = Template(
                lang,
                raw["subject"],
                raw["greeting"],
                raw["greeting_anonymous"],
                raw["body"].strip("\n"),
                dict(raw["channel_phrase"]),
            )
        except KeyError as exc:
            raise ValueError(f"acknowledgement.{lang}.toml lacks {exc}") from exc
        for part in (t.subject, t.greeting, t.greeting_anonymous, t.body):
            unknown = _fields(part) - PLACEHOLDERS
            if unknown:
                raise ValueError(f"acknowledgement.{lang}.toml: unknown placeholders {unknown}")
        missing = set(CHANNELS) - set(t.channel_phrase)
        if missing:
            raise ValueError(f"acknowledgement.{lang}.toml: channel_phrase lacks {missing}")
        out[lang] = t
    return out


def format_due(due: datetime, language: str, timezone: str) -> str:
    local = due.astimezone(ZoneInfo(timezone))
    day = format_date(local, format="long", locale=language)
    return f"{day} {local:%H:%M} ({local.tzname()})"


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
        "due": format_due(due, template.language, timezone),
        "channel_phrase": template.channel_phrase[reply_channel],
    }
    greeting = template.greeting if customer_name else template.greeting_anonymous
    values["greeting"] = greeting.format_map(values)
    return Message(template.subject.format_map(values), template.body.format_map(values))
