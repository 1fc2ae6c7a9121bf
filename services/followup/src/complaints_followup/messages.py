"""Follow-up texts (check, reminder, survey questions) from editable per-language templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from complaints_shared.templates import load_language_templates


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
) -> tuple[str, str]:
    values = {"customer_name": name or "", "reference": reference, "link": link, "expires": expires}
    values["greeting"] = (texts["greeting"] if name else texts["greeting_anonymous"]).format_map(
        values
    )
    return (texts[section]["subject"].format_map(values), texts[section]["body"].format_map(values))
