"""Request limits checked before the app sees a request, each answered as problem+json.

- A body over ``max_bytes``: 413, by ``Content-Length`` at once; a body without one
  (``Transfer-Encoding: chunked``) is read up to the limit first, so an oversized stream is
  refused as such, never half-parsed into another error.
- Text no service can store: a NUL character or an unpaired UTF-16 surrogate (``\\u0000``,
  ``\\ud800`` in JSON, ``%00`` in a query) is 422.  PostgreSQL text and jsonb cannot hold them,
  so they would otherwise fail deep inside a transaction as a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from complaints_shared.problems import PROBLEM_JSON, TYPE_BASE

__all__ = ["RequestLimits"]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_MESSAGE = "text must not contain NUL characters or unpaired surrogates"


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


def _json_body_unstorable(headers: dict[bytes, bytes], body: bytes) -> bool:
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if not (content_type == b"application/json" or content_type.endswith(b"+json")):
        return False
    if b"\\u" not in body:
        return False  # in valid JSON, such characters can only come as \u escapes
    try:
        data = json.loads(body)
    except ValueError:
        return False  # not JSON: the app answers that
    return _unstorable(data)


class RequestLimits:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"\x00" in unquote_to_bytes(scope.get("query_string", b"")) or "\x00" in scope["path"]:
            await self._refuse(scope, send, 422, "query")
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send, 413)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(scope, send, 413)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _json_body_unstorable(headers, body):
            await self._refuse(scope, send, 422, "body")
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, send: Send, status: int, where: str = "") -> None:
        problem: dict[str, Any]
        if status == 413:
            problem = {
                "type": f"{TYPE_BASE}body-too-large",
                "title": "Request body too large",
                "status": 413,
                "detail": f"the request body exceeds {self.max_bytes} bytes",
            }
        else:
            problem = {
                "type": f"{TYPE_BASE}validation",
                "title": "Invalid request",
                "status": 422,
                "detail": f"invalid fields: {where}",
                "errors": [{"field": where, "message": _UNSTORABLE_MESSAGE, "type": "text"}],
            }
        body = json.dumps({**problem, "instance": scope["path"]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then whatever the server sends next."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
