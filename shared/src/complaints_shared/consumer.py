"""The idempotent consumer: inbox, handler and projections in one transaction, then the offset.

For each record: the inbox row ``(consumer, event_id)``, the handler's new events (through the
event store, so also their outbox rows) and its projection rows are written in the database
transaction of the record's poll batch (every partition the poll returned records of, each
partition's in order); the Kafka offsets are committed only after that transaction, while the next
batch is handled (one commit in flight at a time, in order; a consumer that stops waits for it, up
to ``STOP_SECONDS``).  A redelivered event finds its inbox row and has no second effect.  Transient
failures (database or broker unreachable, a concurrent writer) are retried with backoff and block
the consumer; anything else is a poison event: it goes to the dead-letter topic with the error and
its origin in headers, and the partition moves on.  A Kafka consumer whose offset commit does not
finish, or whose client has no group coordinator, for ``stall_timeout`` is started over, so a
client stalled after a broker restart cannot hold its partitions for good.

A handler may queue writes that need no answer with :func:`write`: within a batch they are sent
together, in order (consecutive ones of the same statement in one pipelined round trip), before
any other statement of the batch's connection runs and before the batch commits, so every
statement still sees every earlier write, whichever handler made it.  A handler may likewise
:func:`defer` work that needs no answer and costs less done for many at once (starting new
streams: one statement for all): consecutive items for the same work are handed to it in one
call, in the queue's order, and what that call queues is sent before what was queued after it.
A failed flush is narrowed down record by record like any failure outside one handler (the
handler whose read set it off is not blamed for it).

Batches form from what arrived while the one before was handled; under load, a fetch also
waits up to ``fetch_wait_ms`` (the service's ``consumer_fetch_wait_ms``) for
``FETCH_MIN_BYTES`` of records before the broker answers it, so that a few records' arrival
does not each pay a batch's fixed cost (its transaction's round trips, its offset commit, its
fetch).  Traffic that fills a fetch sooner is not delayed; light traffic waits at most that
long per hop.  A consumer whose last poll brought nothing is idle: its fetches ask for the
first record and are answered as it arrives (or after ``IDLE_FETCH_WAIT_MS`` with none), so
a lone record is not held back, and an idle consumer sends a fetch every half second rather
than every ``fetch_wait_ms``.  Every batch commits its offsets, although the inbox would make
fewer commits safe: committing at most once a second (measured in the pipeline bench at 300
complaints/s) took a fifth to two fifths of Kafka's CPU per complaint, but PostgreSQL spent
about as much more, and ``CaseOpened`` came later.

While a batch's transaction waits on the database, the records fetched since are read
(decoded, opened, validated; for a subscription whose handlers append to their events' streams,
the keys to seal with are looked up for the whole batch): they are the next batch, and their
reading overlaps the database's work.  A batch that was not read ahead (the first after an idle
poll: a burst's first) reads its own records before the next poll's are read, so that its
transaction starts as soon as they are read.  A record read ahead that cannot be read is
poison when its batch runs, as it would be.

A subscription may instead hand a batch's new events to one :class:`Batch` handler, in the
batch's order, so that it can write them set-based (a statement per kind of write, not per
event): what makes replaying a topic from offset 0 fast.  Its failure is narrowed down record by
record like any other, and a lone event's is poison at once, as a handler's.

Tracing: up to ``TRACE_EACH_UP_TO`` events in a batch, each has its ``process`` span in its own
trace (a child of the context its record carries), and its handler runs under it; a larger
batch (a backlog, a replay) is one span linked to the events' traces (OpenTelemetry's batch
convention), and each handler runs in its event's extracted context, so the events it appends
carry the event's trace on either way.

A rebuild starts the consumer over (:func:`start_over`, in the rebuild's transaction): its
generation moves on, every replica's next batch sees that and rolls back, and each replica
rejoins under the new generation's consumer group, which has no committed offsets and so
replays every partition from offset 0.  The generation is read under ``FOR SHARE`` in each
batch's transaction, so a rebuild waits for batches in flight and none commits after it.  The
rebuild's transaction also sends ``NOTIFY complaints_generation`` with the consumer's name: the
replicas in other processes (:func:`watch_generations`) hear it when it commits and start over
at once, as the rebuild's own replica does, rather than at their next batch or idle check
(``GENERATION_CHECK_SECONDS``, which stays the fallback for a notification missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Link

from complaints_shared.envelope import (
    Event,
    MalformedEvent,
    cloudevent_headers,
    decode_value,
    event_from_data,
    event_type_of,
)
from complaints_shared.events import DomainEvent
from complaints_shared.eventstore import Wakeup, unit_of_work
from complaints_shared.faults import Backoff, is_transient
from complaints_shared.metrics import ServiceMetrics
from complaints_shared.privacy import Keyring, open_payloads
from complaints_shared.settings import CONSUMER_FETCH_WAIT_MS
from complaints_shared.telemetry import (
    CONSUMER,
    TRACE_EACH_UP_TO,
    Telemetry,
    batch_attributes,
    batch_span_name,
    extract_context,
    links_to,
    links_to_contexts,
    record_error,
    safe_message,
)
from complaints_shared.telemetry import messaging_attributes as attrs

log = logging.getLogger(__name__)

DLQ_TOPIC = "complaints.dlq.v1"

Handler = Callable[[asyncpg.Connection, Event[Any]], Awaitable[None]]
# work a handler defers: the items queued by consecutive handlers, in one call
Deferred = Callable[[asyncpg.Connection, list[Any]], Awaitable[None]]
Read = tuple[dict[str, str], Handler, Event[Any]]  # a record's headers, handler and event
BatchHandler = Callable[[asyncpg.Connection, Sequence[Event[Any]]], Awaitable[None]]
E = TypeVar("E", bound=DomainEvent)


def on(
    model: type[E], handler: Callable[[asyncpg.Connection, Event[E]], Awaitable[None]]
) -> tuple[str, Handler]:
    """A typed handler entry for :class:`Subscription`: ``dict([on(CaseResolved, fn), ...])``."""
    return model.event_name(), handler


# The batch's claim: the generation (under FOR SHARE) and its events in the inbox, in one
# statement; the inbox rows are written only while the generation is this runner's.
_CLAIM = """
WITH g AS (
    SELECT generation FROM consumer_generations WHERE consumer = $1 FOR SHARE
), fresh AS (
    INSERT INTO inbox (consumer, event_id, event_type)
    SELECT $1, x.event_id, x.event_type
      FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS x(event_id, event_type, n)
     WHERE (SELECT generation FROM g) = $4
     ORDER BY x.n
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
SELECT (SELECT generation FROM g) AS generation, ARRAY(SELECT event_id FROM fresh) AS fresh
"""

# what the handlers of the batch in flight queued, in order: a write (its statement and
# arguments) or a deferred item (its work and the item); None: no batch, at once
Queued = list[tuple[str | Deferred, tuple[Any, ...]]]
_QUEUED: ContextVar[Queued | None] = ContextVar("complaints_queued_writes", default=None)


async def write(conn: asyncpg.Connection, sql: str, *args: Any) -> None:
    """A handler's write that needs no answer: queued and sent with the batch (see the
    module's docstring), or at once outside a consumer batch (a re-drive, a test)."""
    queued = _QUEUED.get()
    if queued is None:
        await conn.execute(sql, *args)
    else:
        queued.append((sql, args))


async def defer(conn: asyncpg.Connection, work: Deferred, item: Any) -> None:
    """A handler's work that needs no answer, done for many items at once: queued with the
    batch's writes, and consecutive items for the same ``work`` (the same object) handed to it
    in one call (see the module's docstring); at once, alone, outside a consumer batch."""
    queued = _QUEUED.get()
    if queued is None:
        await work(conn, [item])
    else:
        queued.append((work, (item,)))


async def _flush(conn: asyncpg.Connection, queued: Queued) -> None:
    """What was queued, in order: each run of one statement in one round trip, each run of one
    deferred work in one call (what that call queues goes first of what is left); the queue
    is empty afterwards."""
    try:
        while queued:
            key = queued[0][0]
            j = 1
            while j < len(queued) and queued[j][0] == key:
                j += 1
            run = queued[:j]
            del queued[:j]
            if isinstance(key, str):
                if j == 1:
                    await conn.execute(key, *run[0][1])
                else:
                    await conn.executemany(key, [args for _, args in run])
                continue
            own: Queued = []
            token = _QUEUED.set(own)
            try:
                await key(cast(asyncpg.Connection, _FlushFirst(conn, own)), [a[0] for _, a in run])
            except _QueuedWritesFailed as exc:  # what the work queued failed: that error
                assert exc.__cause__ is not None
                raise exc.__cause__ from None
            finally:
                _QUEUED.reset(token)
            queued[:0] = own
    finally:
        queued.clear()


class _QueuedWritesFailed(Exception):
    """The queued writes failed when a handler's statement flushed them: the failure is the
    batch's (whose write it was is found record by record), not that handler's."""


class _FlushFirst:
    """The batch's connection as its handlers see it: every statement first sends the writes
    queued so far, so a read never misses an earlier handler's write."""

    _STATEMENTS = frozenset(
        {
            "execute",
            "executemany",
            "fetch",
            "fetchrow",
            "fetchval",
            "fetchmany",
            "prepare",
            "copy_from_query",
            "copy_from_table",
            "copy_to_table",
            "copy_records_to_table",
        }
    )

    def __init__(self, conn: asyncpg.Connection, queued: Queued):
        self._conn = conn
        self._queued = queued

    async def flush(self) -> None:
        if self._queued:
            try:
                await _flush(self._conn, self._queued)
            except Exception as exc:
                raise _QueuedWritesFailed(type(exc).__name__) from exc

    def discard(self) -> None:
        self._queued.clear()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._conn, name)
        if name not in self._STATEMENTS:
            return found

        async def flushed_first(*args: Any, **kwargs: Any) -> Any:
            await self.flush()
            return await found(*args, **kwargs)

        return flushed_first

    def transaction(self, **kwargs: Any) -> Any:
        return _FlushedTransaction(self, self._conn.transaction(**kwargs))


class _FlushedTransaction:
    """A savepoint opened by a handler: the writes queued before it are sent first, so rolling
    the savepoint back never undoes them."""

    def __init__(self, conn: _FlushFirst, transaction: Any) -> None:
        self._conn = conn
        self._transaction = transaction

    async def __aenter__(self) -> Any:
        await self._conn.flush()
        return await self._transaction.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        if exc[0] is None:
            await self._conn.flush()  # what was queued inside commits with the savepoint
        else:
            self._conn.discard()  # and is undone with it
        return await self._transaction.__aexit__(*exc)


GENERATION_CHECK_SECONDS = 5.0  # an idle replica still notices a rebuild this soon
GENERATION_CHANNEL = "complaints_generation"  # NOTIFY'd with a consumer's name when it starts over
GENERATION_PING_SECONDS = 30.0  # how often watch_generations checks its connection is alive
IDLE_POLL_MS = 500  # how long a poll waits for records (records arriving end it at once)
FETCH_MIN_BYTES = 64 * 1024  # a fetch answered at once (about 60 records of these topics)
IDLE_FETCH_WAIT_MS = 500  # an idle consumer's fetch: answered at its first record, else then
LAG_REFRESH_SECONDS = 5.0  # see ConsumerRunner.lag_refresh_seconds
STOP_SECONDS = 10.0  # a Kafka consumer that takes longer to close is abandoned


def _coordinator_known(consumer: AIOKafkaConsumer) -> bool:
    """Whether the Kafka client knows its group coordinator.  aiokafka keeps that to itself: a
    version without the attribute reads as known, and only the commit timeout watches it."""
    coordinator = getattr(consumer, "_coordinator", None)
    return getattr(coordinator, "coordinator_id", 0) is not None


async def start_over(conn: asyncpg.Connection, consumer: str) -> int:
    """Make every replica of ``consumer`` replay its topics from offset 0; call it in the
    transaction that clears the consumer's inbox and projections.  Returns the new generation."""
    generation: int = await conn.fetchval(
        "INSERT INTO consumer_generations AS g (consumer, generation) VALUES ($1, 1)"
        " ON CONFLICT (consumer) DO UPDATE SET generation = g.generation + 1"
        " RETURNING generation",
        consumer,
    )
    # delivered when the transaction commits, to every process's watch_generations
    await conn.execute("SELECT pg_notify($1, $2)", GENERATION_CHANNEL, consumer)
    return generation


async def watch_generations(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    runners: Sequence[ConsumerRunner],
    retry: RetryPolicy | None = None,
) -> None:
    """Listen for rebuilds (:func:`start_over`, in any process) and tell this process's runners
    of the consumer rebuilt to start over now (:meth:`ConsumerRunner.check_generation_soon`).

    One dedicated connection (``connect``) for all of them.  Each time it is (re)connected
    every runner checks its generation once, for a rebuild committed while nobody listened.
    Its connection is checked every ``GENERATION_PING_SECONDS``; a lost one is made again with
    backoff.  Meanwhile the runners' own checks (``GENERATION_CHECK_SECONDS``) still apply."""
    by_name: dict[str, list[ConsumerRunner]] = {}
    for runner in runners:
        by_name.setdefault(runner.subscription.name, []).append(runner)
    if not by_name:
        return
    backoff = (retry or RetryPolicy()).backoff()

    def heard(_conn: object, _pid: int, _channel: str, consumer: str) -> None:
        for runner in by_name.get(consumer, ()):
            runner.check_generation_soon()

    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect()
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await conn.add_listener(GENERATION_CHANNEL, heard)
            for runner in runners:
                runner.check_generation_soon()
            backoff.reset()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GENERATION_PING_SECONDS):
                        await lost.wait()
                if not lost.is_set():
                    await conn.fetchval("SELECT 1")  # raises when the connection is gone
        except Exception as exc:
            if not is_transient(exc):
                raise  # a defect: the supervisor logs it and starts the watch again
            log.warning("generation watch: %s; listening again", type(exc).__name__)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
        await asyncio.sleep(backoff.next())


def group_id(consumer: str, generation: int) -> str:
    """The Kafka consumer group of a consumer's generation (the plain name at first)."""
    return consumer if generation == 0 else f"{consumer}.generation-{generation}"


class _StartOver(Exception):
    """The consumer's generation moved on: rejoin under the new consumer group."""

    def __init__(self, generation: int) -> None:
        super().__init__(generation)
        self.generation = generation  # the new one


class _Poisoned(Exception):
    def __init__(self, record: ConsumerRecord, error: BaseException) -> None:
        super().__init__(str(error))
        self.record = record
        self.error = error


@dataclass(frozen=True, slots=True)
class Subscription:
    """A consumer group: the topics it reads and a handler per event type it cares about.

    Events of other types go to ``fallback``, or are acknowledged without effect (and without
    being parsed: an event type this code does not know is no error).
    """

    name: str
    topics: tuple[str, ...]
    handlers: Mapping[str, Handler] = field(default_factory=dict)
    fallback: Handler | None = None  # for every other event type, if given
    batch: Batch | None = None  # instead of ``handlers``: every event of a batch at once
    # The personal fields (dotted) the handlers read, per event type: only those are opened,
    # every other personal value reads as erased and is never decrypted.  None: all opened.
    reads_personal: Mapping[str, frozenset[str]] | None = None
    # The handlers append to the streams of the events they handle (resolution: a complaint's
    # case): the keys to seal with are looked up for a batch at once, as it is read.
    appends_to_their_streams: bool = False

    def __post_init__(self) -> None:
        if self.batch is not None and (self.handlers or self.fallback is not None):
            raise ValueError("a subscription has either handlers or a batch handler")

    def handler_for(self, event_type: str) -> Handler | None:
        if self.batch is not None:
            return _BATCHED if event_type in self.batch.types else None
        return self.handlers.get(event_type, self.fallback)


@dataclass(frozen=True, slots=True)
class Batch:
    """Set-based handling: ``handle`` gets a batch's new events of ``types`` (the ones not
    seen before) in one call, in the order the poll returned them (each partition's in
    order), in the batch's transaction."""

    types: frozenset[str]
    handle: BatchHandler
    max_records: int = 2000  # per poll: larger batches, fewer round trips per event


async def _BATCHED(conn: asyncpg.Connection, event: Event[Any]) -> None:  # pragma: no cover
    raise AssertionError("a batch subscription's events go to its batch handler")


# Records a poll takes at most (a handler-per-event subscription's): a backlog's batches share
# the per-batch costs (the claim, the commits, the batch's span) among more events.  Measured on
# the bench's consume stage, alternating in one process: 500 a poll consumed 1.4x as fast as 200
# (median 15,000 against 10,900 events/s), 1,000 no faster than 500.
MAX_POLL_RECORDS = 500

# records read at a time before the event loop may run the batch in flight on (its next
# statement waits for that: the smaller, the sooner the database gets it).  Reading a whole
# poll at once (500, and as many sealed values opened at once) consumed no faster on the bench's
# consume stage: 0.43-0.46x of its baseline against 0.46-0.48x (three alternating pairs).
READ_CHUNK = 50

# records taken from the Kafka client at a time while a batch runs (it unpacks each as it is
# taken: 500 at once held the batch's first statement back by about a millisecond); the bench's
# consume stage, three alternating pairs: 1.07-1.25x as fast as taking a whole poll at once
TAKE_CHUNK = 100


@dataclass(slots=True)
class RetryPolicy:
    initial_delay: float = 0.1
    max_delay: float = 10.0
    factor: float = 2.0

    def backoff(self) -> Backoff:
        return Backoff(self.initial_delay, self.max_delay, self.factor)


@dataclass
class ConsumerRunner:
    subscription: Subscription
    bootstrap: str
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    telemetry: Telemetry
    metrics: ServiceMetrics | None = None
    dlq_topic: str = DLQ_TOPIC
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_poll_records: int = MAX_POLL_RECORDS
    keyring: Keyring | None = None  # opens the personal values the handlers read
    assigned: bool = False
    generation: int = 0  # of the consumer group this runner consumes in
    wakeup: Wakeup | None = None  # the outbox relay's, for the events handlers append
    # An offset commit that takes longer, or a group coordinator unknown for longer, starts the
    # Kafka consumer over: the Kafka client can lose its coordinator for good after a broker
    # restart (its lookup never returns), and every commit and rejoin would wait for it.  The
    # new consumer's group redelivers the records from the last commit; the inbox keeps them
    # single.
    stall_timeout: float = 30.0
    idle_poll_ms: int = IDLE_POLL_MS
    fetch_wait_ms: int = CONSUMER_FETCH_WAIT_MS  # 0: the broker answers at the first record
    # a batch that takes longer (retrying while the database is away, say) has the ends of its
    # partitions asked of the broker this often, so that their lag grows with what arrives
    lag_refresh_seconds: float = LAG_REFRESH_SECONDS
    # set by a rebuild in this process: the generation is checked now, not in up to 5 s, and an
    # idle poll stops waiting for records
    _recheck: asyncio.Event = field(default_factory=asyncio.Event)
    # the next poll's records, read while the batch before them waited on the database: by
    # the record's id(), with the record (which keeps that id its own while the entry lasts)
    _ahead: dict[int, tuple[ConsumerRecord, Read | MalformedEvent | None]] = field(
        default_factory=dict
    )
    # the next offset to handle of each partition held, for its lag
    _next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    # set once the batch in flight has read its records (see _handle_reading_ahead)
    _batch_read: asyncio.Event = field(default_factory=asyncio.Event)

    def check_generation_soon(self) -> None:
        """A rebuild in this process has just moved the generation on: this replica starts
        over at once if idle, else after its batch in flight (the others notice within
        ``GENERATION_CHECK_SECONDS``)."""
        self._recheck.set()

    async def run(self) -> None:
        """Consume forever; restarts the Kafka consumer with backoff after broker or database
        failures (the backoff starts over once a batch went through)."""
        backoff = self.retry.backoff()
        while True:
            try:
                await self._consume(backoff)
            except asyncio.CancelledError:
                raise
            except _StartOver as moved:
                log.info(
                    "consumer %s: starting over as generation %d",
                    self.subscription.name,
                    moved.generation,
                )
                continue
            except Exception as exc:
                if not is_transient(exc):
                    raise  # a defect: the supervisor logs it and starts the consumer again
                log.warning(
                    "consumer %s: %s; restarting",
                    self.subscription.name,
                    type(exc).__name__,
                )
            await asyncio.sleep(backoff.next())

    async def _current_generation(self, conn: asyncpg.Connection, *, share: bool) -> int:
        name = self.subscription.name
        lock = " FOR SHARE" if share else ""
        sql = f"SELECT generation FROM consumer_generations WHERE consumer = $1{lock}"
        generation = await conn.fetchval(sql, name)
        if generation is None:
            await conn.execute(
                "INSERT INTO consumer_generations (consumer) VALUES ($1) ON CONFLICT DO NOTHING",
                name,
            )
            generation = await conn.fetchval(sql, name)
        return int(generation)

    async def _check_generation(self) -> None:
        async with self.pool.acquire() as conn:
            current = await self._current_generation(conn, share=False)
        if current != self.generation:
            raise _StartOver(current)

    async def _consume(self, backoff: Backoff | None = None) -> None:
        async with self.pool.acquire() as conn:
            self.generation = await self._current_generation(conn, share=False)
        consumer = AIOKafkaConsumer(
            *self.subscription.topics,
            bootstrap_servers=self.bootstrap,
            group_id=group_id(self.subscription.name, self.generation),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_min_bytes=1,  # idle until the first poll brings records (see _fetch_as)
            fetch_max_wait_ms=IDLE_FETCH_WAIT_MS,
            max_poll_records=self._poll_records,
        )
        lost_since: float | None = None  # when the client last lost its group coordinator
        upcoming: dict[TopicPartition, list[ConsumerRecord]] = {}
        # the offset commit of the batch before, in flight while the next batch runs (one at a
        # time: each waits for the one before it, so they reach the broker in order)
        committing: asyncio.Future[None] | None = None
        self._ahead.clear()
        for tp in list(self._next_offsets):  # a new consumer (group): where it is, unknown yet
            self._forget_lag(tp)
        try:  # the client is stopped below also when its start fails (the broker went away)
            await consumer.start()
            checked = time.monotonic()
            while True:
                batch = upcoming or await self._poll(consumer)
                upcoming = {}
                self._fetch_as(consumer, busy=bool(batch))
                self.assigned = bool(consumer.assignment())
                if _coordinator_known(consumer):
                    lost_since = None
                elif lost_since is None:
                    lost_since = time.monotonic()
                elif time.monotonic() - lost_since > self.stall_timeout:
                    log.warning(
                        "consumer %s: no group coordinator for %.0f s; starting the Kafka"
                        " consumer over",
                        self.subscription.name,
                        self.stall_timeout,
                    )
                    raise TimeoutError("no group coordinator")  # transient: run() starts over
                if not batch:
                    await self._note_idle_lag(consumer)
                if not batch and (
                    self._recheck.is_set() or time.monotonic() - checked > GENERATION_CHECK_SECONDS
                ):
                    self._recheck.clear()
                    await self._check_generation()
                    checked = time.monotonic()
                # revoked meanwhile: its new owner reads it from the commit
                held = {tp: records for tp, records in batch.items() if tp in consumer.assignment()}
                if self._ahead and len(held) < len(batch):  # read ahead for a partition
                    # revoked meanwhile: not ours now (else all of it is this batch's)
                    ours = {id(r) for records in held.values() for r in records}
                    self._ahead = {k: v for k, v in self._ahead.items() if k in ours}
                if held:  # one transaction, then one commit, for every partition of the poll
                    self._report_lag(consumer, {tp: rs[0].offset for tp, rs in held.items()})
                    upcoming = await self._handle_reading_ahead(
                        consumer, [r for records in held.values() for r in records]
                    )
                done = {tp: records[-1].offset + 1 for tp, records in held.items()}
                self._report_lag(consumer, done)
                if committing is not None:
                    await asyncio.shield(committing)  # stopping meanwhile: finished below
                    committing = None
                    if backoff is not None:
                        backoff.reset()
                if done:
                    committing = asyncio.ensure_future(self._commit(consumer, done))
        finally:
            self.assigned = False
            self._ahead.clear()
            try:
                if committing is not None:
                    await self._last_commit(committing)
            finally:
                await self._stop(consumer)

    @property
    def _poll_records(self) -> int:
        """Records a poll takes at most: a batch subscription's own bound, else the runner's."""
        batch = self.subscription.batch
        return batch.max_records if batch is not None else self.max_poll_records

    def _fetch_as(self, consumer: AIOKafkaConsumer, *, busy: bool) -> None:
        """How the Kafka client's next fetches wait (see the module's docstring): while records
        come, up to ``fetch_wait_ms`` for ``FETCH_MIN_BYTES``; after a poll that brought none,
        up to ``IDLE_FETCH_WAIT_MS`` for the first record, answered at once.  The client keeps
        these settings to itself: a version without them keeps the idle ones."""
        fetcher: Any = getattr(consumer, "_fetcher", None)
        if not hasattr(fetcher, "_fetch_min_bytes") or not hasattr(fetcher, "_fetch_max_wait_ms"):
            return
        fetching = (FETCH_MIN_BYTES, self.fetch_wait_ms) if busy and self.fetch_wait_ms else None
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = fetching or (1, IDLE_FETCH_WAIT_MS)

    def _report_lag(
        self,
        consumer: AIOKafkaConsumer,
        next_offsets: dict[TopicPartition, int],
        ends: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        """The lag of each partition held (``next_offsets``: the next offset to handle of
        those in the batch taken, or just handled): the end of the partition (``ends``, else
        as the last fetch saw it), minus the next offset to handle.  A partition no longer
        held drops out."""
        if self.metrics is None:
            return
        self._next_offsets.update(next_offsets)
        held = consumer.assignment()
        gauge = self.metrics.consumer_lag
        for tp in list(self._next_offsets):
            labels = (self.subscription.name, tp.topic, str(tp.partition))
            if tp not in held:
                self._forget_lag(tp)
                continue
            end = None if ends is None else ends.get(tp)
            if end is None:
                end = consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = consumer.highwater(tp)
            if end is not None:
                gauge.labels(*labels).set(max(end - self._next_offsets[tp], 0))

    async def _note_idle_lag(self, consumer: AIOKafkaConsumer) -> None:
        """After a poll that brought nothing: each partition held whose lag is unknown yet
        (nothing of it taken since this consumer started) shows its own, from the client's
        position in it, once a fetch of it has come back (a partition with nothing to read
        shows 0, not nothing)."""
        if self.metrics is None:
            return
        for tp in consumer.assignment():
            if tp in self._next_offsets or consumer.highwater(tp) is None:
                continue
            try:
                async with asyncio.timeout(self.lag_refresh_seconds):
                    position = await consumer.position(tp)  # known: a fetch of it came back
            except (KafkaError, TimeoutError):  # revoked (IllegalStateError), or being reset
                continue
            self._report_lag(consumer, {tp: position})

    async def _refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Beside a batch (cancelled when it is done): every ``lag_refresh_seconds`` it runs,
        the lag against the partitions' ends as the broker has them now (the client fetches
        no further meanwhile).  Best effort: with the broker away too, the last figures
        stand."""
        if self.metrics is None:
            return
        while True:
            await asyncio.sleep(self.lag_refresh_seconds)
            held = [tp for tp in self._next_offsets if tp in consumer.assignment()]
            if not held:
                return
            try:
                async with asyncio.timeout(self.lag_refresh_seconds):
                    ends = await consumer.end_offsets(held)
            except (KafkaError, OSError, TimeoutError):
                continue
            self._report_lag(consumer, {}, ends)

    def _forget_lag(self, tp: TopicPartition) -> None:
        self._next_offsets.pop(tp, None)
        if self.metrics is not None:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(
                    self.subscription.name, tp.topic, str(tp.partition)
                )

    async def _poll(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord]]:
        """The records fetched, waiting up to ``idle_poll_ms`` for some; a rebuild in this
        process (:meth:`check_generation_soon`) ends the wait at once.  A poll cut short has
        taken no records: the client hands them over only once it stops waiting."""
        if self._recheck.is_set():
            return {}
        polling = asyncio.ensure_future(consumer.getmany(timeout_ms=self.idle_poll_ms))
        woken = asyncio.ensure_future(self._recheck.wait())
        try:
            await asyncio.wait((polling, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not polling.done():
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
        return {} if polling.cancelled() else polling.result()

    async def _last_commit(self, committing: asyncio.Future[None]) -> None:
        """Let the offset commit still in flight finish as the consumer stops (within
        ``STOP_SECONDS``), so that its records are not delivered again.  Best effort: if it
        does not, they are, and the inbox keeps them single."""
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await asyncio.shield(committing)
        except Exception:
            committing.cancel()
        except asyncio.CancelledError:
            committing.cancel()
            raise

    async def _handle_reading_ahead(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord]
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Handle ``records``; meanwhile take the records fetched already (as many as a poll,
        :data:`TAKE_CHUNK` at a time) and read them (what the database's work leaves the process
        free for).  Returns them: the next batch.  A batch not read ahead (the first after an
        idle poll) reads its own records first: its transaction starts as soon as they are
        read, and the next poll's reading goes on beside it, instead of both being read in
        turns while the database waits."""
        self._batch_read.clear()
        handling = asyncio.ensure_future(self.handle_batch(records))
        refreshing = asyncio.ensure_future(self._refresh_lag(consumer))  # a long batch's lag
        try:
            if any(id(r) not in self._ahead for r in records):
                read = asyncio.ensure_future(self._batch_read.wait())
                try:
                    await asyncio.wait((read, handling), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    read.cancel()
            upcoming: dict[TopicPartition, list[ConsumerRecord]] = {}
            taken, limit = 0, self._poll_records
            while taken < limit:
                part = await consumer.getmany(
                    timeout_ms=0, max_records=min(TAKE_CHUNK, limit - taken)
                )
                if not part:
                    break
                for tp, part_records in part.items():  # each partition's records in order
                    upcoming.setdefault(tp, []).extend(part_records)
                    taken += len(part_records)
                await asyncio.sleep(0)  # the batch in flight goes on with its next statement
            if upcoming and not handling.done():
                await self._read_ahead([r for rs in upcoming.values() for r in rs])
            await asyncio.shield(handling)
        except BaseException:
            handling.cancel()
            await asyncio.gather(handling, return_exceptions=True)
            raise
        finally:
            refreshing.cancel()
            await asyncio.gather(refreshing, return_exceptions=True)
        return upcoming

    async def _stop(self, consumer: AIOKafkaConsumer) -> None:
        """Close ``consumer``, also when this task is being cancelled; give up on it after
        ``STOP_SECONDS`` (a stalled client may never finish leaving its group: the broker
        drops the member after its session timeout)."""
        stopping = asyncio.ensure_future(consumer.stop())
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await asyncio.shield(stopping)
        except TimeoutError:
            stopping.cancel()
            log.warning(
                "consumer %s: the Kafka consumer did not close within %.0f s; abandoned",
                self.subscription.name,
                STOP_SECONDS,
            )
        except Exception as exc:  # closing is best effort; the error says nothing new
            log.info("consumer %s: closing failed (%s)", self.subscription.name, type(exc).__name__)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the commit comes back, and the consumer would not stop
            async with asyncio.timeout(self.stall_timeout):
                await consumer.commit(offsets)
        except TimeoutError:
            log.warning(
                "consumer %s: offset commit did not finish within %.0f s; starting the Kafka"
                " consumer over",
                self.subscription.name,
                self.stall_timeout,
            )
            raise  # transient: run() closes this consumer and starts a new one
        except (CommitFailedError, IllegalStateError):
            # A partition moved to another member during a rebalance (or was revoked while
            # its batch ran): its new owner redelivers from the last committed offset and the
            # inbox makes that harmless.
            log.info(
                "consumer %s: commit for %s lost to a rebalance",
                self.subscription.name,
                sorted(f"{tp.topic}[{tp.partition}]" for tp in offsets),
            )

    async def handle_record(self, record: ConsumerRecord) -> None:
        """Process one record to completion: handled once, ignored, or dead-lettered."""
        await self.handle_batch([record])

    async def handle_batch(self, records: list[ConsumerRecord]) -> None:
        """Process one partition's records in one database transaction.

        A poison record rolls the batch back; it is set aside for the dead-letter topic and the
        others run again (nothing was committed, so nothing takes effect twice).  A transient
        failure rolls the batch back and retries it after a backoff.  A failure outside any one
        handler (at COMMIT, say) is narrowed down by running the records one by one.
        """
        backoff = self.retry.backoff()
        pending = list(records)
        poison: list[tuple[ConsumerRecord, BaseException]] = []
        while True:
            try:
                outcomes = await self._apply_batch(pending) if pending else []
            except _StartOver:
                raise
            except _Poisoned as p:
                poison.append((p.record, p.error))
                pending.remove(p.record)
                continue
            except Exception as exc:
                if not is_transient(exc):
                    if len(pending) == 1:
                        poison.append((pending.pop(), exc))
                        continue
                    for record in pending:
                        await self.handle_batch([record])
                    pending.clear()
                    continue
                delay = backoff.next()
                log.warning(
                    "consumer %s: transient %s; retrying %d records in %.1fs",
                    self.subscription.name,
                    type(exc).__name__,
                    len(pending),
                    delay,
                )
                if self.metrics is not None:
                    self.metrics.consumer_retries.labels(self.subscription.name).inc()
                await asyncio.sleep(delay)
                continue
            for record, error in sorted(poison, key=lambda pe: pe[0].offset):
                await self._dead_letter(record, error)
            for outcome, count in Counter(outcomes).items():
                self._count(outcome, count)
            return

    async def _apply_batch(self, records: list[ConsumerRecord]) -> list[str]:
        outcomes: list[str] = []
        read = await self._read(records)
        wanted = [found[2] for found in read if found is not None]
        queued: Queued = []
        async with unit_of_work(self.pool, self.wakeup) as conn:
            fresh = await self._claim(conn, wanted)
            token = _QUEUED.set(queued)
            try:
                await self._apply_all(
                    cast(asyncpg.Connection, _FlushFirst(conn, queued)),
                    records,
                    read,
                    fresh,
                    outcomes,
                )
            finally:
                _QUEUED.reset(token)
            await _flush(conn, queued)
        return outcomes

    async def _apply_all(
        self,
        conn: asyncpg.Connection,
        records: list[ConsumerRecord],
        read: list[tuple[dict[str, str], Handler, Event[Any]] | None],
        fresh: set[UUID],
        outcomes: list[str],
    ) -> None:
        if self.subscription.batch is not None:
            await self._apply_batched(conn, self.subscription.batch, records, read, fresh, outcomes)
            return
        if sum(found is not None for found in read) > TRACE_EACH_UP_TO:
            await self._apply_under_one_span(conn, records, read, fresh, outcomes)
            return
        for record, found in zip(records, read, strict=True):
            if found is None:
                outcomes.append("ignored")
                continue
            headers, handler, event = found
            with self._span(record, event, headers) as span:
                outcome = await self._apply_told(conn, record, handler, event, fresh, span, True)
                span.set_attribute("complaints.outcome", outcome)
                outcomes.append(outcome)

    async def _apply_told(
        self,
        conn: asyncpg.Connection,
        record: ConsumerRecord,
        handler: Handler,
        event: Event[Any],
        fresh: set[UUID],
        span: Any,
        own: bool,
    ) -> str:
        """:meth:`_apply`, a failure told on ``span`` (the event's ``own``, or its batch's) and
        raised as the batch's (queued writes that failed), as transient, or as poison."""
        try:
            return await self._apply(conn, handler, event, fresh)
        except _QueuedWritesFailed as exc:
            assert exc.__cause__ is not None
            record_error(span, exc.__cause__)
            raise exc.__cause__ from None  # the batch's failure, not this handler's
        except Exception as exc:
            record_error(span, exc)
            if is_transient(exc):
                raise
            if own:
                span.set_attribute("complaints.outcome", "dead_lettered")
            raise _Poisoned(record, exc) from exc

    async def _apply_under_one_span(
        self,
        conn: asyncpg.Connection,
        records: list[ConsumerRecord],
        read: list[tuple[dict[str, str], Handler, Event[Any]] | None],
        fresh: set[UUID],
        outcomes: list[str],
    ) -> None:
        """:meth:`_apply_all` for more than :data:`TRACE_EACH_UP_TO` events (a backlog): one
        ``process`` span for the batch, linked to the events' traces; each handler runs in its
        event's extracted context, so what it appends carries that context on (the event's
        trace goes on), as under a span of its own."""
        topics = [r.topic for r, found in zip(records, read, strict=True) if found is not None]
        contexts = [extract_context(found[0]) for found in read if found is not None]
        with self._batch_span(topics, links_to_contexts(contexts)) as span:
            processed = 0
            each = iter(contexts)
            for record, found in zip(records, read, strict=True):
                if found is None:
                    outcomes.append("ignored")
                    continue
                _, handler, event = found
                token = attach(next(each))
                try:
                    outcome = await self._apply_told(
                        conn, record, handler, event, fresh, span, False
                    )
                finally:
                    detach(token)
                processed += outcome == "processed"
                outcomes.append(outcome)
            span.set_attribute("complaints.processed", processed)

    async def _read(self, records: list[ConsumerRecord]) -> list[Read | None]:
        """Each record's headers, handler and event (None: no handler wants it), the personal
        values opened with one keyring lookup, or as read ahead; a record that cannot be read
        is poison."""
        ahead = [self._ahead.pop(id(r), None) for r in records]
        unread = [r for r, a in zip(records, ahead, strict=True) if a is None]
        try:
            decoded = iter(await self._decode(unread))
        finally:
            self._batch_read.set()
        read: list[Read | None] = []
        for record, a in zip(records, ahead, strict=True):
            result = next(decoded) if a is None else a[1]
            if isinstance(result, MalformedEvent):
                raise _Poisoned(record, result) from result
            read.append(result)
        return read

    async def _read_ahead(self, records: list[ConsumerRecord]) -> None:
        """Read the next poll's records while this one's batch waits on the database."""
        try:
            decoded = await self._decode(records)
        except Exception:  # nothing lost: the records are read again when their batch runs
            return
        for record, result in zip(records, decoded, strict=True):
            self._ahead[id(record)] = (record, result)

    async def _decode(self, records: list[ConsumerRecord]) -> list[Read | MalformedEvent | None]:
        """:meth:`_read`'s work, a record that cannot be read answered by its error."""
        decoded: list[tuple[dict[str, str], str, Handler, dict[str, Any]] | MalformedEvent | None]
        decoded = []
        for i, record in enumerate(records, start=1):
            try:
                headers = cloudevent_headers(record.headers)
                name = event_type_of(headers)
                handler = self.subscription.handler_for(name)
                decoded.append(
                    None
                    if handler is None
                    else (headers, name, handler, decode_value(record.value))
                )
            except MalformedEvent as exc:
                decoded.append(exc)
            if i % READ_CHUNK == 0:
                await asyncio.sleep(0)  # let the batch in flight go on with its next statement
        if self.keyring is not None:
            await open_payloads(
                self.keyring,
                [(d[1], d[3]) for d in decoded if isinstance(d, tuple)],
                self.subscription.reads_personal,
            )
        read: list[Read | MalformedEvent | None] = []
        for i, d in enumerate(decoded, start=1):
            if not isinstance(d, tuple):
                read.append(d)
                continue
            headers, name, handler, data = d
            try:
                read.append((headers, handler, event_from_data(data, headers, name)))
            except MalformedEvent as exc:
                read.append(exc)
            if i % READ_CHUNK == 0:
                await asyncio.sleep(0)
        if self.keyring is not None and self.subscription.appends_to_their_streams:
            await self.keyring.prepare_sealing(
                {r[2].stream_id for r in read if isinstance(r, tuple)}
            )
        return read

    async def _apply_batched(
        self,
        conn: asyncpg.Connection,
        batch: Batch,
        records: list[ConsumerRecord],
        read: list[tuple[dict[str, str], Handler, Event[Any]] | None],
        fresh: set[UUID],
        outcomes: list[str],
    ) -> None:
        """The batch's new events to ``batch`` in one call, under one span."""
        events: list[Event[Any]] = []
        wanted: list[tuple[ConsumerRecord, dict[str, str], Event[Any]]] = []
        mine: list[str] = []  # the outcomes of ``wanted``
        for record, found in zip(records, read, strict=True):
            if found is None:
                outcomes.append("ignored")
                continue
            headers, _, event = found
            wanted.append((record, headers, event))
            if event.event_id in fresh:
                fresh.discard(event.event_id)  # a second copy in the batch is a duplicate too
                events.append(event)
                mine.append("processed")
            else:
                mine.append("duplicate")
            outcomes.append(mine[-1])
        if not wanted:
            return
        with contextlib.ExitStack() as stack:
            spans = [stack.enter_context(s) for s in self._batch_spans(wanted)]
            try:
                if events:
                    await batch.handle(conn, events)
            except Exception as exc:
                # writes it queued that failed are its own: no other handler queued any
                error = exc.__cause__ if isinstance(exc, _QueuedWritesFailed) else exc
                assert error is not None
                for span in spans:
                    record_error(span, error)
                if len(wanted) == 1 and not is_transient(error):
                    spans[0].set_attribute("complaints.outcome", "dead_lettered")
                    raise _Poisoned(wanted[0][0], error) from error  # as a handler's failure
                if error is exc:
                    raise  # transient: retried; else narrowed down record by record
                raise error from None
            if len(spans) == len(wanted):  # one per event: its own outcome
                for span, outcome in zip(spans, mine, strict=True):
                    span.set_attribute("complaints.outcome", outcome)
            else:
                spans[0].set_attribute("complaints.processed", len(events))

    def _batch_spans(self, wanted: list[tuple[ConsumerRecord, dict[str, str], Event[Any]]]) -> Any:
        """The spans of a batch handler's call: up to :data:`TRACE_EACH_UP_TO` events, each
        event's ``process`` span, a child of its trace, as a handler's (each lasting the whole
        call); more (a replay), one span for the batch, linked to the first of
        their traces (:data:`~complaints_shared.telemetry.MAX_LINKS`)."""
        if len(wanted) <= TRACE_EACH_UP_TO:
            spans = []
            for record, headers, event in wanted:
                span_attrs = self._span_attributes(record, event)
                span_attrs["messaging.batch.message_count"] = len(wanted)
                spans.append(self._start_span(f"{record.topic} process", headers, span_attrs))
            return spans
        topics = [record.topic for record, _, _ in wanted]
        return [self._batch_span(topics, links_to(headers for _, headers, _ in wanted))]

    def _batch_span(self, topics: list[str], links: list[Link]) -> Any:
        """The one ``process`` span of a batch of more than :data:`TRACE_EACH_UP_TO` events
        (on ``topics``, one per event), linked to their traces: a root of its own."""
        span_attrs = batch_attributes("process", topics, len(topics))
        span_attrs["messaging.consumer.group.name"] = self.subscription.name
        return self.telemetry.tracer.start_as_current_span(
            batch_span_name("process", topics),
            context=Context(),  # a root: the batch belongs to no one event's trace
            kind=CONSUMER,
            attributes=span_attrs,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )

    def _span(self, record: ConsumerRecord, event: Event[Any], headers: Mapping[str, str]) -> Any:
        return self._start_span(
            f"{record.topic} process", headers, self._span_attributes(record, event)
        )

    def _span_attributes(self, record: ConsumerRecord, event: Event[Any]) -> dict[str, Any]:
        span_attrs: dict[str, Any] = attrs("process", record.topic, event)
        span_attrs["messaging.consumer.group.name"] = self.subscription.name
        span_attrs["messaging.destination.partition.id"] = str(record.partition)
        span_attrs["messaging.kafka.offset"] = record.offset
        return span_attrs

    def _start_span(self, name: str, headers: Mapping[str, str], span_attrs: dict[str, Any]) -> Any:
        """A ``process`` span, a child of the trace the record's headers carry."""
        return self.telemetry.tracer.start_as_current_span(
            name,
            context=extract_context(headers),
            kind=CONSUMER,
            attributes=span_attrs,
            # failures are told by record_error: type and safe message only (the SDK's own
            # exception event would carry the error's text and traceback, which may quote data)
            record_exception=False,
            set_status_on_exception=False,
        )

    async def _claim(self, conn: asyncpg.Connection, events: list[Event[Any]]) -> set[UUID]:
        """In the batch's transaction, one round trip: check the generation (under
        ``FOR SHARE``: a rebuild waits for this batch) and record the events in the inbox.
        Returns the ids seen for the first time; the others had their effect already."""

        async def claim() -> asyncpg.Record | None:
            return await conn.fetchrow(
                _CLAIM,
                self.subscription.name,
                [e.event_id for e in events],
                [e.type for e in events],
                self.generation,
            )

        row = await claim()
        if row is None or row["generation"] is None:  # the first batch ever: no row yet
            await self._current_generation(conn, share=True)
            row = await claim()
        assert row is not None
        if row["generation"] != self.generation:
            raise _StartOver(row["generation"])  # a rebuild cleared what this batch would write to
        return set(row["fresh"])

    async def _apply(
        self, conn: asyncpg.Connection, handler: Handler, event: Event[Any], fresh: set[UUID]
    ) -> str:
        if event.event_id not in fresh:
            return "duplicate"
        fresh.discard(event.event_id)  # a second copy in the same batch is a duplicate too
        await handler(conn, event)
        return "processed"

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException) -> None:
        """Park a record on the dead-letter topic (acknowledged by the broker) with its story."""
        log.error(
            "consumer %s: dead-lettering %s[%d]@%d: %s",
            self.subscription.name,
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
        )
        headers = [
            *(record.headers or ()),
            ("dlq_error_type", type(exc).__name__.encode()),
            ("dlq_error_message", safe_message(exc).encode()),
            ("dlq_origin_topic", record.topic.encode()),
            ("dlq_origin_partition", str(record.partition).encode()),
            ("dlq_origin_offset", str(record.offset).encode()),
            ("dlq_consumer", self.subscription.name.encode()),
        ]
        backoff = self.retry.backoff()
        while True:
            try:
                await self.producer.send_and_wait(
                    self.dlq_topic, record.value, key=record.key, headers=headers
                )
                break
            except KafkaError:
                await asyncio.sleep(backoff.next())
        self._count("dead_lettered")

    def _count(self, outcome: str, count: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.consumed.labels(self.subscription.name, outcome).inc(count)
