"""Per-language message templates: one TOML file per language, checked at start.

Every service's customer texts load through :func:`load_language_templates`, so a missing
section or key stops the service at start, never when a customer is written to; and so does
the formatting library's data for their languages (dates, amounts), read once a process.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from complaints_shared.datafiles import read_data_file
from complaints_shared.vocabulary import load_formats


def load_language_templates(
    package: str,
    stem: str,
    languages: Iterable[str],
    required: Mapping[str, Iterable[str]],
    override_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """``templates/<stem>.<lang>.toml`` of ``package`` (or of ``override_dir``) for every
    language.  ``required`` names the keys each file must have: ``{"": {"subject"}}`` for
    top-level keys, ``{"survey": {"title"}}`` for the keys of a section."""
    out: dict[str, dict[str, Any]] = {}
    for lang in languages:
        name = f"{stem}.{lang}.toml"
        raw = tomllib.loads(read_data_file(package, "templates", name, override_dir))
        for section, keys in required.items():
            table = raw if section == "" else raw.get(section, {})
            missing = set(keys) - set(table)
            if missing:
                where = f"[{section}]" if section else "the file"
                raise ValueError(f"{name}: {where} lacks {sorted(missing)}")
        out[lang] = raw
    load_formats(out)
    return out
