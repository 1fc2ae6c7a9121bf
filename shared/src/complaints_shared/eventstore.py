"""Event stores: append to and load streams of one service's events.

Two implementations pass the same contract tests (``tests/contract``):

- :class:`PostgresEventStore`: ``append`` writes the events and queues them in the outbox in the
  caller's transaction, in one statement, so a committed event is always published and an
  uncommitted one never is.  The primary key ``(stream_id, version)`` is the optimistic
  concurrency check; a conflict raises :class:`ConcurrencyConflict` and leaves the caller's
  transaction usable (nothing of the failed append remains), so the caller may decide again.
- :class:`InMemoryEventStore`: the same semantics in a dict, for fast domain tests.

The outbox relay is woken when events are queued.  Inside a unit of work
(:func:`unit_of_work`) the wake-up is sent once the unit's transaction has ended, coalesced
across the units that end meanwhile (:class:`Wakeup`): the relay of this process is woken
directly, another process's leading relay by one ``NOTIFY`` at a time.  An append outside a
unit of work notifies in its own statement.  A wake-up never precedes the commit it announces,
and every unit that appended is followed by one; a lost one (the process died right after the
commit) costs the relay's idle poll, not the event.

Other work that waits for what a unit writes is woken the same way: :func:`after_commit`
registers a callback that runs once the unit's transaction has committed (never for one
that rolled back, never before the commit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import orjson
from opentelemetry import propagate

from complaints_shared.envelope import Event, new_event_id
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import REGISTRY, DomainEvent
from complaints_shared.privacy import (
    Keyring,
    fields_of,
    needs_key,
    open_payloads,
    seal_payloads,
)

OUTBOX_CHANNEL = "complaints_outbox"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the running span, to be carried with queued events."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class EventRecorder(Protocol):
    """What a repository needs of an event store.  ``conn`` is the caller's transaction (a
    PostgreSQL connection; ignored by the in-memory store)."""

    source: str
    topic: str
    clock: Clock

    async def append(
        self, conn: Any, stream_id: UUID, expected_version: int, events: Sequence[DomainEvent]
    ) -> list[Event[DomainEvent]]: ...

    async def create_many(
        self,
        conn: Any,
        streams: Mapping[UUID, Sequence[DomainEvent]],
        trace_contexts: Mapping[UUID, Mapping[str, str]] | None = None,
    ) -> dict[UUID, list[Event[DomainEvent]]]: ...

    async def load(
        self, conn: Any, stream_id: UUID, from_version: int = 1
    ) -> list[Event[DomainEvent]]: ...

    async def load_many(
        self, conn: Any, from_versions: Mapping[UUID, int]
    ) -> dict[UUID, list[Event[DomainEvent]]]: ...

    async def version(self, conn: Any, stream_id: UUID) -> int: ...


def row_to_event(
    row: asyncpg.Record, source: str, data: dict[str, Any] | None = None
) -> Event[DomainEvent]:
    """The event of an ``events`` row (``data``: its payload, opened, if done already)."""
    if data is None:
        raw = row["data"]
        data = orjson.loads(raw) if isinstance(raw, str) else raw
    return Event(
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        occurred_at=row["occurred_at"],
        source=source,
        payload=REGISTRY.parse(row["type"], data),
    )


async def open_rows(
    rows: Sequence[asyncpg.Record], source: str, keyring: Keyring | None
) -> list[Event[DomainEvent]]:
    """The events of ``events`` rows, their personal values opened with the keyring (those of
    an erased customer read as erased)."""
    items = [
        (r["type"], orjson.loads(r["data"]) if isinstance(r["data"], str) else r["data"])
        for r in rows
    ]
    if keyring is not None:
        await open_payloads(keyring, items)
    return [row_to_event(r, source, data) for r, (_, data) in zip(rows, items, strict=True)]


async def sealed_payloads(
    keyring: Keyring | None, stream_id: UUID, payloads: Sequence[DomainEvent]
) -> list[dict[str, Any]]:
    """The payloads as stored and published: personal values sealed for the stream's customer
    (one key lookup for the whole append)."""
    items = [(p.name, p.to_json()) for p in payloads]
    if keyring is not None:
        await seal_payloads(keyring, stream_id, items)
    else:
        for name, data in items:
            if needs_key(data, fields_of(name)):
                raise RuntimeError(f"{name} holds personal data and this store has no keyring")
    return [data for _, data in items]


def _new_events(
    source: str,
    stream_id: UUID,
    expected_version: int,
    events: Sequence[DomainEvent],
    now: datetime,
) -> list[Event[DomainEvent]]:
    return [
        Event(
            event_id=new_event_id(),
            stream_id=stream_id,
            version=expected_version + i,
            occurred_at=now,
            source=source,
            payload=e,
        )
        for i, e in enumerate(events, start=1)
    ]


# An append: the events (the rows of ``{rows}``) and their outbox rows, written only while
# the stream is at the expected version ($7), and the relay's wake-up ({wake}).
_APPEND_TEMPLATE = """
WITH current AS (
    SELECT coalesce(max(version), 0) AS version FROM events WHERE stream_id = $1
), inserted AS (
    INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)
    {rows}
     WHERE (SELECT version FROM current) = $7
    ON CONFLICT DO NOTHING
    RETURNING event_id
), queued AS (
    INSERT INTO outbox (event_id, topic, trace_context)
    SELECT event_id, $8, $9::text::jsonb FROM inserted
    RETURNING event_id
){wake}
"""
_EVENTS = """SELECT $1, x.version, x.event_id, x.type, $5, x.data::jsonb
      FROM unnest($2::int[], $3::uuid[], $4::text[], $6::text[])
           AS x(version, event_id, type, data)"""
# one event: its columns as they are (arrays of one cost the client more to encode)
_ONE_EVENT = "SELECT $1, $2::int, $3::uuid, $4::text, $5, $6::text::jsonb"
_NOTIFY = """, wake AS (
    SELECT pg_notify($10, '')
)
SELECT (SELECT count(*) FROM queued) AS appended, (SELECT count(*) FROM wake) AS woken"""
# in a unit of work, which wakes the relay once its transaction has ended ($10 unused)
_QUIETLY = """
SELECT (SELECT count(*) FROM queued) AS appended, $10::text AS woken"""

# [several events?][notify in the statement?]
_APPENDS = {
    (many, notify): _APPEND_TEMPLATE.format(
        rows=_EVENTS if many else _ONE_EVENT, wake=_NOTIFY if notify else _QUIETLY
    )
    for many in (False, True)
    for notify in (False, True)
}


# New streams, several at once: every event and its outbox row (in the order given: each
# stream's in version order).  A stream that exists already has a version 1: its rows are not
# written, the count tells, and the caller removes the others.
_CREATE = """
WITH x AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[])
        WITH ORDINALITY AS x(stream_id, version, event_id, type, data, trace_context, n)
), inserted AS (
    INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)
    SELECT stream_id, version, event_id, type, $7, data::jsonb FROM x
     ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING event_id
), queued AS (
    INSERT INTO outbox (event_id, topic, trace_context)
    SELECT x.event_id, $8, x.trace_context::jsonb FROM x
     WHERE x.event_id IN (SELECT event_id FROM inserted)
     ORDER BY x.n
    RETURNING event_id
)
SELECT count(*) AS appended FROM queued
"""


class Wakeup:
    """Wakes the outbox relay after commits that queued events (see the module's docstring).

    The relay of this process registers with :meth:`watch`; while it leads, a wake-up is a
    local signal and costs nothing.  Otherwise one ``NOTIFY`` is sent at a time over the pool,
    at most one per ``interval``, and the wake-ups asked for meanwhile are covered by one more
    after it."""

    def __init__(
        self, pool: asyncpg.Pool, channel: str = OUTBOX_CHANNEL, interval: float = 0.005
    ) -> None:
        self._pool = pool
        self.interval = interval  # between NOTIFYs: the most a wake-up waits for the last one
        self._channel = channel
        self._local: list[tuple[asyncio.Event, Callable[[], bool]]] = []
        self._sending: asyncio.Task[None] | None = None
        self._again = False
        self.notified = 0  # NOTIFYs sent

    def watch(self, event: asyncio.Event, leading: Callable[[], bool]) -> None:
        """Set ``event`` on every wake-up; no ``NOTIFY`` is needed while ``leading()``."""
        self._local.append((event, leading))

    def wake(self) -> None:
        for event, _ in self._local:
            event.set()
        if any(leading() for _, leading in self._local):
            return
        if self._sending is not None and not self._sending.done():
            self._again = True  # the NOTIFY in flight may have left before this commit
            return
        self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        again = True
        while again:
            self._again = False
            sent = loop.time()
            with contextlib.suppress(Exception):  # the relay's idle poll covers a lost one
                await self._pool.execute("SELECT pg_notify($1, '')", self._channel)
                self.notified += 1
            again = self._again
            if again:  # under load: one NOTIFY per interval covers every commit meanwhile
                await asyncio.sleep(max(0.0, sent + self.interval - loop.time()))
                again = True


@dataclass(slots=True)
class _Unit:
    wakeup: Wakeup | None
    appended: bool = False
    open: bool = True  # a task started inside it may outlive it (and then notifies itself)
    committed: list[Callable[[], None]] = field(default_factory=list)  # see after_commit


_UNIT: ContextVar[_Unit | None] = ContextVar("complaints_unit_of_work", default=None)


async def _undo(conn: asyncpg.Connection, event_ids: Sequence[UUID]) -> None:
    """Remove the events an append wrote before it found a conflict, and their outbox rows: a
    failed append leaves nothing behind, and the caller's transaction goes on."""
    await conn.execute("DELETE FROM outbox WHERE event_id = ANY($1::uuid[])", event_ids)
    await conn.execute("DELETE FROM events WHERE event_id = ANY($1::uuid[])", event_ids)


def _woken_after_unit() -> bool:
    """For an append: whether it runs in an open unit of work that wakes the relay once its
    transaction has ended (else the append notifies in its own statement)."""
    unit = _UNIT.get()
    if unit is None or not unit.open or unit.wakeup is None:
        return False
    unit.appended = True
    return True


def after_commit(callback: Callable[[], None]) -> bool:
    """Call ``callback`` once the unit of work this runs in has committed (say, to wake a
    worker for the rows it queued: before the commit the worker would not see them); it must
    not fail, the unit having committed.  False, and never called, outside a unit of work:
    the caller's own transaction is then not known here, and the one waiting must find the
    rows by itself (its poll)."""
    unit = _UNIT.get()
    if unit is None or not unit.open:
        return False
    unit.committed.append(callback)
    return True


@asynccontextmanager
async def unit_of_work(
    pool: asyncpg.Pool, wakeup: Wakeup | None
) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction; events appended in it wake the relay (``wakeup``) once
    the transaction has ended (committed or not: a needless wake-up is harmless), and the
    callbacks given to :func:`after_commit` in it run once it has committed."""
    unit = _Unit(wakeup)
    token = _UNIT.set(unit)
    committed = False
    try:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
        committed = True
    finally:
        unit.open = False
        _UNIT.reset(token)
        if unit.appended and wakeup is not None:
            wakeup.wake()
        if committed:
            for callback in unit.committed:
                callback()


# Several streams' events from a version on, each stream read by its own range of the primary
# key: a lateral subquery, which its ORDER BY keeps from being flattened into a join.  As a
# plain join the planner hashed the whole events table for any list of streams (it expects a
# third of each stream to be asked for, where a cached state asks for one event): 9 ms for 40
# problems of 1,000 events each (learning's state cache, every batch), 0.3 ms as it is.
LOAD_MANY = """
SELECT e.stream_id, e.version, e.event_id, e.type, e.occurred_at, e.data
  FROM unnest($1::uuid[], $2::int[]) AS w(stream_id, from_version)
 CROSS JOIN LATERAL (
       SELECT * FROM events e
        WHERE e.stream_id = w.stream_id AND e.version >= w.from_version
        ORDER BY e.version
 ) e
 ORDER BY e.stream_id, e.version
"""

SCAN_CHUNK = 2000  # events a rebuild's scan (:meth:`PostgresEventStore.scan`) reads at a time


class PostgresEventStore:
    """One service's event streams in PostgreSQL, queued for ``topic`` through the outbox."""

    def __init__(
        self, *, source: str, topic: str, clock: Clock = utc_now, keyring: Keyring | None = None
    ) -> None:
        self.source = source
        self.topic = topic
        self.clock = clock
        self.keyring = keyring

    async def append(
        self,
        conn: asyncpg.Connection,
        stream_id: UUID,
        expected_version: int,
        events: Sequence[DomainEvent],
    ) -> list[Event[DomainEvent]]:
        """Append ``events`` after ``expected_version``, inside the caller's transaction (one
        round trip: events, outbox rows and, outside a unit of work, the relay's wake-up).

        Raises :class:`ConcurrencyConflict` (with the stream's version) when the stream is not
        at ``expected_version``; the failed append leaves nothing behind.
        """
        if not conn.is_in_transaction():
            raise RuntimeError("PostgresEventStore.append must run inside a transaction")
        if not events:
            return []
        recorded = _new_events(self.source, stream_id, expected_version, events, self.clock())
        data = [
            orjson.dumps(d).decode() for d in await sealed_payloads(self.keyring, stream_id, events)
        ]
        many = len(recorded) > 1
        columns: tuple[Any, ...] = (
            (
                [e.version for e in recorded],
                [e.event_id for e in recorded],
                [e.type for e in recorded],
            )
            if many
            else (recorded[0].version, recorded[0].event_id, recorded[0].type)
        )
        row = await conn.fetchrow(
            _APPENDS[many, not _woken_after_unit()],
            stream_id,
            *columns,
            recorded[0].occurred_at,
            data if many else data[0],
            expected_version,
            self.topic,
            orjson.dumps(current_trace_context()).decode(),  # text: see $9::text::jsonb
            OUTBOX_CHANNEL,
        )
        if row["appended"] != len(recorded):
            if row["appended"]:  # a writer took some of the versions meanwhile: undo ours
                await _undo(conn, [e.event_id for e in recorded])
            actual = await self.version(conn, stream_id)
            raise ConcurrencyConflict(stream_id, expected_version, actual)
        return recorded

    async def create_many(
        self,
        conn: asyncpg.Connection,
        streams: Mapping[UUID, Sequence[DomainEvent]],
        trace_contexts: Mapping[UUID, Mapping[str, str]] | None = None,
    ) -> dict[UUID, list[Event[DomainEvent]]]:
        """Start several new streams in one round trip, inside the caller's transaction: each
        stream's events from version 1, queued in the order given, each stream's carrying its
        own trace context (``trace_contexts``; else the running span's).

        Raises :class:`ConcurrencyConflict` (with its version) for a stream that exists
        already; then nothing of the call is written.
        """
        if not conn.is_in_transaction():
            raise RuntimeError("PostgresEventStore.create_many must run inside a transaction")
        now = self.clock()
        recorded = {s: _new_events(self.source, s, 0, e, now) for s, e in streams.items() if e}
        if not recorded:
            return {}
        in_unit = _woken_after_unit()
        here = orjson.dumps(current_trace_context()).decode()
        rows: list[tuple[UUID, int, UUID, str, str, str]] = []
        for stream_id, events in recorded.items():
            context = (
                orjson.dumps(dict(trace_contexts[stream_id])).decode()
                if trace_contexts is not None and stream_id in trace_contexts
                else here
            )
            sealed = await sealed_payloads(self.keyring, stream_id, streams[stream_id])
            rows.extend(
                (stream_id, e.version, e.event_id, e.type, orjson.dumps(d).decode(), context)
                for e, d in zip(events, sealed, strict=True)
            )
        columns = [list(c) for c in zip(*rows, strict=True)]
        appended = await conn.fetchval(_CREATE, *columns, now, self.topic)
        if appended != len(rows):
            await _undo(conn, columns[2])
            for stream_id in recorded:
                if actual := await self.version(conn, stream_id):
                    raise ConcurrencyConflict(stream_id, 0, actual)
            raise ConcurrencyConflict(next(iter(recorded)), 0, 0)  # pragma: no cover
        if not in_unit:
            await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
        return recorded

    async def version(self, conn: asyncpg.Connection | asyncpg.Pool, stream_id: UUID) -> int:
        """The stream's current version (0 for a stream with no events)."""
        v = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id
        )
        return int(v)

    async def load(
        self, conn: asyncpg.Connection | asyncpg.Pool, stream_id: UUID, from_version: int = 1
    ) -> list[Event[DomainEvent]]:
        """The stream's events from ``from_version`` on (all by default), in version order."""
        rows = await conn.fetch(
            "SELECT stream_id, version, event_id, type, occurred_at, data FROM events"
            " WHERE stream_id = $1 AND version >= $2 ORDER BY version",
            stream_id,
            from_version,
        )
        return await open_rows(rows, self.source, self.keyring)

    async def load_many(
        self, conn: asyncpg.Connection | asyncpg.Pool, from_versions: Mapping[UUID, int]
    ) -> dict[UUID, list[Event[DomainEvent]]]:
        """Several streams' events, each from its version in ``from_versions`` on, in one
        round trip (a stream with none there is absent from the answer)."""
        rows = await conn.fetch(LOAD_MANY, list(from_versions), list(from_versions.values()))
        out: dict[UUID, list[Event[DomainEvent]]] = {}
        for event in await open_rows(rows, self.source, self.keyring):
            out.setdefault(event.stream_id, []).append(event)
        return out

    async def scan(
        self,
        conn: asyncpg.Connection,
        types: Sequence[str] | None = None,
        chunk: int | None = None,
    ) -> AsyncIterator[list[Event[DomainEvent]]]:
        """Every event (of ``types``, if given), by stream and version, in chunks of at most
        ``chunk`` (:data:`SCAN_CHUNK` by default; a stream's events may span two): for
        rebuilds.  Read through a cursor in the caller's transaction, so a rebuild holds one
        chunk at a time however many events there are (reading them all at once took 1.4 KB
        of memory an event as read, and its row besides)."""
        cursor = await conn.cursor(
            "SELECT stream_id, version, event_id, type, occurred_at, data FROM events"
            " WHERE $1::text[] IS NULL OR type = ANY($1) ORDER BY stream_id, version",
            list(types) if types is not None else None,
        )
        while rows := await cursor.fetch(SCAN_CHUNK if chunk is None else chunk):
            yield await open_rows(rows, self.source, self.keyring)


class InMemoryEventStore:
    """The event store contract in memory: for domain tests without I/O.  ``queued`` lists
    what the outbox would publish, in append order."""

    def __init__(
        self,
        *,
        source: str = "/complaints/test",
        topic: str = "test",
        clock: Clock = utc_now,
        keyring: Keyring | None = None,
    ) -> None:
        self.source = source
        self.topic = topic
        self.clock = clock
        self.keyring = keyring
        self.stored: dict[UUID, list[dict[str, Any]]] = {}  # payloads as stored (sealed)
        self.streams: dict[UUID, list[Event[DomainEvent]]] = {}
        self.queued: list[Event[DomainEvent]] = []

    async def append(
        self, conn: Any, stream_id: UUID, expected_version: int, events: Sequence[DomainEvent]
    ) -> list[Event[DomainEvent]]:
        if not events:
            return []
        stream = self.streams.setdefault(stream_id, [])
        if len(stream) != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version, len(stream))
        recorded = _new_events(self.source, stream_id, expected_version, events, self.clock())
        # stored as it would travel: a payload that cannot round-trip fails here, as in PostgreSQL
        payloads = (
            await sealed_payloads(self.keyring, stream_id, events)
            if self.keyring is not None
            else [e.to_json() for e in events]  # domain tests without a keyring keep them plain
        )
        stored = orjson.loads(orjson.dumps(payloads))
        self.stored.setdefault(stream_id, []).extend(stored)
        recorded = await self._read(recorded, stored)
        stream.extend(recorded)
        self.queued.extend(recorded)
        return recorded

    async def create_many(
        self,
        conn: Any,
        streams: Mapping[UUID, Sequence[DomainEvent]],
        trace_contexts: Mapping[UUID, Mapping[str, str]] | None = None,
    ) -> dict[UUID, list[Event[DomainEvent]]]:
        for stream_id, events in streams.items():
            if events and self.streams.get(stream_id):
                raise ConcurrencyConflict(stream_id, 0, len(self.streams[stream_id]))
        return {s: await self.append(conn, s, 0, e) for s, e in streams.items() if e}

    async def _read(
        self, events: list[Event[DomainEvent]], stored: list[dict[str, Any]]
    ) -> list[Event[DomainEvent]]:
        """The events with their payloads read back from what is stored, opened anew each
        time, as PostgreSQL's rows are (an erased customer reads as erased)."""
        items = [
            (e.type, orjson.loads(orjson.dumps(d))) for e, d in zip(events, stored, strict=True)
        ]
        if self.keyring is not None:
            await open_payloads(self.keyring, items)
        return [
            replace(e, payload=REGISTRY.parse(t, d))
            for e, (t, d) in zip(events, items, strict=True)
        ]

    async def version(self, conn: Any, stream_id: UUID) -> int:
        return len(self.streams.get(stream_id, ()))

    async def load(
        self, conn: Any, stream_id: UUID, from_version: int = 1
    ) -> list[Event[DomainEvent]]:
        skip = max(from_version, 1) - 1
        return await self._read(
            self.streams.get(stream_id, [])[skip:], self.stored.get(stream_id, [])[skip:]
        )

    async def load_many(
        self, conn: Any, from_versions: Mapping[UUID, int]
    ) -> dict[UUID, list[Event[DomainEvent]]]:
        out = {s: await self.load(conn, s, v) for s, v in from_versions.items()}
        return {s: events for s, events in out.items() if events}


async def init_connection(conn: asyncpg.Connection) -> None:
    """Connection set-up: json/jsonb values travel as Python objects."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda v: orjson.dumps(v, default=str).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )
