"""The inbox consumer on the real broker: one effect per event, poison to the DLQ, retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from complaints_shared import consumer as consumer_module
from complaints_shared import redrive
from complaints_shared.consumer import (
    TRACE_EACH_UP_TO,
    Batch,
    ConsumerRunner,
    RetryPolicy,
    Subscription,
    defer,
    start_over,
    watch_generations,
    write,
)
from complaints_shared.envelope import Event, decode_headers, to_kafka_record
from complaints_shared.errors import PoisonEvent
from complaints_shared.eventstore import PostgresEventStore, current_trace_context
from complaints_shared.metrics import ServiceMetrics
from complaints_shared.privacy import PostgresKeyring, load_master_key, new_master_key
from complaints_shared.telemetry import inject_context, setup_telemetry
from complaints_shared.topics import ensure_topics
from tests.events import Confided, Counted, SomethingElse
from tests.support import (
    CountingPool,
    TcpProxy,
    behind,
    eventually,
    migrated_pool,
    read_topic,
    server_password,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def topics(infrastructure, topic_prefix: str) -> tuple[str, str]:
    names = (f"{topic_prefix}in", f"{topic_prefix}dlq")
    await ensure_topics(infrastructure.kafka_bootstrap, list(names), 1)
    return names


def event(
    n: int, type_: type[Counted | SomethingElse] = Counted, stream: uuid.UUID | None = None
) -> Event[Counted | SomethingElse]:
    return Event(
        event_id=uuid.uuid4(),
        stream_id=stream or uuid.uuid4(),
        version=1,
        occurred_at=datetime.now(UTC),
        source="/complaints/test",
        payload=type_(n=n),
    )


async def send(producer: AIOKafkaProducer, topic: str, e: Event[Counted]) -> None:
    r = to_kafka_record(e)
    await producer.send_and_wait(topic, r.value, key=r.key, headers=r.headers)


class Running:
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConsumerRunner:
        self.task = asyncio.create_task(self.runner.run())
        return self.runner

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def runner_for(  # type: ignore[no-untyped-def]
    infrastructure, pool, producer, topics, handlers, metrics, name, *, keyring=None, **options
) -> ConsumerRunner:
    """A runner of subscription ``name`` (``options``: the subscription's) on ``topics[0]``."""
    return ConsumerRunner(
        Subscription(name, (topics[0],), handlers, **options),
        infrastructure.kafka_bootstrap,
        pool,
        producer,
        setup_telemetry("test"),
        metrics,
        dlq_topic=topics[1],
        retry=RetryPolicy(initial_delay=0.05, max_delay=0.2),
        keyring=keyring,
    )


def outcome(metrics: ServiceMetrics, name: str, what: str) -> float:
    return metrics.consumed.labels(name, what)._value.get()


async def counted(metrics: ServiceMetrics, name: str, what: str, **outcomes: int) -> None:
    """Wait until consumer ``name`` counted exactly these ``outcomes`` (``processed=3``...)."""
    await eventually(
        lambda: asyncio.sleep(0, all(outcome(metrics, name, o) == n for o, n in outcomes.items())),
        what=what,
    )


@pytest.fixture
def consume(infrastructure, pool, producer, topics):  # type: ignore[no-untyped-def]
    """``await consume(name, handler, what)``: run consumer ``name`` with ``handler`` for
    ``Counted`` until one event had the outcome (``processed``); its metrics."""

    async def until(name: str, handler, what: str, outcome_: str = "processed") -> ServiceMetrics:  # type: ignore[no-untyped-def]
        metrics = ServiceMetrics()
        async with Running(
            runner_for(infrastructure, pool, producer, topics, {"Counted": handler}, metrics, name)
        ):
            await eventually(
                lambda: asyncio.sleep(0, outcome(metrics, name, outcome_) == 1), what=what
            )
        return metrics

    return until


async def record_effect(conn: asyncpg.Connection, e: Event[Counted]) -> None:
    await conn.execute("INSERT INTO effects VALUES ($1, $2)", e.event_id, e.payload.n)


async def test_a_redelivered_event_has_one_effect_also_after_a_restart(
    infrastructure, pool, producer, topics, topic_prefix, consume
):
    name = f"{topic_prefix}g"
    once, twice = event(1), event(2)
    for e in (once, twice, twice):
        await send(producer, topics[0], e)
    await consume(name, record_effect, "the duplicate to be recognised", outcome_="duplicate")
    # restarted, the same consumer gets the first event delivered once more
    await send(producer, topics[0], once)
    metrics2 = await consume(
        name,
        record_effect,
        "the redelivery after the restart to be recognised",
        outcome_="duplicate",
    )
    rows = await pool.fetch("SELECT n, count(*) AS c FROM effects GROUP BY n ORDER BY n")
    assert [(r["n"], r["c"]) for r in rows] == [(1, 1), (2, 1)]
    assert outcome(metrics2, name, "processed") == 0


async def test_poison_events_go_to_the_dlq_and_the_partition_keeps_moving(
    infrastructure, pool, producer, topics, topic_prefix
):
    name = f"{topic_prefix}g"

    async def picky(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        if e.payload.n == 13:
            raise PoisonEvent("unlucky number")
        await record_effect(conn, e)

    await producer.send_and_wait(
        topics[0], b"{not json", key=b"k", headers=[("ce_id", b"x")]
    )  # malformed
    bad = event(13)
    await send(producer, topics[0], bad)  # the handler refuses it
    good = event(7)
    await send(producer, topics[0], good)
    metrics = ServiceMetrics()
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": picky}, metrics, name)
    ):
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 1 FROM effects"),
            what="the good event after the poison ones",
        )
        # the poison records are published to the DLQ after their batch committed
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "dead_lettered") == 2),
            what="both poison records dead-lettered",
        )

    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects")] == [7]
    dead = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=2)
    headers = [decode_headers(r.headers) for r in dead]
    assert [h["dlq_error_type"] for h in headers] == ["MalformedEvent", "PoisonEvent"]
    assert all(h["dlq_origin_topic"] == topics[0] and h["dlq_consumer"] == name for h in headers)
    assert [int(h["dlq_origin_offset"]) for h in headers] == [0, 1]
    assert headers[1]["dlq_error_message"] == "unlucky number"
    assert headers[1]["ce_id"] == str(bad.event_id)  # the original headers travel along
    assert dead[1].value == to_kafka_record(bad).value
    # the failed handler left nothing behind: no inbox row for the poison event
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", bad.event_id) == 0


async def test_records_read_while_a_batch_waits_on_the_database_are_handled_once_in_order(
    infrastructure, pool, producer, topics, topic_prefix, monkeypatch
):
    """While a batch's transaction waits on the database, the consumer takes the records
    fetched since (here two at a time, up to a poll's five) and reads them; they are then
    handled as the next batch, once each, in order, and a malformed one among them is
    dead-lettered as if it had been read with its batch."""
    monkeypatch.setattr(consumer_module, "TAKE_CHUNK", 2)
    name = f"{topic_prefix}g"
    sent = [event(n) for n in range(1, 31)]
    for e in sent[:12]:
        await send(producer, topics[0], e)
    await producer.send_and_wait(topics[0], b"{not json", key=b"k", headers=[("ce_id", b"x")])
    for e in sent[12:]:
        await send(producer, topics[0], e)

    async def slow(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await conn.execute("SELECT pg_sleep(0.02)")  # the batch waits on the database
        await record_effect(conn, e)

    await pool.execute("ALTER TABLE effects ADD COLUMN seq bigserial")  # the order of effect
    metrics = ServiceMetrics()
    runner = runner_for(infrastructure, pool, producer, topics, {"Counted": slow}, metrics, name)
    runner.max_poll_records = 5
    read_ahead: list[int] = []
    sizes: list[int] = []  # of the next batches read ahead
    read = runner._read_ahead

    async def counting(records):  # type: ignore[no-untyped-def]
        read_ahead.extend(r.offset for r in records)
        sizes.append(len(records))
        await read(records)

    runner._read_ahead = counting  # type: ignore[method-assign]
    async with Running(runner):
        await counted(
            metrics,
            name,
            "30 events processed and the malformed one dead-lettered",
            processed=30,
            dead_lettered=1,
        )
    rows = await pool.fetch("SELECT n FROM effects ORDER BY seq")
    assert [r["n"] for r in rows] == list(range(1, 31))  # each once, in order
    assert 12 in read_ahead and len(read_ahead) >= 20  # most were read ahead, the bad one too
    assert max(sizes) == 5  # a poll's worth, taken in parts
    (dead,) = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    assert decode_headers(dead.headers)["dlq_origin_offset"] == "12"


async def test_a_batch_not_read_ahead_reads_its_own_records_before_the_next_polls(
    infrastructure, pool, producer, topics, topic_prefix, monkeypatch
):
    """The first batch after an idle poll was not read ahead: it reads its records first,
    and the next poll's records are read only then (beside its transaction), not in turns
    with its own, which held its transaction back by a whole poll's reading."""
    monkeypatch.setattr(consumer_module, "READ_CHUNK", 1)  # a read gives way after each record
    name = f"{topic_prefix}g"
    for n in range(1, 11):
        await send(producer, topics[0], event(n))
    metrics = ServiceMetrics()
    runner = runner_for(
        infrastructure, pool, producer, topics, {"Counted": record_effect}, metrics, name
    )
    runner.max_poll_records = 5
    steps: list[tuple[str, int]] = []  # ("start"/"end", first offset of the records read)
    decode = runner._decode

    async def told(records):  # type: ignore[no-untyped-def]
        if records:
            steps.append(("start", records[0].offset))
        try:
            return await decode(records)
        finally:
            if records:
                steps.append(("end", records[0].offset))

    runner._decode = told  # type: ignore[method-assign]
    async with Running(runner):
        await counted(metrics, name, "10 events processed", processed=10)
    assert await pool.fetchval("SELECT count(*) FROM effects") == 10
    # the next poll's records (whatever offset they start at) are read once the first's are
    next_read = next(i for i, (what, offset) in enumerate(steps) if what == "start" and offset)
    assert steps.index(("end", 0)) < next_read


async def waiting(  # type: ignore[no-untyped-def]
    infrastructure, pool, producer, topics, name: str, wait_ms: int
) -> tuple[ConsumerRunner, ServiceMetrics, str]:
    """A runner of consumer ``name`` on a new topic of one partition (its name the third),
    whose fetches wait up to ``wait_ms`` for a fuller fetch; its metrics."""
    topic = f"{name}-in"
    await ensure_topics(infrastructure.kafka_bootstrap, [topic], 1)
    metrics = ServiceMetrics()
    runner = runner_for(
        infrastructure,
        pool,
        producer,
        (topic, topics[1]),
        {"Counted": record_effect},
        metrics,
        name,
    )
    runner.fetch_wait_ms = wait_ms
    return runner, metrics, topic


async def test_records_arriving_close_together_wait_for_one_another_into_one_batch(
    infrastructure, pool, producer, topics, topic_prefix
):
    """A consumer's fetch waits up to ``fetch_wait_ms`` for more records: ten records sent
    50 ms apart to an idle consumer are handled in at most three batches (one transaction
    each, so one inbox time each): the first as it arrives (the consumer was idle), the next
    by the fetch the client had sent meanwhile, and the rest together; not one by one as the
    broker answers at the first record without the wait.  The last of them, too few to fill a
    fetch, is not held back for more."""

    async def batches(name: str, wait_ms: int) -> int:
        runner, metrics, topic = await waiting(
            infrastructure, pool, producer, topics, name, wait_ms
        )
        async with Running(runner):
            await eventually(lambda: asyncio.sleep(0, runner.assigned), what="assigned")
            await asyncio.sleep(0.5)  # its first fetch of the empty partition is out
            for n in range(10):
                await send(producer, topic, event(n))
                await asyncio.sleep(0.05)
            await counted(metrics, name, "all ten handled", processed=10)
        return int(
            await pool.fetchval(
                "SELECT count(DISTINCT processed_at) FROM inbox WHERE consumer = $1", name
            )
        )

    assert await batches(f"{topic_prefix}waits", 1000) <= 3
    assert await batches(f"{topic_prefix}at-once", 0) >= 5  # the case


async def test_an_idle_consumers_fetch_is_answered_at_the_first_record(
    infrastructure, pool, producer, topics, topic_prefix
):
    """The wait for a fuller fetch is for records that come one after another: a consumer
    that found nothing at its last poll asks for the first record, answered as it arrives.
    With a 20 s wait for a fuller fetch, a lone record to an idle consumer is handled within
    5 s (it waited the whole 20 s before: nothing filled the fetch)."""
    name = f"{topic_prefix}idle"
    runner, metrics, topic = await waiting(infrastructure, pool, producer, topics, name, 20_000)
    async with Running(runner):
        await eventually(lambda: asyncio.sleep(0, runner.assigned), what="assigned")
        await asyncio.sleep(1)  # idle: its fetch of the empty partition is out
        await send(producer, topic, event(1))
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "processed") == 1),
            timeout=5,
            what="the lone record handled",
        )


async def test_a_poison_records_error_text_stays_out_of_its_span(
    infrastructure, pool, producer, topics, topic_prefix
):
    """A driver's or library's message may quote the values it choked on (personal data): the
    span of a dead-lettered record carries the error's type, never its text nor a traceback."""
    name = f"{topic_prefix}g"
    marker = "eva.kovacs@example.hu"

    async def quoting(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        raise ValueError(f"Key (email)=({marker}) already exists")

    await send(producer, topics[0], event(1))
    exporter = InMemorySpanExporter()
    metrics = ServiceMetrics()
    runner = runner_for(infrastructure, pool, producer, topics, {"Counted": quoting}, metrics, name)
    runner.telemetry = setup_telemetry("test", exporter)
    async with Running(runner):
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "dead_lettered") == 1),
            what="the record dead-lettered",
        )
    (span,) = [s for s in exporter.get_finished_spans() if s.name == f"{topics[0]} process"]
    assert span.attributes is not None and span.attributes["error.type"] == "ValueError"
    assert span.attributes["complaints.outcome"] == "dead_lettered"
    told = repr(
        (
            dict(span.attributes),
            span.status.description,
            [(ev.name, dict(ev.attributes or {})) for ev in span.events],
        )
    )
    assert marker not in told and "Traceback" not in told


async def test_a_backlog_is_handled_under_one_span_and_each_handler_in_its_events_trace(
    infrastructure, pool, producer, topics, topic_prefix
):
    """A poll of more than TRACE_EACH_UP_TO events for handlers is one ``process`` span linked
    to the events' traces, and each handler runs in its event's context (what it appends
    carries that context on); a poll of a few gives each event its ``process`` span, a child of
    its record's context, under which its handler runs."""
    name = f"{topic_prefix}h"
    sender = setup_telemetry("sender").tracer
    sent: dict[int, SpanContext] = {}

    async def send_in_span(n: int) -> None:
        with sender.start_as_current_span("send") as sending:
            r = to_kafka_record(event(n), inject_context(sending))
        await producer.send_and_wait(topics[0], r.value, key=r.key, headers=r.headers)
        sent[n] = sending.get_span_context()

    seen: dict[int, tuple[SpanContext, str]] = {}  # n → handler's current span, what it appends

    async def handle(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        current = trace.get_current_span().get_span_context()
        seen[e.payload.n] = (current, current_trace_context()["traceparent"])

    backlog = TRACE_EACH_UP_TO + 8
    for n in range(backlog):
        await send_in_span(n)
    exporter = InMemorySpanExporter()
    metrics = ServiceMetrics()
    runner = runner_for(infrastructure, pool, producer, topics, {"Counted": handle}, metrics, name)
    runner.telemetry = setup_telemetry("test", exporter)
    async with Running(runner):
        await counted(metrics, name, "the backlog processed", processed=backlog)
        await send_in_span(backlog)
        await counted(metrics, name, "one more processed", processed=backlog + 1)

    spans = [s for s in exporter.get_finished_spans() if s.name == f"{topics[0]} process"]
    (batch,) = [s for s in spans if s.parent is None]
    assert batch.attributes["messaging.batch.message_count"] == backlog
    assert batch.attributes["complaints.processed"] == backlog
    assert {link.context.span_id for link in batch.links} == {
        sent[n].span_id for n in range(backlog)
    }
    for n in range(backlog):
        current, appended = seen[n]
        assert current.span_id == sent[n].span_id  # the event's own context
        assert appended.split("-")[1:3] == [f"{sent[n].trace_id:032x}", f"{sent[n].span_id:016x}"]
    (own,) = [s for s in spans if s.parent is not None]
    assert own.parent.span_id == sent[backlog].span_id
    assert own.attributes["complaints.outcome"] == "processed"
    current, appended = seen[backlog]
    assert current.span_id == own.context.span_id and current.trace_id == sent[backlog].trace_id


async def test_a_batch_handler_gets_a_polls_new_events_at_once_and_a_failing_one_poisons_only_it(
    infrastructure, pool, producer, topics, topic_prefix
):
    """A batch subscription's handler gets every new event of its types in one call, in order
    (a redelivered copy and other types left out); when it fails for one event, the batch is
    narrowed down record by record and only that record is dead-lettered.  A large batch is
    one span linked to its events' traces; a lone event's span is in its own trace."""
    name = f"{topic_prefix}b"
    calls: list[list[int]] = []

    async def handle(conn: asyncpg.Connection, events: Sequence[Event[Any]]) -> None:
        calls.append([e.payload.n for e in events])
        if any(e.payload.n == 13 for e in events):
            raise PoisonEvent("unlucky number")
        await conn.executemany(
            "INSERT INTO effects VALUES ($1, $2)", [(e.event_id, e.payload.n) for e in events]
        )

    sent = [event(n) for n in range(1, 41)]
    with setup_telemetry("sender").tracer.start_as_current_span("send") as sending:
        trace_headers = inject_context(sending)
    for e in [*sent[:5], sent[2], event(99, SomethingElse), *sent[5:]]:
        r = to_kafka_record(e, trace_headers)
        await producer.send_and_wait(topics[0], r.value, key=r.key, headers=r.headers)
    exporter = InMemorySpanExporter()
    metrics = ServiceMetrics()
    runner = ConsumerRunner(
        Subscription(name, (topics[0],), batch=Batch(frozenset({"Counted"}), handle)),
        infrastructure.kafka_bootstrap,
        pool,
        producer,
        setup_telemetry("test", exporter),
        metrics,
        dlq_topic=topics[1],
        retry=RetryPolicy(initial_delay=0.05, max_delay=0.2),
    )
    async with Running(runner):
        await counted(
            metrics,
            name,
            "39 events processed and one dead-lettered",
            processed=39,
            dead_lettered=1,
        )
    rows = await pool.fetch("SELECT n FROM effects ORDER BY n")
    assert [r["n"] for r in rows] == [n for n in range(1, 41) if n != 13]  # each once
    assert calls[0] == list(range(1, 41))  # the first poll: all at once, in order, once each
    assert outcome(metrics, name, "duplicate") == 1 and outcome(metrics, name, "ignored") == 1
    (dead,) = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    assert dead.key == str(sent[12].stream_id).encode()
    spans = [s for s in exporter.get_finished_spans() if s.name == f"{topics[0]} process"]
    trace_id = sending.get_span_context().trace_id
    (large,) = [
        s for s in spans if s.attributes["messaging.batch.message_count"] > TRACE_EACH_UP_TO
    ]
    assert large.parent is None and large.attributes["error.type"] == "PoisonEvent"
    assert len(large.links) == 41 and {link.context.trace_id for link in large.links} == {trace_id}
    lone = [s for s in spans if s.attributes["messaging.batch.message_count"] == 1]
    assert len(lone) == 41  # narrowed down: each record on its own, in the sender's trace
    assert {s.context.trace_id for s in lone} == {trace_id}
    told = sorted(s.attributes["complaints.outcome"] for s in lone)
    assert told == ["dead_lettered", "duplicate", *["processed"] * 39]


async def test_queued_writes_land_with_their_batch_and_a_failing_one_poisons_only_its_record(
    infrastructure, pool, producer, topics, topic_prefix
):
    """Handlers' queued writes go out together before the batch commits; when one of them
    fails, the batch is narrowed down record by record: that record is dead-lettered (no inbox
    row, no effect) and every other one takes effect once."""
    name = f"{topic_prefix}g"
    await pool.execute("ALTER TABLE effects ADD CONSTRAINT not_13 CHECK (n <> 13)")

    async def queued(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await write(conn, "INSERT INTO effects VALUES ($1, $2)", e.event_id, e.payload.n)
        await write(conn, "UPDATE effects SET n = n * 10 WHERE event_id = $1", e.event_id)

    sent = [event(1), event(13), event(2), event(3)]
    for e in sent:
        await send(producer, topics[0], e)
    metrics = ServiceMetrics()
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": queued}, metrics, name)
    ):
        await eventually(
            lambda: asyncio.sleep(
                0,
                outcome(metrics, name, "processed") == 3
                and outcome(metrics, name, "dead_lettered") == 1,
            ),
            what="three events processed and the failing one dead-lettered",
        )
    rows = await pool.fetch("SELECT n FROM effects ORDER BY n")
    assert [r["n"] for r in rows] == [10, 20, 30]  # each insert, then its update, in order
    assert (
        await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", sent[1].event_id) == 0
    )
    dead = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    assert decode_headers(dead[0].headers)["ce_id"] == str(sent[1].event_id)


async def test_a_handler_reads_the_writes_earlier_handlers_of_its_batch_queued(
    infrastructure, pool, producer, topics, topic_prefix
):
    """A queued write is sent before the next statement of the batch: a handler reading the
    table sees what the records before it queued, in order, as if written at once."""
    name = f"{topic_prefix}g"
    seen: dict[int, int] = {}

    async def read_then_queue(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        seen[e.payload.n] = await conn.fetchval("SELECT coalesce(sum(n), 0) FROM effects")
        await write(conn, "INSERT INTO effects VALUES ($1, $2)", e.event_id, e.payload.n)

    stream = uuid.uuid4()  # one partition: one batch, in this order
    for n in (1, 2, 4, 8):
        await send(producer, topics[0], event(n, stream=stream))
    metrics = ServiceMetrics()
    async with Running(
        runner_for(
            infrastructure, pool, producer, topics, {"Counted": read_then_queue}, metrics, name
        )
    ):
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "processed") == 4),
            what="four events processed",
        )
    assert seen == {1: 0, 2: 1, 4: 3, 8: 7}  # each saw every earlier record's write
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects ORDER BY n")] == [1, 2, 4, 8]


async def test_a_queued_write_failing_at_a_later_handlers_read_poisons_its_own_record(
    infrastructure, pool, producer, topics, topic_prefix
):
    """The write fails when the next record's handler reads: the record that queued it is
    dead-lettered, and the reader takes effect."""
    name = f"{topic_prefix}g"
    await pool.execute("ALTER TABLE effects ADD CONSTRAINT not_13 CHECK (n <> 13)")

    async def read_then_queue(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await conn.fetchval("SELECT count(*) FROM effects")
        await write(conn, "INSERT INTO effects VALUES ($1, $2)", e.event_id, e.payload.n)

    stream = uuid.uuid4()
    sent = [event(n, stream=stream) for n in (1, 13, 4)]
    for e in sent:
        await send(producer, topics[0], e)
    metrics = ServiceMetrics()
    async with Running(
        runner_for(
            infrastructure, pool, producer, topics, {"Counted": read_then_queue}, metrics, name
        )
    ):
        await eventually(
            lambda: asyncio.sleep(
                0,
                outcome(metrics, name, "processed") == 2
                and outcome(metrics, name, "dead_lettered") == 1,
            ),
            what="two events processed and the failing one dead-lettered",
        )
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects ORDER BY n")] == [1, 4]
    dead = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    assert decode_headers(dead[0].headers)["ce_id"] == str(sent[1].event_id)


async def test_deferred_items_reach_their_work_together_in_order_with_the_batchs_writes(
    infrastructure, pool, producer, topics, topic_prefix
):
    """Items deferred by consecutive handlers reach their work in one call, in order; a
    handler's read sends what was deferred before it first, and sees it; what the work queues
    lands before the writes that later handlers queued."""
    name = f"{topic_prefix}g"
    calls: list[list[int]] = []
    seen: list[int] = []

    async def insert_all(conn: asyncpg.Connection, items: list[tuple[uuid.UUID, int]]) -> None:
        calls.append([n for _, n in items])
        for event_id, n in items:
            await write(conn, "INSERT INTO effects VALUES ($1, $2)", event_id, n)

    async def deferring(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await defer(conn, insert_all, (e.event_id, e.payload.n))

    async def scaling(conn: asyncpg.Connection, e: Event[SomethingElse]) -> None:
        if e.payload.n == 0:
            seen.append(await conn.fetchval("SELECT coalesce(sum(n), 0) FROM effects"))
        await write(conn, "UPDATE effects SET n = n * 10")

    stream = uuid.uuid4()  # one partition: one batch, in this order
    sent = [
        event(1, stream=stream),
        event(2, stream=stream),
        event(0, SomethingElse, stream),  # reads, then scales
        event(3, stream=stream),
        event(4, stream=stream),
        event(7, SomethingElse, stream),  # scales
    ]
    for e in sent:
        await send(producer, topics[0], e)
    metrics = ServiceMetrics()
    handlers = {"Counted": deferring, "SomethingElse": scaling}
    async with Running(runner_for(infrastructure, pool, producer, topics, handlers, metrics, name)):
        await counted(metrics, name, "six events processed", processed=6)
    assert calls == [[1, 2], [3, 4]]
    assert seen == [3]  # the first two items' work, sent before the read
    rows = await pool.fetch("SELECT n FROM effects ORDER BY n")
    # 1 and 2 scaled twice; 3 and 4, inserted by the work before the last write, once
    assert [r["n"] for r in rows] == [30, 40, 100, 200]


async def test_a_deferred_item_that_fails_poisons_only_its_record(
    infrastructure, pool, producer, topics, topic_prefix
):
    """The work fails for the items deferred together: the batch is narrowed down record by
    record, the failing item's record is dead-lettered and the others take effect once."""
    name = f"{topic_prefix}g"
    await pool.execute("ALTER TABLE effects ADD CONSTRAINT not_13 CHECK (n <> 13)")
    calls: list[list[int]] = []

    async def insert_all(conn: asyncpg.Connection, items: list[tuple[uuid.UUID, int]]) -> None:
        calls.append([n for _, n in items])
        await conn.executemany("INSERT INTO effects VALUES ($1, $2)", items)

    async def deferring(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await defer(conn, insert_all, (e.event_id, e.payload.n))

    stream = uuid.uuid4()
    sent = [event(n, stream=stream) for n in (1, 13, 2)]
    for e in sent:
        await send(producer, topics[0], e)
    metrics = ServiceMetrics()
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": deferring}, metrics, name)
    ):
        await counted(
            metrics, name, "two processed, one dead-lettered", processed=2, dead_lettered=1
        )
    assert calls == [[1, 13, 2], [1], [13], [2]]
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects ORDER BY n")] == [1, 2]
    dead = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    assert decode_headers(dead[0].headers)["ce_id"] == str(sent[1].event_id)


async def test_deferred_work_outside_a_batch_is_done_at_once(pool):
    """Outside a consumer's batch (a re-drive, a script) a deferred item is worked on at once."""
    calls: list[list[int]] = []

    async def work(conn: asyncpg.Connection, items: list[int]) -> None:
        calls.append(items)

    async with pool.acquire() as conn:
        await defer(conn, work, 5)
    assert calls == [[5]]


def lag_of(metrics: ServiceMetrics, consumer: str, topic: str) -> Callable[[], float | None]:
    """Reads ``complaints_consumer_lag`` of the topic's one partition, as ``/metrics`` shows
    it (``None``: no series)."""
    labels = {"consumer": consumer, "topic": topic, "partition": "0"}
    return lambda: metrics.registry.get_sample_value("complaints_consumer_lag", labels)


def holding(at: int | None = None) -> tuple[Any, asyncio.Event, asyncio.Event]:
    """A handler that stops at the record numbered ``at`` (at the first, for ``None``) until
    let go; the event set once it is there, and the one that lets it go."""
    inside, go_on = asyncio.Event(), asyncio.Event()

    async def handle(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        if at is None or e.payload.n == at:
            inside.set()
            await go_on.wait()

    return handle, inside, go_on


async def test_a_partitions_lag_counts_the_records_not_handled_yet_down_to_zero(
    infrastructure, pool, producer, topics, topic_prefix
):
    """Operators watch a backlog drain: after each batch, the records of the partition that
    are not handled yet (the second batch in flight is not), then 0 once all are."""
    name = f"{topic_prefix}lag"
    stream = uuid.uuid4()  # one partition
    for n in range(12):
        await send(producer, topics[0], event(n, stream=stream))
    handle, inside, go_on = holding(at=4)  # the first of the second batch
    metrics = ServiceMetrics()
    runner = runner_for(infrastructure, pool, producer, topics, {"Counted": handle}, metrics, name)
    runner.max_poll_records = 4

    lag = lag_of(metrics, name, topics[0])

    async with Running(runner):
        await asyncio.wait_for(inside.wait(), 30)
        assert lag() == 8  # the first batch handled; the second in flight counts
        go_on.set()
        await counted(metrics, name, "all twelve", processed=12)
        await eventually(lambda: asyncio.sleep(0, lag() == 0), what="the lag to reach 0")


async def test_a_partition_with_nothing_to_read_shows_a_lag_of_zero(
    infrastructure, pool, producer, topics, topic_prefix
):
    """An alert on the lag needs the series: a consumer that takes over a partition with
    nothing in it shows 0 there, not nothing."""
    name = f"{topic_prefix}lag-idle"
    metrics = ServiceMetrics()
    runner = runner_for(infrastructure, pool, producer, topics, {}, metrics, name)

    lag = lag_of(metrics, name, topics[0])

    async with Running(runner):
        await eventually(lambda: asyncio.sleep(0, lag() == 0), what="a lag of 0")


async def test_a_batch_that_takes_long_shows_its_partitions_lag_growing_meanwhile(
    infrastructure, pool, producer, topics, topic_prefix
):
    """The first batch after a start cannot finish (its handler waits, as a batch retries while
    the database is away): the partition's lag shows at once, before any record is handled,
    and grows with the records that arrive meanwhile; then drains to 0."""
    name = f"{topic_prefix}lag-stuck"
    stream = uuid.uuid4()  # one partition
    for n in range(4):
        await send(producer, topics[0], event(n, stream=stream))
    handle, inside, go_on = holding()
    metrics = ServiceMetrics()
    runner = runner_for(infrastructure, pool, producer, topics, {"Counted": handle}, metrics, name)
    runner.max_poll_records = 4
    runner.lag_refresh_seconds = 0.3

    lag = lag_of(metrics, name, topics[0])

    async with Running(runner):
        await asyncio.wait_for(inside.wait(), 30)
        assert lag() == 4  # the batch in flight, nothing handled yet
        for n in range(4, 10):
            await send(producer, topics[0], event(n, stream=stream))
        await eventually(lambda: asyncio.sleep(0, lag() == 10), what="the lag to reach 10")
        go_on.set()
        await counted(metrics, name, "all ten", processed=10)
        await eventually(lambda: asyncio.sleep(0, lag() == 0), what="the lag to reach 0")


async def test_during_a_database_outage_the_lag_grows_with_what_arrives(
    infrastructure, database, producer, topics, topic_prefix
):
    """The consumer's database goes away (its connections cut): the batch taken retries, and
    the lag counts it and what arrives behind it; once the database is back, all is handled
    and the lag drains to 0."""
    name = f"{topic_prefix}lag-outage"
    proxy = await TcpProxy("127.0.0.1", urllib.parse.urlsplit(database).port or 5432).restore()
    pool = await migrated_pool(behind(proxy, database), server_password())
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE effects (event_id uuid, n int)")
    stream = uuid.uuid4()  # one partition
    metrics = ServiceMetrics()
    runner = runner_for(
        infrastructure, pool, producer, topics, {"Counted": record_effect}, metrics, name
    )
    runner.max_poll_records = 4
    runner.lag_refresh_seconds = 0.3

    lag = lag_of(metrics, name, topics[0])

    try:
        async with Running(runner):
            for n in range(2):
                await send(producer, topics[0], event(n, stream=stream))
            await counted(metrics, name, "the first two", processed=2)
            await eventually(lambda: asyncio.sleep(0, lag() == 0), what="a lag of 0")
            await proxy.cut()
            for n in range(2, 10):
                await send(producer, topics[0], event(n, stream=stream))
            await eventually(lambda: asyncio.sleep(0, lag() == 8), what="the lag to reach 8")
            assert outcome(metrics, name, "processed") == 2
            assert metrics.consumer_retries.labels(name)._value.get() > 0
            await proxy.restore()
            await counted(metrics, name, "all ten", processed=10)
            await eventually(lambda: asyncio.sleep(0, lag() == 0), what="the lag to drain")
    finally:
        if proxy._server is None:  # cut: the pool closes its connections through it
            await proxy.restore()
        await pool.close()
        await proxy.cut()


async def test_transient_errors_are_retried_with_backoff_and_take_effect_once(
    infrastructure, pool, producer, topics, topic_prefix, consume
):
    name = f"{topic_prefix}g"
    failures = {"left": 3}

    async def flaky(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await record_effect(conn, e)  # written, then rolled back with the failure
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("database went away")

    await send(producer, topics[0], event(5))
    metrics = await consume(name, flaky, "the event to be processed after the retries")
    assert metrics.consumer_retries.labels(name)._value.get() == 3
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects")] == [5]
    assert outcome(metrics, name, "dead_lettered") == 0


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "not prepared"])
async def test_a_batchs_keys_to_seal_with_are_looked_up_at_once_for_handlers_appending_to_it(
    infrastructure, pool, producer, topics, topic_prefix, prepared
):
    """Handlers that append personal values to their events' streams, which another process
    registered (resolution's cases of intake's complaints): with the subscription saying so,
    the batch's keys are looked up in one statement as it is read, and no append asks; else
    each append asks on its own."""
    master = load_master_key(new_master_key())
    theirs = PostgresKeyring(pool, master)
    await theirs.migrate()
    streams = [uuid.uuid4() for _ in range(6)]
    for i, stream in enumerate(streams):
        await theirs.register(stream, f"customer-{i}")  # as intake does
    lookups: list[str] = []
    ours = PostgresKeyring(cast(Any, CountingPool(pool, lookups)), master)
    store = PostgresEventStore(source="/complaints/test", topic=f"{topic_prefix}own", keyring=ours)

    async def append(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await store.append(
            conn, e.stream_id, 0, [Confided(n=e.payload.n, secret=f"s{e.payload.n}")]
        )

    for i, stream in enumerate(streams):
        await send(producer, topics[0], event(i, stream=stream))
    name = f"{topic_prefix}sealing"
    metrics = ServiceMetrics()
    runner = runner_for(
        infrastructure,
        pool,
        producer,
        topics,
        {"Counted": append},
        metrics,
        name,
        keyring=ours,
        appends_to_their_streams=prepared,
    )
    async with Running(runner):
        await counted(metrics, name, "the appends", processed=len(streams))
    looked_up_alone = lookups.count("fetchrow")
    assert looked_up_alone == (0 if prepared else len(streams))
    assert ("fetch" in lookups) == prepared  # the batch's, at once
    for i, stream in enumerate(streams):
        (appended,) = await store.load(pool, stream)
        assert isinstance(appended.payload, Confided) and appended.payload.secret == f"s{i}"


async def test_events_without_a_handler_are_acknowledged_without_effect(
    infrastructure, pool, producer, topics, topic_prefix, consume
):
    name = f"{topic_prefix}g"
    await send(producer, topics[0], event(1, type_=SomethingElse))
    await send(producer, topics[0], event(2))
    metrics = await consume(name, record_effect, "the handled event")
    assert outcome(metrics, name, "ignored") == 1
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects")] == [2]


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.DiskFullError("could not extend file"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        asyncpg.LockNotAvailableError("could not obtain lock"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_infrastructure_failures_are_retried_not_dead_lettered(
    infrastructure, pool, producer, topics, topic_prefix, failure, consume
):
    """A disk-full or a failover says nothing about the event: it waits, it is not parked."""
    name = f"{topic_prefix}g"
    failures = {"left": 2}

    async def hit(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await record_effect(conn, e)
        if failures["left"]:
            failures["left"] -= 1
            raise failure

    await send(producer, topics[0], event(3))
    metrics = await consume(name, hit, "the event after the infrastructure came back")
    assert outcome(metrics, name, "dead_lettered") == 0
    assert metrics.consumer_retries.labels(name)._value.get() == 2
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects")] == [3]


async def test_a_cancelled_statement_is_retried(
    infrastructure, pool, producer, topics, topic_prefix, consume
):
    """A real ``statement_timeout`` (SQLSTATE 57014) on the first try."""
    name = f"{topic_prefix}g"
    tries = {"n": 0}

    async def slow_once(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        tries["n"] += 1
        if tries["n"] == 1:
            await conn.execute("SET LOCAL statement_timeout = 10")
            await conn.execute("SELECT pg_sleep(1)")
        await record_effect(conn, e)

    await send(producer, topics[0], event(4))
    metrics = await consume(name, slow_once, "the event after the cancelled statement")
    assert outcome(metrics, name, "dead_lettered") == 0
    assert [r["n"] for r in await pool.fetch("SELECT n FROM effects")] == [4]


async def test_a_record_that_fails_at_commit_is_parked_and_the_others_take_effect(
    infrastructure, pool, producer, topics, topic_prefix
):
    """A deferred constraint fails at COMMIT, outside any handler: the batch is narrowed down
    to the record that caused it, and the consumer keeps running."""
    name = f"{topic_prefix}g"
    await pool.execute(
        "CREATE TABLE claims (n int, CONSTRAINT one_claim UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)"
    )
    await pool.execute("INSERT INTO claims VALUES (13)")

    async def claim(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        await conn.execute("INSERT INTO claims VALUES ($1)", e.payload.n)
        await record_effect(conn, e)

    events = [event(1), event(13), event(2)]
    for e in events:
        await send(producer, topics[0], e)
    metrics = ServiceMetrics()
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": claim}, metrics, name)
    ) as running:
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "dead_lettered") == 1),
            what="the record that fails at commit to be parked",
        )
        await send(producer, topics[0], event(3))
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 1 FROM effects WHERE n = 3"),
            what="the consumer to keep running after it",
        )
        assert running.assigned
    assert sorted(r["n"] for r in await pool.fetch("SELECT n FROM effects")) == [1, 2, 3]
    (dead,) = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    headers = decode_headers(dead.headers)
    assert headers["dlq_error_type"] == "UniqueViolationError"
    assert headers["ce_id"] == str(events[1].event_id)


async def test_one_poll_of_several_partitions_is_one_transaction_and_a_poison_record_stops_none(
    infrastructure, pool, producer, topic_prefix
):
    """Records waiting on three partitions arrive in one poll and take effect in one database
    transaction; a poison record on one partition is parked, and every partition's good
    records still take effect once and have their offsets committed."""
    name = f"{topic_prefix}g"
    topics = (f"{topic_prefix}in3", f"{topic_prefix}dlq3")
    await ensure_topics(infrastructure.kafka_bootstrap, list(topics), 3)
    await pool.execute("ALTER TABLE effects ADD COLUMN tx bigint")

    async def picky(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        if e.payload.n == 13:
            raise PoisonEvent("unlucky number")
        await conn.execute(
            "INSERT INTO effects VALUES ($1, $2, txid_current())", e.event_id, e.payload.n
        )

    sent: dict[int, int] = {}  # partition -> records on it
    for n in [*range(1, 13), 13, *range(14, 31)]:
        r = to_kafka_record(event(n))
        meta = await producer.send_and_wait(topics[0], r.value, key=r.key, headers=r.headers)
        sent[meta.partition] = sent.get(meta.partition, 0) + 1
    assert len(sent) == 3  # thirty streams' keys spread over every partition

    metrics = ServiceMetrics()
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": picky}, metrics, name)
    ):
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "processed") == 29),
            what="every good record of every partition",
        )
    rows = await pool.fetch("SELECT n, tx FROM effects")
    assert sorted(r["n"] for r in rows) == [n for n in range(1, 31) if n != 13]
    # one transaction per poll, not per partition (one per partition: 3; the first poll
    # normally brings all three, but the broker may answer a partition's fetch later)
    assert len({r["tx"] for r in rows}) < len(sent)
    assert outcome(metrics, name, "dead_lettered") == 1
    (dead,) = await read_topic(infrastructure.kafka_bootstrap, topics[1], count=1)
    assert decode_headers(dead.headers)["dlq_error_message"] == "unlucky number"
    admin = AIOKafkaConsumer(bootstrap_servers=infrastructure.kafka_bootstrap, group_id=name)
    await admin.start()
    try:
        committed = {p: await admin.committed(TopicPartition(topics[0], p)) for p in sent}
    finally:
        await admin.stop()
    assert committed == sent  # each partition's next offset: past all of its records


async def test_a_commit_for_a_revoked_partition_does_not_stop_the_consumer(
    infrastructure, pool, producer, topics, topic_prefix
):
    """The partition went to another member while its batch ran: the commit is dropped (the
    new owner redelivers; the inbox keeps it single) and the consumer goes on."""
    runner = runner_for(infrastructure, pool, producer, topics, {}, None, f"{topic_prefix}g")

    class Revoked:
        async def commit(self, offsets: object) -> None:
            raise IllegalStateError("Partition is not assigned")

    await runner._commit(Revoked(), {TopicPartition(topics[0], 0): 5})  # type: ignore[arg-type]


async def test_parked_records_are_listed_and_replayed_into_their_consumer_once(
    infrastructure, pool, producer, topics, topic_prefix
):
    """Re-drive: after the cause is fixed, the parked record is replayed through the same
    path as a live one; a second replay changes nothing."""
    name = f"{topic_prefix}g"
    fixed = {"yet": False}

    async def until_fixed(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        if e.payload.n == 13 and not fixed["yet"]:
            raise PoisonEvent("a reference that does not exist yet")
        await record_effect(conn, e)

    bad, good = event(13), event(1)
    for e in (bad, good):
        await send(producer, topics[0], e)
    metrics = ServiceMetrics()
    runner = runner_for(
        infrastructure, pool, producer, topics, {"Counted": until_fixed}, metrics, name
    )
    async with Running(runner):
        await eventually(
            lambda: asyncio.sleep(0, outcome(metrics, name, "dead_lettered") == 1),
            what="the record to be parked",
        )
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 1 FROM effects"), what="the good record"
        )
    runners = {name: runner}
    bootstrap = infrastructure.kafka_bootstrap
    (listed,) = await redrive.dead_letters(runners, bootstrap, topics[1])
    parked, status = listed
    assert status == "parked"
    assert (parked.event_id, parked.event_type) == (str(bad.event_id), "complaints.test.Counted")
    assert (parked.record.topic, parked.record.offset) == (topics[0], 0)
    assert parked.error_message == "a reference that does not exist yet"

    still = await redrive.replay(runners, bootstrap, topics[1])  # not fixed yet: parked anew
    assert (still.replayed, still.taken_in, still.still_parked) == (1, 0, 1)
    fixed["yet"] = True
    done = await redrive.replay(runners, bootstrap, topics[1])
    assert (done.replayed, done.taken_in) == (1, 1)
    again = await redrive.replay(runners, bootstrap, topics[1])
    assert again.replayed == 0
    assert sorted(r["n"] for r in await pool.fetch("SELECT n FROM effects")) == [1, 13]
    statuses = await redrive.dead_letters(runners, bootstrap, topics[1])
    assert [s for _, s in statuses] == ["replayed"]


async def test_a_rebuild_waits_for_the_batch_in_flight_and_the_consumer_replays_from_offset_0(
    infrastructure, pool, producer, topics, topic_prefix
):
    """Starting a consumer over (in the transaction that clears its inbox and projections)
    waits for a batch in flight, so nothing of the old generation commits after the reset; the
    running consumer then rejoins under a new group and replays every record once."""
    name = f"{topic_prefix}g"
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(conn: asyncpg.Connection, e: Event[Counted]) -> None:
        if e.payload.n == 2 and not release.is_set():
            entered.set()
            await release.wait()
        await record_effect(conn, e)

    for n in (1, 2):
        await send(producer, topics[0], event(n))
    metrics = ServiceMetrics()
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": slow}, metrics, name)
    ) as runner:
        await asyncio.wait_for(entered.wait(), 30)
        reset = asyncio.create_task(start_over_effects(pool, name))
        await asyncio.sleep(0.5)
        assert not reset.done(), "the reset must wait for the batch in flight"
        release.set()
        await asyncio.wait_for(reset, 10)
        assert await pool.fetchval("SELECT count(*) FROM effects") == 0

        await send(producer, topics[0], event(3))
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 3 FROM effects"),
            what="every record replayed once under the new generation",
        )
        assert runner.generation == 1
    rows = await pool.fetch("SELECT n, count(*) AS c FROM effects GROUP BY n ORDER BY n")
    assert [(r["n"], r["c"]) for r in rows] == [(1, 1), (2, 1), (3, 1)]


async def idle_after_one(  # type: ignore[no-untyped-def]
    infrastructure, pool, producer, topics, metrics, name
) -> ConsumerRunner:
    """A runner of ``name`` with one record to handle, whose idle poll outlasts a test unless
    it is cut short."""
    await send(producer, topics[0], event(1))
    runner = runner_for(
        infrastructure, pool, producer, topics, {"Counted": record_effect}, metrics, name
    )
    runner.idle_poll_ms = 120_000
    return runner


async def start_over_effects(pool: asyncpg.Pool, name: str) -> None:
    """A rebuild of consumer ``name``: started over, its inbox and effects cleared."""
    async with pool.acquire() as conn, conn.transaction():
        await start_over(conn, name)
        await conn.execute("DELETE FROM inbox WHERE consumer = $1", name)
        await conn.execute("DELETE FROM effects")


async def test_an_idle_consumer_told_of_a_rebuild_in_its_process_starts_over_at_once(
    infrastructure, pool, producer, topics, topic_prefix, caplog
):
    """``check_generation_soon`` (the rebuild's own replica) ends a consumer's idle poll at
    once: it starts over under the new generation (and says which) without waiting for the
    poll to time out, and a poll cut short loses no record."""
    caplog.set_level(logging.INFO, logger="complaints_shared.consumer")
    name = f"{topic_prefix}g"
    metrics = ServiceMetrics()
    runner = await idle_after_one(infrastructure, pool, producer, topics, metrics, name)
    async with Running(runner):
        await counted(metrics, name, "the first record handled", processed=1)
        await asyncio.sleep(0.5)  # idle: waiting for records in a poll

        runner.check_generation_soon()  # no rebuild: the generation stands, the poll goes on
        await asyncio.sleep(0.5)
        await send(producer, topics[0], event(2))
        await counted(metrics, name, "a record sent after a poll cut short", processed=2)
        await asyncio.sleep(0.5)

        await start_over_effects(pool, name)
        runner.check_generation_soon()
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 2 FROM effects"),
            timeout=20,
            what="both records replayed under the new generation, within the idle poll",
        )
        assert runner.generation == 1
    rows = await pool.fetch("SELECT n, count(*) AS c FROM effects GROUP BY n ORDER BY n")
    assert [(r["n"], r["c"]) for r in rows] == [(1, 1), (2, 1)]
    said = [r.getMessage() for r in caplog.records if "starting over" in r.getMessage()]
    assert said == [f"consumer {name}: starting over as generation 1"]


async def test_an_idle_replica_elsewhere_hears_of_a_rebuild_and_starts_over_at_once(
    infrastructure, pool, database, producer, topics, topic_prefix
):
    """A rebuild's transaction notifies (``start_over``): a replica in another process, which
    nobody tells directly, hears it through ``watch_generations`` when it commits and starts
    over within its idle poll.  A rebuild committed while no watch listened is noticed when
    one connects."""
    name = f"{topic_prefix}g"
    metrics = ServiceMetrics()
    runner = await idle_after_one(infrastructure, pool, producer, topics, metrics, name)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database)

    async def listening() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN %generation%'"
            )
        )

    @contextlib.asynccontextmanager
    async def watching() -> AsyncIterator[None]:
        watch = asyncio.create_task(watch_generations(connect, [runner]))
        try:
            yield
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def replayed(generation: int, what: str) -> None:
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 1 FROM effects"), timeout=20, what=what
        )
        assert runner.generation == generation

    async with Running(runner):
        await counted(metrics, name, "the first record handled", processed=1)
        async with watching():
            await eventually(listening, what="the watch to listen")
            await asyncio.sleep(0.5)  # idle again after the watch's first check
            await start_over_effects(pool, name)
            await replayed(1, "the record replayed under the new generation, within the poll")

        await asyncio.sleep(0.5)
        await start_over_effects(pool, name)  # nobody listens
        await asyncio.sleep(1)
        assert runner.generation == 1, "no watch listened: the idle poll goes on"
        async with watching():
            await replayed(2, "the rebuild missed noticed once a watch connects")


class Stalls:
    """A consumer runner on the real broker whose Kafka consumers are kept (``made``), with a
    short ``stall_timeout``; ``stall_lookup`` makes the first one lose its group coordinator
    for good, as a client can after a broker restart (its lookup never returns), and
    ``stall_commits`` makes its offset commits never finish."""

    def __init__(self, runner: ConsumerRunner, made: list[AIOKafkaConsumer]) -> None:
        self.runner = runner
        self.made = made
        self.released = asyncio.Event()  # at the end, so the abandoned client can close

    async def _never(self) -> None:
        await self.released.wait()

    def stall_lookup(self) -> None:
        stalled = self.made[0]
        lookup = stalled._client.coordinator_lookup

        async def never_returns(*args: object, **kwargs: object) -> object:
            await self._never()
            return await lookup(*args, **kwargs)

        stalled._client.coordinator_lookup = never_returns  # type: ignore[method-assign]
        stalled._coordinator.coordinator_dead()

    def stall_commits(self) -> None:
        coordinator = self.made[0]._coordinator
        commit = coordinator.commit_offsets

        async def never_finishes(*args: object, **kwargs: object) -> None:
            await self._never()
            await commit(*args, **kwargs)

        coordinator.commit_offsets = never_finishes  # type: ignore[method-assign]


@pytest.fixture
def stalls(infrastructure, pool, producer, topics, topic_prefix, monkeypatch) -> Stalls:  # type: ignore[no-untyped-def]
    made: list[AIOKafkaConsumer] = []

    class Recorded(AIOKafkaConsumer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            # the new consumer's group waits for the stalled member's session to end at the
            # broker: the shortest session it allows (``group.min.session.timeout.ms``), not
            # the client's default of 10 s
            kwargs.setdefault("session_timeout_ms", 6000)
            kwargs.setdefault("heartbeat_interval_ms", 2000)
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", Recorded)
    monkeypatch.setattr(consumer_module, "STOP_SECONDS", 1.0)
    runner = runner_for(
        infrastructure,
        pool,
        producer,
        topics,
        {"Counted": record_effect},
        ServiceMetrics(),
        f"{topic_prefix}g",
    )
    runner.stall_timeout = 2.0
    return Stalls(runner, made)


async def effects(pool: asyncpg.Pool) -> list[tuple[int, int]]:
    rows = await pool.fetch("SELECT n, count(*) AS c FROM effects GROUP BY n ORDER BY n")
    return [(r["n"], r["c"]) for r in rows]


@pytest.mark.parametrize(
    "stall",
    [
        # the client lost its group coordinator for good: the fetches go on without it, every
        # offset commit waits for it
        "lookup",
        # the coordinator is known, but the commit does not come back
        "commits",
    ],
)
async def test_a_stalled_consumer_is_started_over_while_records_flow(
    pool, producer, topics, stalls, stall
):
    """Records keep arriving at a consumer whose Kafka client has stalled: after
    ``stall_timeout`` a new Kafka consumer takes the partition over; the uncommitted record
    comes again and has no second effect."""
    async with Running(stalls.runner):
        try:
            await send(producer, topics[0], event(1))
            await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM effects"))
            getattr(stalls, f"stall_{stall}")()
            await send(producer, topics[0], event(2))
            await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM effects"))
            await eventually(
                lambda: asyncio.sleep(0, len(stalls.made) >= 2),
                timeout=20,
                what="a new Kafka consumer to take over from the stalled one",
            )
            await send(producer, topics[0], event(3))
            await eventually(
                lambda: pool.fetchval("SELECT count(*) = 3 FROM effects"),
                what="the event after the stall to take effect",
            )
            await asyncio.sleep(1)  # a redelivery of the uncommitted batch would land by now
        finally:
            stalls.released.set()
    assert await effects(pool) == [(1, 1), (2, 1), (3, 1)]


async def test_an_idle_consumer_whose_client_lost_its_coordinator_is_started_over(
    pool, producer, topics, stalls
):
    """With nothing to commit, the lost coordinator is noticed all the same: the consumer is
    started over before the next record arrives, not when its commit hangs."""
    async with Running(stalls.runner):
        try:
            await send(producer, topics[0], event(1))
            await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM effects"))
            stalls.stall_lookup()
            await eventually(
                lambda: asyncio.sleep(0, len(stalls.made) >= 2),
                timeout=20,
                what="a new Kafka consumer while no record arrives",
            )
            await send(producer, topics[0], event(2))
            await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM effects"))
        finally:
            stalls.released.set()
    assert await effects(pool) == [(1, 1), (2, 1)]


async def test_a_consumer_cancelled_as_its_commit_comes_back_stops(
    infrastructure, pool, producer, topics, topic_prefix
):
    """The service stops (its tasks are cancelled) just as an offset commit comes back: the
    cancellation is not lost to the commit's timeout, so the consumer stops and the shutdown
    does not wait for it forever."""
    runner = runner_for(infrastructure, pool, producer, topics, {}, None, f"{topic_prefix}g")
    answered = asyncio.get_running_loop().create_future()

    class Committing:
        async def commit(self, offsets: object) -> None:
            await answered

    committing = asyncio.create_task(
        runner._commit(Committing(), {TopicPartition(topics[0], 0): 5})  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.01)  # waiting for the broker's answer
    answered.set_result(None)
    committing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await committing


@pytest.fixture
def slow_commits(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Kafka consumers whose offset commits take a second to come back; what they did, in
    order ("sent", "answered")."""
    commits: list[str] = []

    class SlowCommits(AIOKafkaConsumer):
        async def commit(self, offsets: Any = None) -> None:
            commits.append("sent")
            await asyncio.sleep(1.0)  # the broker is slow to answer
            await super().commit(offsets)
            commits.append("answered")

    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", SlowCommits)
    return commits


async def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await admin.start()
    try:
        offset: int | None = await admin.committed(tp)
        return offset
    finally:
        await admin.stop()


async def test_a_consumer_stopping_lets_its_offset_commit_in_flight_finish(
    infrastructure, pool, producer, topics, topic_prefix, slow_commits
):
    """A batch's offset commit runs while the next batch is handled.  A consumer stopped while
    one is still on its way waits for it: the records it handled are not delivered again."""
    name = f"{topic_prefix}g"
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": record_effect}, None, name)
    ):
        await send(producer, topics[0], event(1))
        await eventually(lambda: asyncio.sleep(0, slow_commits == ["sent"]), what="the commit sent")
    assert slow_commits == ["sent", "answered"]
    bootstrap = infrastructure.kafka_bootstrap
    assert await committed_offset(bootstrap, name, TopicPartition(topics[0], 0)) == 1


async def test_a_consumer_stopping_while_it_waits_for_the_commit_before_lets_it_finish(
    infrastructure, pool, producer, topics, topic_prefix, slow_commits
):
    """The next batch was handled while the commit before it was on its way; the consumer
    stops as it waits for that commit to send its own: the commit still finishes."""
    name = f"{topic_prefix}g"
    async with Running(
        runner_for(infrastructure, pool, producer, topics, {"Counted": record_effect}, None, name)
    ):
        await send(producer, topics[0], event(1))
        await eventually(lambda: asyncio.sleep(0, slow_commits == ["sent"]), what="the commit sent")
        await send(producer, topics[0], event(2))
        await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM effects"))
        assert slow_commits == ["sent"]  # the second batch waits for the first one's commit
    assert slow_commits == ["sent", "answered"]
    bootstrap = infrastructure.kafka_bootstrap
    assert await committed_offset(bootstrap, name, TopicPartition(topics[0], 0)) == 1
