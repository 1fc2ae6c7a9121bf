"""Follow-up texts (check, reminder, survey questions) from editable per-language templates."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date

from complaints_shared.datafiles import read_data_file


def load_texts(
    languages: tuple[str, ...], override_dir: Path | None = None
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for lang in languages:
        name = f"followup.{lang}.toml"
        text = read_data_file("complaints_followup", "templates", name, override_dir)
        raw = tomllib.loads(text)
        for section, keys in (
            ("check", {"subject", "body"}),
            ("reminder", {"subject", "body"}),
            ("survey", {"title", "score", "solved", "comment", "nps"}),
        ):
            if not keys <= set(raw.get(section, {})):
                raise ValueError(f"{name}: [{section}] needs {sorted(keys)}")
        out[lang] = raw
    return out


def when(at: datetime, language: str, timezone: str) -> str:
    local = at.astimezone(ZoneInfo(timezone))
    return f"{format_date(local, format='long', locale=language)} {local:%H:%M}"


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
