"""Versions over HTTP: ``ETag`` out, ``If-Match`` in (``docs/api.md``).

Every versioned resource (a complaint, a case, a problem) answers its GET and every command on
it with ``ETag: "<version>"``.  A command may send that ETag back as ``If-Match``; when the
resource has moved on since, the command changes nothing and answers 409 with
``expected_version`` and ``current_version``.  A bare integer is read as the same version.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar, cast

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from complaints_shared.errors import InputRejected

M = TypeVar("M", bound=BaseModel)

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=40,
        description='the ETag of the version you saw (`"7"`): a newer version answers 409',
        examples=['"7"'],
    ),
]

ETAG_HEADER: dict[str, Any] = {
    "ETag": {
        "description": 'the resource\'s version (`"7"`), for `If-Match`',
        "schema": {"type": "string"},
    }
}
LOCATION_HEADER: dict[str, Any] = {
    "Location": {"description": "the created item's URL", "schema": {"type": "string"}}
}


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(if_match: str | None) -> int | None:
    """The version ``If-Match`` names (None: no condition, or ``*``)."""
    if if_match is None or if_match.strip() == "*":
        return None
    m = _ETAG.match(if_match)
    if m is None:
        raise InputRejected("header.If-Match", 'an ETag this API returned, such as "7"')
    return int(m.group(1))


def versioned(body: M, version: int, *, status_code: int = 200, location: str | None = None) -> M:
    """``body`` as JSON with the ETag of ``version`` (and ``Location`` for a created item).

    Typed as ``body`` so that a route keeps ``body``'s type as its response model: FastAPI
    sends the response object it gets back as it is."""
    headers = {"ETag": etag(version)}
    if location is not None:
        headers["Location"] = location
    response = JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)
    return cast(M, response)


ETAGGED: dict[str, Any] = {"responses": {200: {"headers": ETAG_HEADER}}}
"""Keyword arguments of a route that answers a versioned resource."""
CREATED: dict[str, Any] = {
    "status_code": 201,
    "responses": {201: {"headers": ETAG_HEADER | LOCATION_HEADER}},
}
"""Keyword arguments of a route that creates an item of a versioned resource: 201, the item,
its ``Location`` and the parent's new ``ETag``."""
