"""Follow-up texts (check, reminder, survey questions) from editable per-language templates."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from complaints_shared.templates import load_language_templates

PAGE_TEXTS = (
    "heading",
    "intro",
    "very_unhappy",
    "very_happy",
    "yes",
    "no",
    "not_likely",
    "very_likely",
    "submit",
    "until",
    "thanks_title",
    "thanks",
    "thanks_reopen",
    "answered_title",
    "answered",
    "expired_title",
    "expired",
    "invalid_title",
    "invalid",
    "error_title",
)


def resolved_phrase(texts: dict[str, Any], reference: str, ago: timedelta) -> str:
    """The check's first sentence, true to how long ago the complaint was resolved."""
    t = texts["resolved"]
    if ago < timedelta(days=1):
        return str(t["recently"]).format(reference=reference)
    if ago < timedelta(days=2):
        return str(t["yesterday"]).format(reference=reference)
    return str(t["days"]).format(reference=reference, days=ago.days)


def load_texts(
    languages: tuple[str, ...], override_dir: Path | None = None
) -> dict[str, dict[str, Any]]:
    return load_language_templates(
        "complaints_followup",
        "followup",
        languages,
        {
            "": ("greeting", "greeting_anonymous"),
            "check": ("subject", "body"),
            "reminder": ("subject", "body"),
            "survey": ("title", "score", "solved", "comment", "nps"),
            "resolved": ("recently", "yesterday", "days"),
            "page": PAGE_TEXTS,
        },
        override_dir,
    )


def render(
    texts: dict[str, Any],
    section: str,
    *,
    name: str | None,
    reference: str,
    link: str,
    expires: str,
    resolved_ago: timedelta = timedelta(0),
) -> tuple[str, str]:
    values = {
        "customer_name": name or "",
        "reference": reference,
        "link": link,
        "expires": expires,
        "resolved": resolved_phrase(texts, reference, resolved_ago),
    }
    values["greeting"] = (texts["greeting"] if name else texts["greeting_anonymous"]).format_map(
        values
    )
    return (texts[section]["subject"].format_map(values), texts[section]["body"].format_map(values))
