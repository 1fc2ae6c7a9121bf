"""The outbox relay on the real broker: order per stream, republish after a crash, wake-up."""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind

from complaints_shared.consumer import ConsumerRunner, Subscription
from complaints_shared.envelope import Event, decode_headers, from_kafka_record
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.eventstore import PostgresEventStore as EventStore
from complaints_shared.eventstore import Wakeup, after_commit, unit_of_work
from complaints_shared.metrics import ServiceMetrics
from complaints_shared.outbox import _LEADER_LOCK, MARK_SENT, PENDING, OutboxRelay, new_producer
from complaints_shared.telemetry import TRACE_EACH_UP_TO, setup_telemetry
from complaints_shared.topics import ensure_topics
from tests.events import Counted, Happened, Pinged
from tests.support import eventually, plan_once_grown, plans_made, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def topic(infrastructure, topic_prefix: str) -> str:
    name = f"{topic_prefix}complaints.test.v1"
    await ensure_topics(infrastructure.kafka_bootstrap, [name, f"{topic_prefix}dlq"], 3)
    return name


def tasks_now() -> str:
    """Every task of the running loop and where it waits."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=out)
    return out.getvalue()


@asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[None]:
    """Fail after ``seconds``, saying where every task waits (a hang is a failure to read)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"still waiting after {seconds}s; tasks:\n{tasks_now()}") from None


def make_relay(infrastructure, database: str, pool, producer, **kw) -> OutboxRelay:
    return OutboxRelay(
        dsn=database,
        pool=pool,
        producer=producer,
        new_producer=lambda: new_producer(infrastructure.kafka_bootstrap),
        source="/complaints/test",
        telemetry=setup_telemetry("test"),
        **kw,
    )


async def writer(pool, store: EventStore, streams: list[uuid.UUID], appends: int) -> int:
    """Append to random streams, reloading and retrying on conflicts, as a handler would."""
    written = 0
    rng = random.Random()
    for _ in range(appends):
        stream = rng.choice(streams)
        while True:
            try:
                async with pool.acquire() as conn, conn.transaction():
                    v = await store.version(conn, stream)
                    await store.append(
                        conn,
                        stream,
                        v,
                        [Counted(n=v + i) for i in range(1, 3)],
                    )
                written += 2
                break
            except ConcurrencyConflict:
                await asyncio.sleep(0)
    return written


async def unsent_is(pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == n


async def test_concurrent_writers_arrive_on_kafka_in_version_order_per_stream(
    infrastructure, database, pool, producer, topic
):
    store = EventStore(source="/complaints/test", topic=topic)
    relay = make_relay(infrastructure, database, pool, producer, batch_size=37)
    relay_task = asyncio.create_task(relay.run())
    streams = [uuid.uuid4() for _ in range(6)]
    try:
        counts = await asyncio.gather(*(writer(pool, store, streams, 15) for _ in range(8)))
        total = sum(counts)
        records = await read_topic(infrastructure.kafka_bootstrap, topic, count=total)
        # a record is on the broker before the relay marks its row: the mark follows the ack
        await eventually(
            lambda: unsent_is(pool, 0), timeout=10, what="the relay marking every row sent"
        )
    finally:
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)

    by_stream: dict[uuid.UUID, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        e = from_kafka_record(r.value, r.headers)
        assert r.key == str(e.stream_id).encode()
        by_stream[e.stream_id].append(e.version)
    for stream, versions in by_stream.items():
        assert versions == list(range(1, len(versions) + 1)), stream
        assert len(versions) == await store.version(pool, stream)
    assert len(records) == total
    headers = decode_headers(records[0].headers)
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_type"] == "complaints.test.Counted"
    assert headers["content-type"] == "application/json"


async def test_relay_wakes_on_notify_rather_than_polling(
    infrastructure, database, pool, producer, topic
):
    store = EventStore(source="/complaints/test", topic=topic)
    relay = make_relay(infrastructure, database, pool, producer, idle_poll_seconds=3600)
    relay_task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: asyncio.sleep(0, relay.is_leader), what="relay leadership")
        await asyncio.sleep(0.5)  # the relay is now idle, waiting for a notification
        async with pool.acquire() as conn, conn.transaction():
            await store.append(conn, uuid.uuid4(), 0, [Pinged()])
        records = await read_topic(infrastructure.kafka_bootstrap, topic, count=1, timeout=20)
    finally:
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
    assert from_kafka_record(records[0].value, records[0].headers).type == "Pinged"


@pytest.mark.parametrize("relay_in", ["this process", "another process"])
async def test_units_of_work_wake_the_relay_once_their_transactions_end(
    infrastructure, database, pool, producer, topic, relay_in
):
    """Appends in units of work carry no NOTIFY of their own: the relay of this process is
    woken directly (no NOTIFY at all while it leads), another process's by NOTIFYs sent after
    the commits.  A wake-up before its commit would leave the relay asleep for an hour."""
    store = EventStore(source="/complaints/test", topic=topic)
    wakeup = Wakeup(pool)
    relay = make_relay(
        infrastructure,
        database,
        pool,
        producer,
        idle_poll_seconds=3600,
        wakeup=wakeup if relay_in == "this process" else None,
    )
    relay_task = asyncio.create_task(relay.run())
    writers = asyncio.Semaphore(8)

    async def append_one() -> None:
        async with writers, unit_of_work(pool, wakeup) as conn:
            await store.append(conn, uuid.uuid4(), 0, [Pinged()])

    try:  # bounded: a wait that never ends fails with every task's stack (see tasks_now)
        async with bounded(60):
            await eventually(lambda: asyncio.sleep(0, relay.is_leader), what="relay leadership")
            await asyncio.sleep(0.5)  # the relay is now idle, waiting to be woken
            await asyncio.gather(*(append_one() for _ in range(40)))
            records = await read_topic(infrastructure.kafka_bootstrap, topic, count=40, timeout=20)
    finally:
        relay_task.cancel()
        async with bounded(15):
            await asyncio.gather(relay_task, return_exceptions=True)
    assert len(records) == 40
    if relay_in == "this process":
        assert wakeup.notified == 0
    else:
        assert 1 <= wakeup.notified <= 40


@pytest.mark.parametrize("wakeup", [False, True])
async def test_after_commit_runs_once_the_unit_has_committed_and_never_after_a_rollback(
    database, pool, wakeup
):
    """What a callback given to ``after_commit`` does (wake a worker) sees the unit's rows:
    it runs once the unit has committed, once, and not at all for a unit that rolled back or
    outside any unit (whose transaction is not known)."""
    await pool.execute("CREATE TABLE queued (n int)")
    looks: list[asyncio.Future[int]] = []

    def look() -> None:  # as a woken worker would: another session reads the rows
        looks.append(asyncio.ensure_future(pool.fetchval("SELECT count(*) FROM queued")))

    async with unit_of_work(pool, Wakeup(pool) if wakeup else None) as conn:
        await conn.execute("INSERT INTO queued VALUES (1)")
        assert after_commit(look)
        await asyncio.sleep(0.05)
        assert looks == []  # not before the commit
    assert len(looks) == 1
    assert await looks[0] == 1

    with pytest.raises(RuntimeError, match="the unit fails"):
        async with unit_of_work(pool, None) as conn:
            await conn.execute("INSERT INTO queued VALUES (2)")
            assert after_commit(look)
            raise RuntimeError("the unit fails")
    assert len(looks) == 1  # rolled back: not called
    assert await pool.fetchval("SELECT count(*) FROM queued") == 1

    assert not after_commit(look)  # outside a unit: not registered, never called
    await asyncio.sleep(0.05)
    assert len(looks) == 1


async def test_wake_ups_asked_for_while_one_is_sent_are_covered_by_one_more(database, pool):
    wakeup = Wakeup(pool)
    listener = await asyncpg.connect(database)
    heard: list[str] = []
    await listener.add_listener("complaints_outbox", lambda *a: heard.append(a[2]))
    try:
        for _ in range(10):  # ten units end before the first NOTIFY leaves: one covers all
            wakeup.wake()
        await eventually(lambda: asyncio.sleep(0, len(heard) == 1), what="one NOTIFY")
        wakeup.wake()
        await asyncio.sleep(0)  # that NOTIFY is on its way now
        assert wakeup._sending is not None and not wakeup._sending.done()
        for _ in range(5):  # these commits may be later than the NOTIFY in flight
            wakeup.wake()
        await eventually(lambda: asyncio.sleep(0, len(heard) == 3), what="two more NOTIFYs")
        await asyncio.sleep(0.2)
        assert wakeup.notified == 3 and len(heard) == 3
    finally:
        await listener.close()


def traceparent_of(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_each_record_stays_in_its_events_trace_also_when_a_backlog_goes_under_one_span(
    infrastructure, database, pool, producer, topic
):
    """A batch of up to TRACE_EACH_UP_TO rows: a publish span per record, a child of the
    context its event was appended in, and the record carries that span's context.  A larger
    batch (a backlog): one publish span linked to the events' contexts, and each record carries
    the context its event was appended in, so the consumers' work stays in that trace."""
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("test", exporter)
    store = EventStore(source="/complaints/test", topic=topic)

    async def append_in_spans(count: int) -> dict[uuid.UUID, SpanContext]:
        appended: dict[uuid.UUID, SpanContext] = {}
        for _ in range(count):
            stream = uuid.uuid4()
            with telemetry.tracer.start_as_current_span("append") as span:
                async with pool.acquire() as conn, conn.transaction():
                    await store.append(conn, stream, 0, [Pinged()])
            appended[stream] = span.get_span_context()
        return appended

    relay = OutboxRelay(
        dsn=database,
        pool=pool,
        producer=producer,
        new_producer=lambda: new_producer(infrastructure.kafka_bootstrap),
        source="/complaints/test",
        telemetry=telemetry,
    )
    backlog = await append_in_spans(TRACE_EACH_UP_TO + 4)
    assert await relay.publish_pending() == TRACE_EACH_UP_TO + 4
    few = await append_in_spans(3)
    assert await relay.publish_pending() == 3

    records = await read_topic(infrastructure.kafka_bootstrap, topic, count=len(backlog) + 3)
    carried = {uuid.UUID(r.key.decode()): decode_headers(r.headers)["traceparent"] for r in records}
    publishes = [s for s in exporter.get_finished_spans() if s.name == f"{topic} publish"]
    assert all(s.kind is SpanKind.PRODUCER for s in publishes)
    (batch,) = [s for s in publishes if s.parent is None]
    assert batch.attributes["messaging.batch.message_count"] == len(backlog)
    assert batch.attributes["messaging.destination.name"] == topic
    assert {link.context.span_id for link in batch.links} == {c.span_id for c in backlog.values()}
    for stream, appended in backlog.items():
        assert carried[stream] == traceparent_of(appended)  # as it was appended
    own = {s.attributes["messaging.kafka.message.key"]: s for s in publishes if s.parent}
    assert len(own) == 3
    for stream, appended in few.items():
        span = own[str(stream)]
        assert span.parent.span_id == appended.span_id
        assert span.context.trace_id == appended.trace_id
        assert carried[stream] == traceparent_of(span.context)  # its publish span's


async def appender_without_analyze(pool, topic: str) -> Callable[[int, int], Awaitable[None]]:
    """``append(streams, events)``: that many new streams of that many events each, into the
    store and its outbox; the two tables are analysed only when the test says so."""
    async with pool.acquire() as conn:
        for table in ("outbox", "events"):
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    store = EventStore(source="/complaints/test", topic=topic)

    async def append(streams: int, events: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for _ in range(streams):
                await store.append(conn, uuid.uuid4(), 0, [Counted(n=n) for n in range(events)])

    return append


async def test_the_relay_reads_a_backlog_along_the_unsent_index_whatever_the_statistics(
    infrastructure, database, pool, producer, topic
):
    """The relay's session reads each next batch along the unsent rows' index in position
    order, stopping at the batch's size, and looks each row's event up by index, also while the
    planner's statistics still say that few rows wait (as right after a backlog built up), and
    with the plan it made while the outbox held a few rows: a plain session would sort the whole
    backlog, joined to its events, for every batch, and the relay's own compared every row of
    a batch with every event it had read."""
    append = await appender_without_analyze(pool, topic)  # statistics as before the backlog

    async def grow() -> None:
        await append(30, 100)

    def plan_of(rows: list[asyncpg.Record]) -> str:
        return "\n".join(r[0] for r in rows)

    await append(30, 100)
    async with pool.acquire() as plain:
        assert "Sort" in plan_of(await plain.fetch(f"EXPLAIN {PENDING}", 500, []))  # the case
    relay = make_relay(infrastructure, database, pool, producer)
    own = await relay.connect()
    try:
        plan = plan_of(await own.fetch(f"EXPLAIN {PENDING}", 500, []))
        assert "Sort" not in plan and "Index Scan using outbox_unsent" in plan, plan
        assert len(await relay.fetch_pending(own)) == 500
        # prepared while a few rows waited, then kept for every later batch
        await pool.execute("TRUNCATE outbox, events RESTART IDENTITY")
        await append(1, 20)
        await pool.execute("ANALYZE outbox, events")
        kept = await plan_once_grown(own, PENDING, "500, ARRAY[]::bigint[]", grow)
        assert "Sort" not in kept and "Seq Scan" not in kept, kept
        assert "Index Scan using outbox_unsent" in kept, kept
        # each row's event looked up by index: not every row compared with every event
        assert "Index Cond: (event_id = o.event_id)" in kept, kept
        assert "Join Filter" not in kept and "Materialize" not in kept, kept
        assert len(await relay.fetch_pending(own)) == 500
    finally:
        await own.close()


async def test_the_relay_plans_its_statements_once_per_session(
    infrastructure, database, pool, producer, topic
):
    """The relay reads and marks batch after batch without planning either statement again:
    planning the next batch's read cost PostgreSQL more than running it."""
    append = await appender_without_analyze(pool, topic)
    await append(10, 10)
    relay = make_relay(infrastructure, database, pool, producer, batch_size=10)
    own = await relay.connect()
    try:
        for _ in range(10):  # past the five calls after which a plan may be kept
            batch = await relay.fetch_pending(own)
            assert len(batch) == 10
            await relay.mark_sent([r.position for r in batch], own)
        assert await relay.fetch_pending(own) == []
        for statement in (PENDING, MARK_SENT):
            generic, custom = await plans_made(own, statement)
            assert custom == 0 and generic >= 10, (statement, generic, custom)
    finally:
        await own.close()


async def test_the_relay_marks_a_batch_sent_by_index_after_the_outbox_grew(
    infrastructure, database, pool, producer, topic
):
    """The relay's session looks rows up by index whatever its plans were made for: marking a
    batch sent stays a lookup of its positions after the outbox grew from a few rows (a new
    deployment's first minutes: autovacuum analysed it while it was small, and not again yet),
    where a plain session kept the plan it made while the outbox was small and scanned every
    row for every batch."""
    append = await appender_without_analyze(pool, topic)

    async def grow() -> None:
        await append(200, 100)

    batch = "ARRAY[" + ", ".join(str(p) for p in range(1, 121)) + "]::bigint[]"
    relay = make_relay(infrastructure, database, pool, producer)
    own = await relay.connect()
    plans = {}
    try:
        for name, session in (("plain", None), ("relay", own)):
            await pool.execute("TRUNCATE outbox, events RESTART IDENTITY")
            await append(1, 20)  # a few events so far, and statistics that say so
            await pool.execute("ANALYZE outbox, events")
            if session is None:
                async with pool.acquire() as conn:
                    plans[name] = await plan_once_grown(conn, MARK_SENT, batch, grow)
            else:
                plans[name] = await plan_once_grown(session, MARK_SENT, batch, grow)
    finally:
        await own.close()
    assert "Seq Scan on outbox" in plans["plain"]  # the case
    assert "Seq Scan" not in plans["relay"], plans["relay"]
    assert "outbox_pkey" in plans["relay"]


async def test_relay_crash_between_publish_and_mark_sent_republishes_and_inbox_keeps_one_effect(
    infrastructure, database, pool, producer, topic, topic_prefix
):
    store = EventStore(source="/complaints/test", topic=topic)
    stream = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await store.append(conn, stream, 0, [Counted(n=n) for n in range(1, 4)])

    crashed = make_relay(infrastructure, database, pool, producer)
    rows = await crashed.fetch_pending()
    await crashed.publish(rows)  # broker acknowledged ... and the relay dies before mark_sent
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 3

    restarted = make_relay(infrastructure, database, pool, producer)
    assert await restarted.publish_pending() == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0

    records = await read_topic(infrastructure.kafka_bootstrap, topic, count=6)
    assert len(records) == 6  # every event twice on the wire

    async def count_effect(conn: asyncpg.Connection, event: Event) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1, $2)", event.event_id, event.payload.n)

    metrics = ServiceMetrics()
    runner = ConsumerRunner(
        Subscription(f"{topic_prefix}counter", (topic,), {"Counted": count_effect}),
        infrastructure.kafka_bootstrap,
        pool,
        producer,
        setup_telemetry("test"),
        metrics,
        dlq_topic=f"{topic_prefix}dlq",
    )
    task = asyncio.create_task(runner.run())
    try:
        await eventually(
            lambda: asyncio.sleep(0, handled(metrics, runner) == (3, 3)),
            what="three events processed and three duplicates recognised",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    effects = await pool.fetch("SELECT n FROM effects ORDER BY n")
    assert [r["n"] for r in effects] == [1, 2, 3]


async def small_topic(infrastructure, topic_prefix: str) -> str:
    """A one-partition topic whose broker refuses records over 2 KiB."""
    small = f"{topic_prefix}small"
    admin = AIOKafkaAdminClient(bootstrap_servers=infrastructure.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "2048"})]
        )
    finally:
        await admin.close()
    return small


async def end_offset(bootstrap: str, topic: str) -> int:
    """How many records the (one-partition) topic holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await consumer.stop()


def handled(metrics: ServiceMetrics, runner: ConsumerRunner) -> tuple[float, float]:
    name = runner.subscription.name
    return (
        metrics.consumed.labels(name, "processed")._value.get(),
        metrics.consumed.labels(name, "duplicate")._value.get(),
    )


async def test_a_silent_leader_is_seen_by_the_others_and_replaced(
    infrastructure, database, pool, producer, topic
):
    """The leader's process stopped (SIGSTOP, a hung host): its session holds the lock and says
    nothing.  Another instance reports the age of the waiting events, ends that session once
    both exceed ``takeover_after``, and relays them."""
    silent = await asyncpg.connect(database)
    assert await silent.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK)
    store = EventStore(source="/complaints/test", topic=topic)
    async with pool.acquire() as conn, conn.transaction():
        await store.append(conn, uuid.uuid4(), 0, [Counted(n=1), Counted(n=2)])
    metrics = ServiceMetrics()
    standby = make_relay(
        infrastructure,
        database,
        pool,
        producer,
        metrics=metrics,
        follow_poll_seconds=0.2,
        takeover_after=3,
    )
    task = asyncio.create_task(standby.run())
    try:
        await eventually(
            lambda: asyncio.sleep(0, metrics.outbox_oldest_unsent._value.get() >= 1),
            what="the standby to report the waiting events",
        )
        assert metrics.outbox_pending._value.get() == 2
        assert not standby.is_leader
        records = await read_topic(infrastructure.kafka_bootstrap, topic, count=2, timeout=20)
        assert standby.is_leader and standby.takeovers == 1
        await eventually(
            lambda: asyncio.sleep(0, metrics.outbox_oldest_unsent._value.get() == 0),
            what="the backlog gauge to fall back",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [from_kafka_record(r.value, r.headers).payload.n for r in records] == [1, 2]
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await silent.fetchval("SELECT 1")  # its session was ended: it leads nothing
    await silent.close()


async def test_a_leader_whose_session_ends_stops_leading_until_it_holds_the_lock_again(
    infrastructure, database, pool, producer, topic
):
    """Leadership is fenced by the session that holds the lock: once it is gone the relay
    stops, and it publishes again only after it won the lock back."""
    relay = make_relay(infrastructure, database, pool, producer, idle_poll_seconds=0.2)
    task = asyncio.create_task(relay.run())
    rival = await asyncpg.connect(database)
    try:
        await eventually(lambda: asyncio.sleep(0, relay.is_leader), what="leadership")
        leader_pid = await rival.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        # the rival queues for the lock first, so it gets it the moment the session ends
        queued = asyncio.create_task(rival.fetchval("SELECT pg_advisory_lock($1)", _LEADER_LOCK))
        await asyncio.sleep(0.2)
        await pool.fetchval("SELECT pg_terminate_backend($1)", leader_pid)
        await asyncio.wait_for(queued, 10)
        await eventually(lambda: asyncio.sleep(0, not relay.is_leader), what="leadership lost")
        store = EventStore(source="/complaints/test", topic=topic)
        async with pool.acquire() as conn, conn.transaction():
            await store.append(conn, uuid.uuid4(), 0, [Counted(n=7)])
        await asyncio.sleep(1)
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
        await rival.close()  # the rival goes away: the relay takes the lock back
        records = await read_topic(infrastructure.kafka_bootstrap, topic, count=1, timeout=20)
        assert relay.is_leader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not rival.is_closed():
            await rival.close()
    assert from_kafka_record(records[0].value, records[0].headers).payload.n == 7


async def test_an_event_too_large_for_the_topic_is_parked_and_only_its_stream_waits(
    infrastructure, database, pool, producer, topic_prefix
):
    small = await small_topic(infrastructure, topic_prefix)
    store = EventStore(source="/complaints/test", topic=small)
    big_stream, other = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await store.append(conn, big_stream, 0, [Happened(n=1, text="x" * 5000)])
        await store.append(conn, other, 0, [Happened(n=2)])
        await store.append(conn, big_stream, 1, [Happened(n=3)])
    metrics = ServiceMetrics()
    relay = make_relay(infrastructure, database, pool, producer, metrics=metrics)
    try:
        for _ in range(3):  # the relay goes on past the refused record
            await relay.publish_pending()
    finally:
        await relay.close()
    records = await read_topic(infrastructure.kafka_bootstrap, small, count=1)
    assert [from_kafka_record(r.value, r.headers).payload.n for r in records] == [2]
    parked = await pool.fetch(
        "SELECT e.data->>'n' AS n, o.last_error FROM outbox o JOIN events e USING (event_id)"
        " WHERE o.parked_at IS NOT NULL"
    )
    assert [r["n"] for r in parked] == ["1"]
    assert "TooLarge" in parked[0]["last_error"]
    # the big event's stream waits behind it: version 2 is not published before version 1
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox o JOIN events e USING (event_id)"
            " WHERE o.sent_at IS NULL AND o.parked_at IS NULL AND e.stream_id = $1",
            big_stream,
        )
        == 1
    )
    assert metrics.outbox_parked._value.get() == 1


async def test_a_drain_reads_ahead_yet_holds_back_the_later_events_of_a_stream_parked_meanwhile(
    infrastructure, database, pool, producer, topic_prefix
):
    """The relay reads the next batch while the broker acknowledges the one in flight.  When
    that batch's event is parked for its size, the batch read meanwhile already holds its
    stream's next event: it must be read again, not sent (version 2 before version 1)."""
    small = await small_topic(infrastructure, topic_prefix)
    store = EventStore(source="/complaints/test", topic=small)
    big, other = uuid.uuid4(), uuid.uuid4()
    for stream, version, event in [  # positions in this order; batches of two
        (other, 0, Happened(n=1)),
        (big, 0, Happened(n=100, text="x" * 5000)),  # refused by the broker: parked
        (big, 1, Happened(n=101)),  # read ahead with the next one: must wait
        (other, 1, Happened(n=2)),
        (other, 2, Happened(n=3)),
    ]:
        async with pool.acquire() as conn, conn.transaction():
            await store.append(conn, stream, version, [event])
    relay = make_relay(infrastructure, database, pool, producer, batch_size=2)
    try:
        async with pool.acquire() as conn:
            assert await relay.drain(conn) == 4  # 1 and 100, then 2 and 3; 101 waits
    finally:
        await relay.close()
    # the drain returns once the broker acknowledged what it sent: the topic holds it all
    records = await read_topic(infrastructure.kafka_bootstrap, small, count=3)
    assert [from_kafka_record(r.value, r.headers).payload.n for r in records] == [1, 2, 3]
    assert await end_offset(infrastructure.kafka_bootstrap, small) == 3
    waiting = await pool.fetch(
        "SELECT (e.data->>'n')::int AS n, o.parked_at IS NOT NULL AS parked"
        "  FROM outbox o JOIN events e USING (event_id) WHERE o.sent_at IS NULL ORDER BY n"
    )
    assert [(r["n"], r["parked"]) for r in waiting] == [(100, True), (101, False)]


async def test_a_record_the_broker_refused_does_not_stop_the_later_records_of_its_partition(
    infrastructure, database, pool, producer, topic_prefix
):
    """An idempotent producer numbers its records per partition; a batch the broker refused
    used its numbers all the same, and the broker then refused every later record of that
    partition (``OutOfOrderSequenceNumber``): one oversized event stopped the relay for good."""
    small = await small_topic(infrastructure, topic_prefix)
    store = EventStore(source="/complaints/test", topic=small)
    big, other = uuid.uuid4(), uuid.uuid4()
    relay = make_relay(infrastructure, database, pool, producer)
    try:
        for stream, version, event in [
            (other, 0, Happened(n=1)),  # accepted first: the broker knows the producer now
            (big, 0, Happened(n=100, text="x" * 5000)),
            (other, 1, Happened(n=2)),
            (other, 2, Happened(n=3)),
        ]:
            async with pool.acquire() as conn, conn.transaction():
                await store.append(conn, stream, version, [event])
            await relay.publish_pending()
    finally:
        await relay.close()
    records = await read_topic(infrastructure.kafka_bootstrap, small, count=3)
    assert [from_kafka_record(r.value, r.headers).payload.n for r in records] == [1, 2, 3]
    assert await end_offset(infrastructure.kafka_bootstrap, small) == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
    assert relay.producers_renewed >= 1  # after each refusal: the broker refused it alone too
