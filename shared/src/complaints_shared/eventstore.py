"""Event store on PostgreSQL with a transactional outbox.

``append`` writes the events and queues them for publishing in the caller's transaction, so a
committed event is always published and an uncommitted one never is.  The primary key
``(stream_id, version)`` is the optimistic concurrency check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from opentelemetry import propagate

from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import ConcurrencyConflict

OUTBOX_CHANNEL = "complaints_outbox"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the running span, to be carried with queued events."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def row_to_event(row: asyncpg.Record, source: str) -> Event:
    data = row["data"]
    return Event(
        event_id=row["event_id"],
        type=row["type"],
        stream_id=row["stream_id"],
        version=row["version"],
        occurred_at=row["occurred_at"],
        source=source,
        data=json.loads(data) if isinstance(data, str) else data,
    )


class EventStore:
    """Append to and load streams of one service's events; queue them for ``topic``."""

    def __init__(self, *, source: str, topic: str, clock: Clock = utc_now) -> None:
        self.source = source
        self.topic = topic
        self.clock = clock

    async def append(
        self,
        conn: asyncpg.Connection,
        stream_id: UUID,
        expected_version: int,
        events: Sequence[NewEvent],
    ) -> list[Event]:
        """Append ``events`` after ``expected_version``, inside the caller's transaction.

        Raises :class:`ConcurrencyConflict` when the stream is not at ``expected_version``
        (another writer came first); the caller's transaction is then unusable and rolls back.
        """
        if not conn.is_in_transaction():
            raise RuntimeError("EventStore.append must run inside a transaction")
        if not events:
            return []
        current = await self.version(conn, stream_id)
        if current != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version, current)
        now = self.clock()
        recorded = [
            Event(
                event_id=uuid4(),
                type=e.type,
                stream_id=stream_id,
                version=expected_version + i,
                occurred_at=now,
                source=self.source,
                data=e.data,
            )
            for i, e in enumerate(events, start=1)
        ]
        trace_context = json.dumps(current_trace_context())
        try:
            await conn.executemany(
                "INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)"
                " VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
                [
                    (
                        e.stream_id,
                        e.version,
                        e.event_id,
                        e.type,
                        e.occurred_at,
                        json.dumps(e.data, default=str),
                    )
                    for e in recorded
                ],
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrencyConflict(stream_id, expected_version) from exc
        await conn.executemany(
            "INSERT INTO outbox (event_id, topic, trace_context) VALUES ($1, $2, $3::text::jsonb)",
            [(e.event_id, self.topic, trace_context) for e in recorded],
        )
        await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
        return recorded

    async def version(self, conn: asyncpg.Connection | asyncpg.Pool, stream_id: UUID) -> int:
        """The stream's current version (0 for a stream with no events)."""
        v = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id
        )
        return int(v)

    async def load(self, conn: asyncpg.Connection | asyncpg.Pool, stream_id: UUID) -> list[Event]:
        """All events of a stream, in version order."""
        rows = await conn.fetch(
            "SELECT stream_id, version, event_id, type, occurred_at, data FROM events"
            " WHERE stream_id = $1 ORDER BY version",
            stream_id,
        )
        return [row_to_event(r, self.source) for r in rows]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Connection set-up: json/jsonb values travel as Python objects."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")
