"""Survey tokens: the check id and an expiry, signed with HMAC-SHA256; no login needed.

A token is ``base64url(check id ‖ expiry)`` + ``.`` + ``base64url(signature)``.  Single use is
enforced by the check's state (an answered check refuses a second answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID


class BadToken(ValueError):
    """Not a token this service signed (tampered, truncated, made up)."""


@dataclass(frozen=True)
class SurveyToken:
    check_id: UUID
    expires_at: datetime


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(check_id: UUID, expires_at: datetime, secret: bytes) -> str:
    payload = check_id.bytes + struct.pack(">q", int(expires_at.timestamp()))
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(token: str, secret: bytes) -> SurveyToken:
    """The token's content, if and only if this secret signed it (expiry is checked later)."""
    try:
        head, _, tail = token.partition(".")
        payload, mac = _unb64(head), _unb64(tail)
    except (ValueError, UnicodeEncodeError) as exc:
        raise BadToken("malformed") from exc
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if len(payload) != 24 or not hmac.compare_digest(mac, expected):
        raise BadToken("bad signature")
    (expiry,) = struct.unpack(">q", payload[16:])
    return SurveyToken(UUID(bytes=payload[:16]), datetime.fromtimestamp(expiry, UTC))
