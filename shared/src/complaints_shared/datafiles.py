"""Editable data files (message templates, rules) shipped in a package, replaceable by files of
the same name in an operator's folder (``COMPLAINTS_TEMPLATES_DIR``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def read_data_file(package: str, folder: str, name: str, override_dir: Path | None) -> str:
    """The operator's ``name`` if their folder has it, else the package's ``folder/name``."""
    if override_dir is not None and (override_dir / name).is_file():
        return (override_dir / name).read_text("utf-8")
    res = resources.files(package).joinpath(folder, name)
    if not res.is_file():
        raise ValueError(f"{name} is missing (in {package}/{folder} and the templates folder)")
    return res.read_text("utf-8")
