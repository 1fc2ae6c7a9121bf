"""Cursor pagination, the one way every list of the APIs pages (``docs/api.md``).

A list answers ``{"items": [...], "next_cursor": "..."}``; ``next_cursor`` is null on the last
page.  A cursor is opaque to clients: the sort key of the page's last item, URL-safe base64.
A cursor this API did not issue is a 422 on ``query.cursor``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from complaints_shared.errors import InputRejected

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=200, description="items per page")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="the previous page's `next_cursor`")
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*parts: object) -> str:
    raw = "|".join(str(p) for p in parts)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *kinds: Callable[[str], T]) -> list[T]:
    """The parts of ``cursor``, each read by its kind (``int``, ``UUID``, a date-time reader):
    a cursor that does not read back is a 422."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = raw.split("|")
        if len(parts) != len(kinds):
            raise ValueError
        return [kind(part) for kind, part in zip(kinds, parts, strict=True)]
    except (ValueError, UnicodeDecodeError, TypeError):
        raise InputRejected("query.cursor", "not a cursor this API returned") from None


def bigint(part: str) -> int:
    value = int(part)
    if not 0 <= value < 2**63:
        raise ValueError
    return value


def instant(part: str) -> datetime:
    """A date-time part of a cursor (with its offset)."""
    at = datetime.fromisoformat(part)
    if at.tzinfo is None:
        raise ValueError(part)
    return at


def next_cursor(rows: list[T], limit: int, key: Callable[[T], tuple[object, ...]]) -> str | None:
    """With ``limit + 1`` rows fetched: the cursor after the page, if another page follows."""
    return encode_cursor(*key(rows[limit - 1])) if len(rows) > limit else None
