"""The event envelope and its CloudEvents 1.0 binary-mode mapping onto Kafka records."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
TYPE_PREFIX = "complaints"


class NewEvent(BaseModel):
    """An event a decision produced, before the store gives it an id, a stream and a version."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(min_length=1, pattern=r"^[A-Z][A-Za-z]+$")
    data: dict[str, Any]


class Event(BaseModel):
    """A recorded event: one fact about one stream (a complaint), at one version."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    type: str
    stream_id: UUID
    version: int = Field(ge=1)
    occurred_at: AwareDatetime
    source: str
    data: dict[str, Any]

    @property
    def ce_type(self) -> str:
        """The CloudEvents type: ``complaints.<service>.<EventName>``."""
        service = self.source.rstrip("/").rsplit("/", 1)[-1]
        return f"{TYPE_PREFIX}.{service}.{self.type}"


class MalformedEvent(ValueError):
    """A Kafka record that cannot be read as an event: it can never be processed."""


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What goes onto the wire: key, value and headers."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def to_kafka_record(event: Event, trace_headers: Mapping[str, str] | None = None) -> KafkaRecord:
    """Map an event onto a CloudEvents binary-mode Kafka record.

    The key is the stream (complaint) id, so one complaint's events keep their order.
    """
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", str(event.event_id)),
        ("ce_type", event.ce_type),
        ("ce_source", event.source),
        ("ce_subject", str(event.stream_id)),
        ("ce_time", event.occurred_at.isoformat()),
        ("ce_sequence", str(event.version)),
        ("content-type", CONTENT_TYPE),
    ]
    headers.extend((k, v) for k, v in (trace_headers or {}).items())
    return KafkaRecord(
        key=str(event.stream_id).encode(),
        value=json.dumps(
            event.data, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode(),
        headers=[(k, v.encode()) for k, v in headers],
    )


def decode_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """Kafka headers as a str mapping (the last value wins for a repeated name)."""
    out: dict[str, str] = {}
    for name, raw in headers or ():
        try:
            out[name] = raw.decode() if raw is not None else ""
        except UnicodeDecodeError as exc:
            raise MalformedEvent(f"header {name!r} is not UTF-8") from exc
    return out


def from_kafka_record(value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> Event:
    """Read an event back from a CloudEvents binary-mode Kafka record."""
    h = decode_headers(headers)
    missing = [n for n in ("ce_id", "ce_type", "ce_source", "ce_subject", "ce_time") if n not in h]
    if missing:
        raise MalformedEvent(f"missing CloudEvents headers: {', '.join(missing)}")
    if h.get("ce_specversion") != SPEC_VERSION:
        raise MalformedEvent(f"unsupported ce_specversion {h.get('ce_specversion')!r}")
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedEvent("value is not a JSON object")
    try:
        return Event(
            event_id=UUID(h["ce_id"]),
            type=h["ce_type"].rsplit(".", 1)[-1],
            stream_id=UUID(h["ce_subject"]),
            version=int(h.get("ce_sequence", "1")),
            occurred_at=datetime.fromisoformat(h["ce_time"]),
            source=h["ce_source"],
            data=data,
        )
    except (ValueError, ValidationError) as exc:
        raise MalformedEvent(f"invalid CloudEvents attributes: {exc}") from exc
