"""The outbox relay: publishes committed events to Kafka in commit order, then marks them sent.

One relay per database is active at a time (a session advisory lock elects it).  It wakes on
``LISTEN complaints_outbox`` (the store's wake-up after the appending transaction, or a
direct signal from a unit of work in the same process), publishes the
unsent rows in ``position`` order with an idempotent ``acks=all`` producer, and marks them sent
only after every record of the batch was acknowledged.  A crash between the two republishes
the batch: consumers' inboxes keep the effect single.  Per stream, order holds: version n+1
can only be appended after version n committed, so it always has the higher position.

Leadership is fenced per batch: the leader reads and marks its batches over the connection
that holds the lock, so a leader whose connection is gone can publish at most one batch again
(harmless, as above) and never marks anything.  Every other instance watches: it reports the
age of the oldest unsent event (``complaints_outbox_oldest_unsent_seconds``, and readiness),
and when events wait longer than ``takeover_after`` while the leader's connection has been
silent as long, and this instance reaches the broker itself, it ends the leader's session
and takes over.  A record the broker refuses for its size is parked (with its error) instead
of blocking everyone; the later events of its stream wait behind it, and the relay sends on
through a fresh producer (the refused batch left a gap in the old one's numbering, which the
broker would hold against every later record of that partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordTooLargeError,
)
from opentelemetry.context import Context
from opentelemetry.trace import Span

from complaints_shared.envelope import StoredEvent, to_kafka_record
from complaints_shared.eventstore import OUTBOX_CHANNEL, Wakeup, init_connection
from complaints_shared.faults import Backoff, is_transient
from complaints_shared.metrics import ServiceMetrics
from complaints_shared.telemetry import (
    PRODUCER,
    TRACE_EACH_UP_TO,
    Telemetry,
    batch_attributes,
    batch_span_name,
    extract_context,
    inject_context,
    links_to,
    record_error,
)
from complaints_shared.telemetry import messaging_attributes as attrs

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x6F7574626F78  # "outbox"
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)

# The session holding the leader lock and how long it has been silent (pg_locks splits a
# bigint advisory key into classid = high 32 bits, objid = low 32 bits, objsubid = 1).
_LEADER_SESSION = f"""
SELECT a.pid, a.application_name, extract(epoch FROM now() - a.state_change)::float8 AS silent_for
  FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = {_LEADER_LOCK >> 32} AND l.objid = {_LEADER_LOCK & 0xFFFFFFFF}
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

_BACKLOG = """
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(queued_at)), 0)::float8 AS oldest,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked
  FROM outbox WHERE sent_at IS NULL
"""


# The next batch: unsent rows in position order, without the streams that have a parked event
# and without the rows in flight ($2).
PENDING = """
SELECT o.position, o.topic, o.trace_context,
       e.stream_id, e.version, e.event_id, e.type, e.occurred_at, e.data::text AS raw
  FROM outbox o JOIN events e USING (event_id)
 WHERE o.sent_at IS NULL AND o.parked_at IS NULL
   AND e.stream_id <> ALL(ARRAY(SELECT pe.stream_id FROM outbox p
       JOIN events pe USING (event_id)
       WHERE p.parked_at IS NOT NULL AND p.sent_at IS NULL))
   AND o.position <> ALL($2::bigint[])
 ORDER BY o.position LIMIT $1
"""

MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE position = ANY($1::bigint[])"

# The relay's session settings (:meth:`OutboxRelay.connect`).
# - Sorting is off, so the next batch is always read along the unsent rows' index in position
#   order, stopping at the batch's size.  The planner would otherwise sort the whole backlog
#   (and join every row of it to its event) whenever its statistics still say few rows are
#   unsent, which is just when a backlog has built up since the last ``ANALYZE``: 100 ms
#   against 2-3 ms a batch over 30,000 unsent events.
# - Sequential scans are off and each statement is planned once per session, for any
#   parameters (a generic plan).  The planner would otherwise settle, for a statement
#   prepared while the outbox held a few rows (a new deployment's first minutes, before
#   autovacuum analyses it), on a plan that scans the whole outbox, and keep it until the
#   table's statistics change: :data:`MARK_SENT`'s scanned it for every batch once it had grown
#   (8-17 ms a batch over 2,000-25,000 rows, where looking each position up takes well under
#   1 ms).  Every statement of the relay on the outbox and the events finds its rows by an
#   index (the leader's lookup reads the server's lock and session lists).  Planning each call
#   instead cost more than running it: :data:`PENDING` took 320 µs of PostgreSQL's CPU to plan
#   and 60-180 µs to run (the pipeline bench at 300 complaints/s).
# - A batch's rows find their events one by one, by the events' index (a nested loop, no hash
#   or merge join, nothing materialised).  While the statistics still say the events are few,
#   the planner otherwise read them once into memory and compared every outbox row with every
#   one read (500 x 250 comparisons a batch): 5.2-5.8 ms a batch of 500 against 1.3-1.5 by the
#   index, with 3,000 or 30,000 events waiting; with fresh statistics both take 1.2-1.7 ms.
RELAY_SESSION: Mapping[str, str] = MappingProxyType(
    {
        "enable_sort": "off",
        "enable_seqscan": "off",
        "enable_hashjoin": "off",
        "enable_mergejoin": "off",
        "enable_material": "off",
        "plan_cache_mode": "force_generic_plan",
    }
)


@dataclass(frozen=True, slots=True)
class Backlog:
    """The unsent events as any instance sees them."""

    pending: int
    oldest_seconds: float  # age of the oldest unsent event (0 when none)
    parked: int  # refused by the broker for good; need an operator


async def woken(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` have passed.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives just as
    the event is set, and the task goes on as if never cancelled (the relay, waiting an idle
    poll, kept its service from stopping).  ``asyncio.timeout`` tells its own expiry from a
    cancellation."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def leader_session(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record | None:
    """The database session of this database's relay leader (``pid``, ``application_name``,
    ``silent_for`` seconds), if there is one."""
    return await conn.fetchrow(_LEADER_SESSION)


async def backlog(conn: asyncpg.Connection | asyncpg.Pool) -> Backlog:
    r = await conn.fetchrow(_BACKLOG)
    assert r is not None
    return Backlog(r["pending"], r["oldest"], r["parked"])


def new_producer(bootstrap: str, client_id: str | None = None) -> AIOKafkaProducer:
    """A producer as the services publish with: idempotent, ``acks=all``, records sent as soon
    as its sender runs (no linger).  The relay hands it a whole batch of rows before it lets the
    event loop run, so they travel together without one; a linger of 5 ms only held every hop
    back (``./dev bench --only pipeline``, four alternating pairs: receipt →
    ``ComplaintReceived`` on Kafka p50 25-32 ms against 32-36, ``POST`` → ``CaseOpened`` p50
    128-155 ms against 153-166 and p99 253-287 ms against 284-452, lower in every pair; Kafka's
    CPU per complaint unchanged).  A partition's batches go one at a time, so a batch of up to
    256 KiB (the client's default is 16 KiB) lets a backlog go in fewer round trips: the relay
    drained one 20-30% faster in ``./dev bench --only relay``.  It stays under the brokers'
    default record-batch limit (1 MiB, ``max.message.bytes``)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=256 * 1024,
        client_id=client_id,
    )


def _told(own: Span | None, batch: Span | None) -> Span:
    """The span that tells of a row's failure: its own, else its batch's."""
    span = own if own is not None else batch
    assert span is not None  # a row has its own span when its batch has none
    return span


@dataclass(frozen=True, slots=True)
class PendingRow:
    position: int
    topic: str
    trace_context: dict[str, str]
    event: StoredEvent  # published as stored: its payload is never parsed here


class OutboxRelay:
    def __init__(
        self,
        *,
        dsn: str,
        password: str | None = None,
        name: str | None = None,  # the lock session's application_name
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        new_producer: Callable[[], AIOKafkaProducer],
        source: str,
        telemetry: Telemetry,
        metrics: ServiceMetrics | None = None,
        batch_size: int = 500,
        idle_poll_seconds: float = 5.0,
        follow_poll_seconds: float = 1.0,
        takeover_after: float = 30.0,
        wakeup: Wakeup | None = None,  # this process's units of work wake the relay directly
    ) -> None:
        self._dsn = dsn
        self._password = password
        self._name = name
        self._pool = pool
        self._producer = producer  # given (perhaps shared), until the relay needs a fresh one
        self._given = producer
        self._new_producer = new_producer
        self.producers_renewed = 0
        self._gap: str | None = None  # why the producer's numbering has a gap, if it has one
        self._source = source
        self._telemetry = telemetry
        self._metrics = metrics
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._follow_poll = follow_poll_seconds
        self.takeover_after = takeover_after
        self._wake = asyncio.Event()
        self.is_leader = False
        self.takeovers = 0
        self._parked: int | None = None  # at the last count (None: not counted yet)
        self._reported_at = 0.0  # the event loop's time of the last backlog report
        if wakeup is not None:
            wakeup.watch(self._wake, lambda: self.is_leader)

    async def run(self) -> None:
        """Relay forever; reconnects with backoff after database or broker failures (the
        backoff starts over once a batch went through)."""
        backoff = Backoff(initial=0.2, maximum=10.0)
        try:
            while True:
                try:
                    await self._run_once(backoff)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not is_transient(exc):
                        raise  # a defect: the supervisor logs it and starts the relay again
                    log.warning("outbox relay: %s; retrying", type(exc).__name__)
                self.is_leader = False
                await asyncio.sleep(backoff.next())
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the producer the relay made for itself, if it made one (the given one belongs
        to its owner)."""
        if self._producer is not self._given:
            own, self._producer = self._producer, self._given
            with contextlib.suppress(Exception):
                await asyncio.shield(own.stop())

    async def _mend_gap(self) -> None:
        """Before sending: a fresh producer if the current one's numbering has a gap.

        An idempotent producer numbers its records per partition, and the broker expects each
        batch to follow the last one it accepted.  A batch the broker refused (for its size)
        used its numbers all the same, so the broker would refuse every later record of that
        partition (``OutOfOrderSequenceNumber``) and the relay would be stuck.  A new producer
        has a new producer id and numbers from the start again."""
        if self._gap is None:
            return
        log.warning("outbox relay: a fresh producer after %s", self._gap)
        fresh = self._new_producer()
        try:
            await fresh.start()
        except BaseException:  # the broker, say: tried again before the next send
            with contextlib.suppress(Exception):
                await asyncio.shield(fresh.stop())
            raise
        await self.close()
        self._producer = fresh
        self._gap = None
        self.producers_renewed += 1

    async def connect(self) -> asyncpg.Connection:
        """The relay's own session (:data:`RELAY_SESSION`): it takes the leader lock, reads
        and marks the batches."""
        settings = dict(RELAY_SESSION)
        if self._name:
            settings["application_name"] = self._name
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn, password=self._password, server_settings=settings
        )
        try:
            await init_connection(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run_once(self, backoff: Backoff) -> None:
        conn = await self.connect()
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK):
                await self._watch(conn)
                backoff.reset()
                await asyncio.sleep(self._follow_poll)
            self.is_leader = True
            log.info("outbox relay: leading")
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            while True:
                self._wake.clear()
                await self.drain(conn)
                backoff.reset()
                await woken(self._wake, self._idle_poll)
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=2))

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """As a follower: report the backlog, and replace a leader that stopped relaying."""
        seen = await backlog(conn)
        self._report(seen)
        if seen.oldest_seconds < self.takeover_after:
            return
        leader = await leader_session(conn)
        if leader is None or leader["silent_for"] < self.takeover_after:
            return  # no leader (the next try takes the lock) or one that is still working
        if not await self._broker_reachable():
            return  # the broker is down for everyone: a new leader would not do better
        log.warning(
            "outbox relay: the oldest unsent event is %.0fs old and the leader has been silent"
            " for %.0fs; ending its session to take over",
            seen.oldest_seconds,
            leader["silent_for"],
        )
        if await conn.fetchval("SELECT pg_terminate_backend($1)", leader["pid"]):
            self.takeovers += 1

    async def _broker_reachable(self) -> bool:
        try:
            async with asyncio.timeout(5):  # not wait_for: see woken
                await self._producer.client.fetch_all_metadata()
        except Exception:
            return False
        return True

    def _report(self, seen: Backlog) -> None:
        self._parked = seen.parked
        if self._metrics is not None:
            self._metrics.outbox_pending.set(seen.pending)
            self._metrics.outbox_oldest_unsent.set(seen.oldest_seconds)
            self._metrics.outbox_parked.set(seen.parked)

    async def publish_pending(self, conn: asyncpg.Connection | None = None) -> int:
        """Publish one batch of unsent rows and mark it sent; return how many were handled.

        With ``conn`` (the leader's lock connection) reading and marking go through it, which
        fences the batch: a leader that lost its session cannot mark anything."""
        if conn is None:
            async with self._pool.acquire() as own:
                return await self.publish_pending(own)
        rows = await self.fetch_pending(conn)
        if not rows:
            await self._report_after(conn, 0)
            return 0
        await self._settle(conn, rows, await self.publish(rows), last=True)
        return len(rows)

    async def drain(self, conn: asyncpg.Connection) -> int:
        """Publish batch after batch until one is short (nothing more waits); return how many
        rows were handled.  ``conn`` is the leader's lock connection, as for
        :meth:`publish_pending`.

        The broker's waits and the database's overlap: while a batch is sent and acknowledged,
        the connection marks the batch before it sent and reads the next one (the unsent rows
        not in flight, in position order).  Order holds as in :meth:`publish_pending`: a batch
        is sent only once the one before it was acknowledged, and a failure republishes from
        the first batch not marked.  A batch with a row refused for its size is settled (the
        row parked) before anything more is read, since the rows read meanwhile may hold its
        stream's later events, which wait behind it."""
        handled = 0
        rows = await self.fetch_pending(conn)
        acked: tuple[list[PendingRow], dict[int, str | None]] | None = None
        while rows:
            publishing = asyncio.ensure_future(self.publish(rows))
            try:
                if acked is not None:
                    await self._settle(conn, *acked, last=False)
                    acked = None
                full = len(rows) >= self._batch_size
                ahead = await self.fetch_pending(conn, rows) if full else []
            except BaseException:
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
                raise
            unsent = await publishing
            handled += len(rows)
            if unsent:  # parked or held back: settled before the next batch is read again
                await self._settle(conn, rows, unsent, last=not full)
                ahead = await self.fetch_pending(conn) if full else []
            else:
                acked = (rows, unsent)
            rows = ahead
        if acked is not None:
            await self._settle(conn, *acked, last=True)
        elif not handled:
            await self._report_after(conn, 0)
        return handled

    async def _settle(
        self,
        conn: asyncpg.Connection,
        rows: list[PendingRow],
        unsent: dict[int, str | None],
        *,
        last: bool,
    ) -> None:
        """Park the rows the broker refused for their size and mark the others sent; report the
        backlog after the last batch of a drain and at most once a second before it."""
        too_large = {p: e for p, e in unsent.items() if e is not None}
        if too_large:
            await self.park(conn, too_large)
            self._parked = None  # counted again below
        await self.mark_sent([r.position for r in rows if r.position not in unsent], conn)
        now = asyncio.get_running_loop().time()
        if last or too_large or now - self._reported_at >= 1.0:
            self._reported_at = now
            await self._report_after(conn, len(rows))  # a batch not last is a full one

    async def _report_after(self, conn: asyncpg.Connection, handled: int) -> None:
        """Report the backlog after a batch, counting it only when something may still wait:
        a full batch, or parked events (their streams wait behind them).  A short batch with
        nothing parked left nothing unsent, so the hot path pays no extra query."""
        if self._metrics is None:
            return
        if handled >= self._batch_size or self._parked != 0:
            self._report(await backlog(conn))
        else:
            self._report(Backlog(pending=0, oldest_seconds=0.0, parked=0))

    async def fetch_pending(
        self, conn: asyncpg.Connection | None = None, in_flight: list[PendingRow] | None = None
    ) -> list[PendingRow]:
        """The next batch in commit order, without the streams that have a parked event and
        without the rows ``in_flight`` (being sent, not marked yet)."""
        if conn is None:
            async with self._pool.acquire() as own:
                return await self.fetch_pending(own, in_flight)
        records = await conn.fetch(
            PENDING,
            self._batch_size,
            [r.position for r in in_flight or ()],
        )
        return [
            PendingRow(
                r["position"],
                r["topic"],
                dict(r["trace_context"] or {}),
                StoredEvent(
                    event_id=r["event_id"],
                    stream_id=r["stream_id"],
                    version=r["version"],
                    occurred_at=r["occurred_at"],
                    source=self._source,
                    type=r["type"],
                    value=r["raw"].encode(),
                ),
            )
            for r in records
        ]

    async def publish(self, rows: list[PendingRow]) -> dict[int, str | None]:
        """Send every row (in order) and wait until the broker acknowledged all of them.

        Returns the rows not sent: refused for their size (position → error; they can never be
        sent as they are) or held back behind such a row of their stream (position → None).
        Any other failure raises, and the whole batch is sent again.

        Up to :data:`TRACE_EACH_UP_TO` rows, each record has its own ``"<topic> publish"``
        span, a child of the context stored with its row, and carries that span's context.  A
        larger batch (a backlog) has one ``publish`` span, linked to the rows' contexts, and
        each record carries its row's stored context as it is (where the event was appended),
        so that its consumers' work stays in the event's trace all the same."""
        await self._mend_gap()
        tracer = self._telemetry.tracer
        batch = self._batch_span(rows) if len(rows) > TRACE_EACH_UP_TO else None
        sending: list[tuple[PendingRow, Span | None, Any]] = []  # row, its own span, ack
        too_large: dict[int, str] = {}
        held: list[PendingRow] = []  # behind a too-large row of their stream
        try:
            for row in rows:
                if too_large and any(h.event.stream_id == row.event.stream_id for h in held):
                    held.append(row)
                    continue
                span = None
                if batch is None:
                    span = tracer.start_span(
                        f"{row.topic} publish",
                        context=extract_context(row.trace_context),
                        kind=PRODUCER,
                        attributes=attrs("publish", row.topic, row.event),
                    )
                record = to_kafka_record(
                    row.event, row.trace_context if span is None else inject_context(span)
                )
                try:
                    ack = await self._producer.send(
                        row.topic, record.value, key=record.key, headers=record.headers
                    )
                except _TOO_LARGE as exc:  # over the client's limit: refused before sending
                    record_error(_told(span, batch), exc)
                    if span is not None:
                        span.end()
                    too_large[row.position] = f"{type(exc).__name__} ({len(record.value)} bytes)"
                    held.append(row)
                    continue
                sending.append((row, span, ack))
            results = await asyncio.gather(*(a for _, _, a in sending), return_exceptions=True)
        except BaseException as exc:
            for span in [s for _, s, _ in sending] + [batch]:
                if span is not None:
                    record_error(span, exc)
                    span.end()
            raise
        failure: BaseException | None = None
        refused: list[PendingRow] = []
        published: Counter[str] = Counter()
        for (row, span, _), result in zip(sending, results, strict=True):
            if isinstance(result, BaseException):
                record_error(_told(span, batch), result)
                if isinstance(result, _TOO_LARGE):  # its whole producer batch was refused
                    refused.append(row)
                else:
                    failure = failure or result
            else:
                published[row.topic] += 1
            if span is not None:
                span.end()
        if batch is not None:
            batch.end()
        self._count_published(published)
        if failure is not None:
            if isinstance(failure, OutOfOrderSequenceNumber):
                self._gap = type(failure).__name__
            raise failure
        if refused:
            self._gap = "the broker refused a batch for its size"
        return await self._one_by_one(sorted(refused + held, key=lambda r: r.position), too_large)

    def _batch_span(self, rows: list[PendingRow]) -> Span:
        """The one ``publish`` span of a batch larger than :data:`TRACE_EACH_UP_TO` rows."""
        topics = [row.topic for row in rows]
        return self._telemetry.tracer.start_span(
            batch_span_name("publish", topics),
            context=Context(),  # a root: the batch belongs to no one event's trace
            kind=PRODUCER,
            attributes=batch_attributes("publish", topics, len(rows)),
            links=links_to(row.trace_context for row in rows),
        )

    def _count_published(self, published: Counter[str]) -> None:
        if self._metrics is not None:
            for topic, count in published.items():
                self._metrics.outbox_published.labels(topic).inc(count)

    async def _one_by_one(
        self, rows: list[PendingRow], too_large: dict[int, str]
    ) -> dict[int, str | None]:
        """Send the rows of refused batches alone, in order, to find the ones too large; the
        later rows of a stream with a too-large event are held back (None), not sent."""
        unsent: dict[int, str | None] = dict(too_large)
        blocked = {r.event.stream_id for r in rows if r.position in too_large}
        for row in rows:
            if row.position in too_large:
                continue
            if row.event.stream_id in blocked:
                unsent[row.position] = None
                continue
            record = to_kafka_record(row.event, {})
            await self._mend_gap()
            try:
                await self._producer.send_and_wait(
                    row.topic, record.value, key=record.key, headers=record.headers
                )
            except _TOO_LARGE as exc:
                unsent[row.position] = f"{type(exc).__name__} ({len(record.value)} bytes)"
                blocked.add(row.event.stream_id)
                self._gap = "the broker refused a record for its size"
                continue
            self._count_published(Counter([row.topic]))
        return unsent

    async def park(self, conn: asyncpg.Connection, errors: dict[int, str]) -> None:
        log.error(
            "outbox relay: the broker refuses %d event(s) for their size; parked (positions %s)",
            len(errors),
            sorted(errors),
        )
        await conn.executemany(
            "UPDATE outbox SET parked_at = now(), last_error = $2 WHERE position = $1",
            list(errors.items()),
        )

    async def mark_sent(self, positions: list[int], conn: asyncpg.Connection | None = None) -> None:
        if conn is None:
            async with self._pool.acquire() as own:
                return await self.mark_sent(positions, own)
        await conn.execute(MARK_SENT, positions)
        return None
