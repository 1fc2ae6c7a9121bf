"""Benchmarks of the platform's hot paths, each against a baseline measured in the same run.

    ./dev bench [--events N] [--seconds S] [--workers N] [--complaints N] [--messages N]
                [--only STAGE,...] [--json PATH]

Stages (``--only`` picks some; all by default):

- ``append``: N single-event appends (personal data sealed with the stream's key, which this
  process registered, as intake appends; outbox row; the relay's wake-up after the commit, as
  in the services' units of work) with 8 writers, against raw asyncpg inserting the same event
  and outbox rows, one transaction each, with the same 8 connections, and against the
  ``eventsourcing`` library's PostgreSQL application recorder appending the same events with 8
  threads (``benchmarks/reference.py``).  A third row appends to N streams another process
  registered: each append first reads its stream's key from the keyring's own database and
  pool (as resolution's first append to a complaint does).  The store's, raw asyncpg's, the
  third row's and the ``eventsourcing`` recorder's appends alternate in rounds of N/6 each,
  each kind first in turn, and each rate is N over its rounds' total time: so that a busy
  moment of the machine weighs on both sides of each ratio.
  The ``append``, ``relay`` and ``consume`` stages run in this process, on uvloop (the event
  loop of the services under uvicorn), with the garbage
  collector set up as a service process's once started (what start-up made frozen, the young
  generation collected less often); their baselines run alike.
- ``relay``: the outbox relay publishing a backlog of N committed events until the broker
  acknowledged all and they are marked sent, against an ``acks=all`` idempotent producer
  sending the same N records (half of them before the relay runs, half after).  Each event
  carries a W3C trace context, as the services' events carry their request's.
- ``consume``: the inbox consumer (inbox row + projection row per event, the projection row
  queued with :func:`complaints_shared.consumer.write`, one transaction per poll batch, then
  the offset) against raw asyncpg writing the same inbox and projection rows in batches as
  large as the consumer's polls (``--consume-batch``: the records a poll takes at most, the
  consumer's default unless given; a batch's own cost shows as it shrinks); and this
  process's CPU per event while each ran.  N events, at least 30,000, in six rounds, each
  kind first in turn (as the append stage's); each round's consumer is a new one on a topic
  of its own, timed once it is assigned its partitions, its records copies of the raw
  producer's, each a new event.  The consumer's CPU is what bounds it, not the database:
  with 60,000 events its statements took PostgreSQL about 13 µs an event (statement log),
  while the consumer took 37-41 µs of this process's CPU an event (aiokafka's fetch about 6
  of them), about as much as its wall time (it reads the next batch while the one before
  waits on the database).
- ``intake``: ``POST /complaints`` at 32 connections against a minimal FastAPI + one-INSERT
  app, both running, in three windows each taken in turn (as the rounds above), each with
  the CPU per answered request of its processes and of PostgreSQL's (steadier than the rates
  on a busy machine), and intake's latency at half its own rate, offered open-loop and
  evenly spaced (``benchmarks/http_intake.py``).  ``--workers N`` runs both servers as N
  processes sharing their port (intake with ``COMPLAINTS_WORKERS=N``, each process a
  replica); ``--description-chars N`` sends both complaints whose description is N
  characters long (the same story told at length) instead of 88.
- ``stored`` (not in the default run): intake at saturation with ``--stored`` complaints
  already in its database (default 0, 10k, 100k, 1M): its rate, and the CPU per request of
  intake and of PostgreSQL (which a query reading more rows as the table grows would raise),
  each against the run with the first count, and the customer-history query's plan;
  then the whole pipeline at ``--stored-rate`` complaints/s (below saturation, so that latency
  shows the work per complaint, not a queue) for ``--stored-seconds`` with each count stored
  in intake's database, against the same with the first count.
- ``pipeline``: all four services at ``--rate`` complaints/s offered for ``--pipeline-seconds``
  (``benchmarks/pipeline.py``): POST latency, how busy the cores were and how long each service
  waited for one while it could have run, each stage's completion rate and backlog growth,
  the drain time, and POST → ``CaseOpened`` on Kafka (p50, p99: from when the client's
  request was due) beside receipt → ``CaseOpened`` (from intake's ``received_at``, taken in
  the transaction that writes the complaint), and that split at ``ComplaintReceived`` on Kafka
  into its two hops (intake's relay, then resolution's fetch, batch and relay).  The local
  mail catcher it hands the e-mails to keeps its spool in memory (``/dev/shm``) where there is
  one: it stands in for mail servers that are not on this machine (``pipeline.spool_parent``).
  The load runs at a raised CPU priority where the system allows it, as its clients are not on
  this machine either (``pipeline.raised_priority``; the table says when it could not be).
- ``catchup``: a backlog of ``--catchup-complaints`` complaints that intake alone accepted
  (offered at 150/s) and published; then resolution, followup and learning start one after
  another, and each catches up with it (``benchmarks/pipeline.py``): its rate from its first
  complaint handled to the last (acknowledgement e-mails too), and its CPU per complaint.
  What recovery from a downstream outage looks like.
- ``rebuild``: learning's ``POST /admin/rebuild`` replaying ``--rebuild-complaints``
  complaints' history (receipt, cause, resolution, satisfaction) from offset 0, against a bare
  consumer reading the same records (``benchmarks/rebuild.py``).
- ``similar``: the similar-complaints index at ``--complaints`` stored texts against the
  earlier per-query TF-IDF (``benchmarks/similar.py``).
- ``delivery``: followup's hand-overs, as many at a time as its worker's, the connections kept
  for a round, to a real HTTP message gateway and to a real SMTP server over STARTTLS (each
  its own process), against clients sending the same messages over connections kept for the
  whole run (``benchmarks/delivery.py``).

``--services-from DIR`` runs the services of another checkout (say, a worktree of the commit
before a change) under the same harness, to compare two versions on the same machine.

It starts the local Kafka, PostgreSQL and (for ``intake``) Keycloak unless they run already,
prints one table of figures with their baselines and ratios, and writes the same as JSON
(``.local/bench/<time>.json``, or ``--json``).  The processes of the platform it starts (the
services, at ``COMPLAINTS_LOG_LEVEL=WARNING``, and the mail catcher) write their output beside
it (``<time>.logs/``, a file each); the table's last row counts those lines, which should be
none, and the files with any are kept.  Ratios, not absolute figures, are what to
compare between runs: these machines are shared and noisy.  Before each stage it drops the
databases of the stages before (else PostgreSQL vacuums their tables while the next stage is
measured: two ``intake,pipeline`` runs gave ``POST`` → ``CaseOpened`` p99 398 and 408 ms with
them, 332 and 288 ms without), then waits (up to a minute) until the machine is quiet, so that
what the stage before left running (a checkpoint, dropped databases' files, deleted topics'
logs, a backlog still draining) is not measured with it; the JSON's ``settle`` says how long
each stage waited and how busy the cores were then.

Above the table, and in the JSON's ``machine``, it gives what the machine charges for waking a
process on the other CPU (``benchmarks/machine.py``): a figure to compare machines by, since
every hop of the platform waits on another process.  Below it, the interpreter and what it took
for a fixed piece of plain Python before the stages and after them: an interpreter built
without profile-guided optimisation, or an hour in which a shared machine's neighbours are
busy, reads slower there too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import delivery  # noqa: E402
import http_intake  # noqa: E402
import machine  # noqa: E402
import pipeline  # noqa: E402
import rebuild  # noqa: E402
import reference  # noqa: E402
import similar  # noqa: E402

from complaints_shared.consumer import (  # noqa: E402
    MAX_POLL_RECORDS,
    ConsumerRunner,
    Subscription,
    write,
)
from complaints_shared.db import create_pool  # noqa: E402
from complaints_shared.envelope import Event, new_event_id, to_kafka_record  # noqa: E402
from complaints_shared.events.intake import ComplaintWithdrawn  # noqa: E402
from complaints_shared.eventstore import (  # noqa: E402
    PostgresEventStore,
    Wakeup,
    sealed_payloads,
    unit_of_work,
)
from complaints_shared.metrics import ServiceMetrics  # noqa: E402
from complaints_shared.outbox import OutboxRelay, new_producer  # noqa: E402
from complaints_shared.privacy import (  # noqa: E402
    KEYRING_SESSION,
    PostgresKeyring,
    load_master_key,
    new_master_key,
)
from complaints_shared.schema import migrate, shared_migrations  # noqa: E402
from complaints_shared.service import settle_after_start  # noqa: E402
from complaints_shared.telemetry import setup_telemetry  # noqa: E402
from complaints_shared.topics import delete_topics, ensure_topics  # noqa: E402
from infra import LocalInfra  # noqa: E402

STAGES = (
    "append",
    "relay",
    "consume",
    "intake",
    "stored",
    "pipeline",
    "catchup",
    "rebuild",
    "similar",
    "delivery",
)
DEFAULT_STAGES = tuple(s for s in STAGES if s != "stored")
SERVICE_STAGES = {"intake", "stored", "pipeline", "catchup", "rebuild"}  # they run services
WRITERS = 8
ROUNDS = 6  # the append and consume stages' rounds (see :func:`machine.in_turn`)
CONSUME_EVENTS = 30_000  # at least, in all: a round of a few polls would be mostly start-up
PAYLOAD = ComplaintWithdrawn(reason="Fila de espera " + "x" * 400)


@dataclass
class Row:
    """One line of the table: a measured figure, its baseline, and the ratio (higher is
    better for rates, lower for latencies)."""

    stage: str
    what: str
    value: float
    unit: str
    baseline_what: str = ""
    baseline: float | None = None
    goal: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "what": self.what,
            "value": round(self.value, 2),
            "unit": self.unit,
            "baseline_what": self.baseline_what,
            "baseline": round(self.baseline, 2) if self.baseline is not None else None,
            "ratio": round(self.ratio, 3) if self.ratio is not None else None,
            "goal": self.goal,
        }


def _traceparent() -> dict[str, str]:
    """A W3C trace context, as a request's span would give."""
    return {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"}


def now() -> datetime:
    return datetime.now(UTC)


QUIET_BUSY = 0.25  # the share of all cores' time busy over a second that counts as quiet
QUIET_WITHIN = 60.0  # seconds: a machine busy with something else is measured as it is


def settle(stage: str, waits: dict[str, Any]) -> None:
    """Wait until the cores are quiet (or :data:`QUIET_WITHIN` passed) before ``stage``, the
    page cache written out first (what the stages before wrote is not written back during
    it: :mod:`machine`)."""
    machine.flush_page_cache()
    if not os.path.exists("/proc/stat"):
        return
    t0 = time.monotonic()
    busy, total = machine.cpu_times()
    while True:
        time.sleep(1.0)
        now_busy, now_total = machine.cpu_times()
        share = (now_busy - busy) / max(now_total - total, 1e-9)
        busy, total = now_busy, now_total
        if share < QUIET_BUSY or time.monotonic() - t0 >= QUIET_WITHIN:
            break
    waits[stage] = {"waited_seconds": round(time.monotonic() - t0, 1), "busy": round(share, 2)}


async def timed(work: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    await work()
    return time.perf_counter() - t0


async def event_path(
    n: int,
    bootstrap: str,
    server: str,
    password: str,
    stages: set[str],
    consume_batch: int = MAX_POLL_RECORDS,
) -> list[Row]:
    db = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = f"{server}/{db}"
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    raw_topic, outbox_topic = f"{prefix}raw", f"{prefix}outbox"
    await ensure_topics(bootstrap, [raw_topic, outbox_topic, f"{prefix}dlq"], 3)
    pool = await create_pool(dsn, max_size=WRITERS + 2)
    async with pool.acquire() as conn:
        await migrate(conn, shared_migrations())
        await conn.execute("CREATE TABLE projection (id uuid PRIMARY KEY, subject text)")
        await conn.execute("CREATE TABLE raw_projection (id uuid PRIMARY KEY, subject text)")
    producer = new_producer(bootstrap)  # as the services' (the relay's and the raw baseline's)
    await producer.start()
    telemetry = setup_telemetry("bench")
    # the keyring in its own database and pool, as the services keep it
    await admin.execute(f'CREATE DATABASE "{db}_keyring"')
    keyring_pool = await create_pool(f"{server}/{db}_keyring", max_size=5, session=KEYRING_SESSION)
    master = load_master_key(new_master_key())
    keyring = PostgresKeyring(keyring_pool, master)
    await keyring.migrate()
    store = PostgresEventStore(source="/complaints/bench", topic=outbox_topic, keyring=keyring)
    # the garbage collector as in a service process once started (the baselines share it)
    settle_after_start()
    rows: list[Row] = []
    try:
        # the complaints' customers, registered as intake does on receipt (not measured)
        appended = [uuid.uuid4() for _ in range(n)]
        raw_streams = [uuid.uuid4() for _ in range(n)]
        # the appended streams last: the latest a process keeps the keys of (SEALING_KEYS_KEPT)
        await _register(keyring, raw_streams + appended)
        # streams registered by another process (as resolution appends to intake's complaints):
        # each one's first append here looks its key up
        elsewhere = [uuid.uuid4() for _ in range(n)] if "append" in stages else []
        await _register(PostgresKeyring(keyring_pool, master), elsewhere)
        cold_store = PostgresEventStore(
            source="/complaints/bench",
            topic=outbox_topic,
            keyring=PostgresKeyring(keyring_pool, master),
        )
        sealed = [
            (await sealed_payloads(keyring, s, [PAYLOAD]))[0] for s in raw_streams
        ]  # the same rows as the store writes: sealed data, as text
        sem = asyncio.Semaphore(WRITERS)

        # 1. append ---------------------------------------------------------------------
        async def raw_one(stream: uuid.UUID, data: dict[str, Any]) -> None:
            async with sem, pool.acquire() as conn, conn.transaction():
                event_id = new_event_id()  # as the store makes them
                await conn.execute(
                    "INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)"
                    " VALUES ($1, 1, $2, $3, $4, $5::text::jsonb)",
                    stream,
                    event_id,
                    "ComplaintWithdrawn",
                    now(),
                    json.dumps(data),
                )
                await conn.execute(
                    "INSERT INTO outbox (event_id, topic, trace_context) VALUES ($1, $2, '{}')",
                    event_id,
                    "raw",
                )

        wakeup = Wakeup(pool)  # no relay of this process watches: each wake-up NOTIFYs

        async def store_one(stream: uuid.UUID) -> None:
            async with sem, unit_of_work(pool, wakeup) as conn:  # as the services append
                await store.append(conn, stream, 0, [PAYLOAD])

        async def raw_all(part: slice) -> None:
            await asyncio.gather(
                *(raw_one(s, d) for s, d in zip(raw_streams[part], sealed[part], strict=True))
            )

        async def store_all(part: slice) -> None:
            await asyncio.gather(*(store_one(s) for s in appended[part]))

        async def cold_one(stream: uuid.UUID) -> None:
            async with sem, unit_of_work(pool, wakeup) as conn:
                await cold_store.append(conn, stream, 0, [PAYLOAD])

        async def cold_all(part: slice) -> None:
            await asyncio.gather(*(cold_one(s) for s in elsewhere[part]))

        # in rounds, each kind a share of the events per round and first in turn, so that what
        # the machine does meanwhile weighs on each alike; each rate from its rounds' total time
        kinds: list[tuple[str, Callable[[slice], Any]]] = [("raw", raw_all), ("store", store_all)]
        recorder: reference.Reference | None = None
        if "append" in stages:  # the cold appends and the eventsourcing recorder's, in turn too
            kinds.append(("cold", cold_all))
            recorder = made = await asyncio.to_thread(reference.Reference, dsn, password, WRITERS)
            theirs = made.events([json.dumps(d).encode() for d in sealed])
            kinds.append(("reference", lambda part: asyncio.to_thread(made.append, theirs[part])))
        spent = {name: 0.0 for name, _ in kinds}
        try:
            for r in range(ROUNDS):
                part = slice(r * n // ROUNDS, (r + 1) * n // ROUNDS)
                for name, work in machine.in_turn(kinds, r):
                    spent[name] += await timed(lambda work=work, part=part: work(part))
        finally:
            if recorder is not None:
                await asyncio.to_thread(recorder.close)
        raw_append, store_append = spent["raw"], spent["store"]
        # the relay's backlog is the N events the store appended: neither the raw rows nor
        # those of the streams registered elsewhere (it would publish twice as many)
        await pool.execute(
            "DELETE FROM outbox o USING events e WHERE o.event_id = e.event_id"
            " AND (o.topic = 'raw' OR e.stream_id = ANY($1::uuid[]))",
            elsewhere,
        )
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == n
        if "append" in stages:
            reference_rate = n / spent["reference"]
            for baseline, rate, goal in (
                (f"raw asyncpg, same rows, {WRITERS} connections", n / raw_append, "≥ 0.8x"),
                (f"eventsourcing PostgreSQL recorder, {WRITERS} threads", reference_rate, "≥ 5x"),
            ):
                rows.append(
                    Row(
                        "append",
                        f"event store append, {WRITERS} writers",
                        n / store_append,
                        "events/s",
                        baseline,
                        rate,
                        goal,
                    )
                )
            rows.append(
                Row(
                    "append",
                    f"the same, each stream's key looked up (registered elsewhere), {WRITERS}"
                    " writers",
                    n / spent["cold"],
                    "events/s",
                    f"raw asyncpg, same rows, {WRITERS} connections",
                    n / raw_append,
                    "",
                )
            )

        # 2. relay ----------------------------------------------------------------------
        events = [
            Event(
                event_id=new_event_id(),
                stream_id=stream,
                version=1,
                occurred_at=now(),
                source="/complaints/bench",
                payload=ComplaintWithdrawn.model_validate(data),
            )
            for stream, data in zip(raw_streams, sealed, strict=True)
        ]

        # each event in the trace of the request that appended it, as the services' are: the
        # relay's records carry the context stored with their rows, the raw ones the same
        backlog = [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox")]
        await pool.execute(
            "UPDATE outbox o SET trace_context = x.context::jsonb"
            " FROM unnest($1::uuid[], $2::text[]) AS x(event_id, context)"
            " WHERE o.event_id = x.event_id",
            backlog,
            [json.dumps(_traceparent()) for _ in backlog],
        )
        traced = {e.event_id: _traceparent() for e in events}

        async def raw_publish(part: list[Event[ComplaintWithdrawn]]) -> None:
            acks = []
            for e in part:
                r = to_kafka_record(e, traced[e.event_id])
                acks.append(await producer.send(raw_topic, r.value, key=r.key, headers=r.headers))
            await asyncio.gather(*acks)

        # half of the baseline before the relay runs and half after (as for consume)
        half = len(events) // 2
        raw_relay = await timed(lambda: raw_publish(events[:half]))
        relay_metrics = ServiceMetrics()  # as the services' relays have: the backlog counted
        relay = OutboxRelay(
            dsn=dsn,
            pool=pool,
            producer=producer,
            new_producer=lambda: new_producer(bootstrap),
            source=store.source,
            telemetry=telemetry,
            metrics=relay_metrics,
        )

        def acknowledged() -> float:
            return sum(
                s.value
                for m in relay_metrics.outbox_published.collect()
                for s in m.samples
                if s.name.endswith("_total")
            )

        async def relay_backlog() -> None:
            task = asyncio.create_task(relay.run())
            try:
                # watched in this process until the broker acknowledged all (a query every few
                # milliseconds would load the database the relay works with), then until the
                # last batch is marked sent
                while acknowledged() < n:
                    await asyncio.sleep(0.005)
                while await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
                    await asyncio.sleep(0.005)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        outbox_relay = await timed(relay_backlog)
        raw_relay += await timed(lambda: raw_publish(events[half:]))
        if "relay" in stages:
            rows.append(
                Row(
                    "relay",
                    "outbox relay, a committed backlog",
                    n / outbox_relay,
                    "events/s",
                    "raw producer, acks=all, same records",
                    n / raw_relay,
                    "≥ 0.5x",
                )
            )

        # 3. consume --------------------------------------------------------------------
        if "consume" in stages:
            rows.extend(
                await consume(
                    n, bootstrap, pool, producer, telemetry, keyring, prefix, consume_batch
                )
            )
    finally:
        await producer.stop()
        await pool.close()
        await keyring_pool.close()
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.execute(f'DROP DATABASE "{db}_keyring" WITH (FORCE)')
        await admin.close()
        await delete_topics(bootstrap, prefix)
    return rows


async def _register(keyring: PostgresKeyring, streams: list[uuid.UUID]) -> None:
    """Each stream registered as a complaint of one of 500 customers, in turn (not measured:
    500 at a time, each customer once, as intake registers a group)."""
    for start in range(0, len(streams), 500):
        await keyring.register_many(
            [(s, f"bench-customer-{i % 500}") for i, s in enumerate(streams[start : start + 500])]
        )


async def consume(
    n: int,
    bootstrap: str,
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    telemetry: Any,
    keyring: PostgresKeyring,
    prefix: str,
    per: int = MAX_POLL_RECORDS,
) -> list[Row]:
    """The inbox consumer against raw asyncpg writing the same rows, in rounds (see the
    module's docstring); ``per``: the records a poll takes at most, and so a transaction of
    each.  A round's records are copies of the raw producer's (the same sealed payload,
    complaint and trace context), each a new event with an id of its own: a copy with an id
    seen before would take the inbox's cheaper path for duplicates."""
    source = f"{prefix}raw"
    bare = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"{prefix}bare",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await bare.start()
    records: list[Any] = []
    while len(records) < n:  # not measured
        for recs in (await bare.getmany(timeout_ms=1000)).values():
            records.extend(recs)
    await bare.stop()

    per_round = max(n, CONSUME_EVENTS) // ROUNDS
    topics = [f"{prefix}consume{i}" for i in range(ROUNDS)]
    await ensure_topics(bootstrap, topics, 3)
    rounds: list[list[uuid.UUID]] = []
    acks = []
    copies = itertools.cycle(records)
    for topic in topics:  # not measured
        ids = []
        for _ in range(per_round):
            r = next(copies)
            event_id = new_event_id()
            headers = [(k, str(event_id).encode() if k == "ce_id" else v) for k, v in r.headers]
            acks.append(await producer.send(topic, r.value, key=r.key, headers=headers))
            ids.append(event_id)
        rounds.append(ids)
    await asyncio.gather(*acks)

    async def project(conn: asyncpg.Connection, e: Event[ComplaintWithdrawn]) -> None:
        await write(
            conn,
            "INSERT INTO projection VALUES ($1, $2)",
            e.event_id,
            (e.payload.reason or "")[:20],
        )

    metrics = ServiceMetrics()

    async def consumer_round(i: int) -> tuple[float, float]:
        name = f"{prefix}inbox{i}"
        runner = ConsumerRunner(
            Subscription(name, (topics[i],), {"ComplaintWithdrawn": project}),
            bootstrap,
            pool,
            producer,
            telemetry,
            metrics,
            dlq_topic=f"{prefix}dlq",
            keyring=keyring,
            max_poll_records=per,
        )
        task = asyncio.create_task(runner.run())
        try:
            while not runner.assigned:  # the group join is not what is measured
                await asyncio.sleep(0.001)
            t0, cpu = time.perf_counter(), time.process_time()
            processed = metrics.consumed.labels(name, "processed")
            while processed._value.get() < len(rounds[i]):
                await asyncio.sleep(0.002)
            return time.perf_counter() - t0, time.process_time() - cpu
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # raw asyncpg: the same inbox and projection rows, as many a transaction as the consumer
    # takes a poll
    async def raw_round(i: int) -> tuple[float, float]:
        t0, cpu = time.perf_counter(), time.process_time()
        async with pool.acquire() as conn:
            for start in range(0, len(rounds[i]), per):
                chunk = rounds[i][start : start + per]
                async with conn.transaction():
                    await conn.executemany(
                        "INSERT INTO inbox (consumer, event_id, event_type) VALUES ($1, $2, $3)",
                        [("raw", e, "ComplaintWithdrawn") for e in chunk],
                    )
                    await conn.executemany(
                        "INSERT INTO raw_projection VALUES ($1, $2)",
                        [(e, "Fila de espera xxxxx") for e in chunk],
                    )
        return time.perf_counter() - t0, time.process_time() - cpu

    took = {"consumer": [0.0, 0.0], "raw": [0.0, 0.0]}
    kinds = [("consumer", consumer_round), ("raw", raw_round)]
    for i in range(ROUNDS):
        for kind, run_round in machine.in_turn(kinds, i):
            wall, cpu = await run_round(i)
            took[kind][0] += wall
            took[kind][1] += cpu
    total = per_round * ROUNDS
    (inbox, inbox_cpu), (raw_write, raw_cpu) = took["consumer"], took["raw"]
    return [
        Row(
            "consume",
            "inbox consumer: read, open, inbox + projection, commit"
            + ("" if per == MAX_POLL_RECORDS else f", {per} a poll"),
            total / inbox,
            "events/s",
            f"raw asyncpg, same rows, {per} a transaction",
            total / raw_write,
            "≥ 0.5x",
        ),
        # this process's CPU while each ran: what bounds the consumer (PostgreSQL, on the
        # other core, spends less per event than the consumer's wall time allows)
        Row(
            "consume",
            "  CPU per event in this process (lower is better)",
            inbox_cpu / total * 1e6,
            "µs",
            "the same for the baseline",
            raw_cpu / total * 1e6,
        ),
    ]


async def drop_databases(server: str, names: list[str]) -> None:
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def intake_rows(figures: dict[str, Any]) -> list[Row]:
    i, b, h = figures["intake"], figures["baseline"], figures["intake_half_load"]
    workers = figures.get("workers", 1)
    each = f", {workers} processes each" if workers > 1 else ""
    if figures["description_chars"] != len(http_intake.SHORT_DESCRIPTION):
        each += f", descriptions of {figures['description_chars']:,} characters"
    return [
        Row(
            "intake",
            f"POST /complaints, 32 connections{each}",
            i["rate"],
            "requests/s",
            f"FastAPI + one INSERT, 32 connections{each}",
            b["rate"],
            "≥ 0.5x",
        ),
        Row("intake", "  p50 at saturation", i["p50_ms"], "ms", "baseline p50", b["p50_ms"]),
        Row("intake", "  p99 at saturation", i["p99_ms"], "ms", "baseline p99", b["p99_ms"]),
        Row(
            "intake",
            "  CPU per request at saturation: intake",
            i["cpu_ms"]["server"],
            "ms",
            "the baseline app's",
            b["cpu_ms"]["server"],
        ),
        Row(
            "intake",
            "  CPU per request at saturation: PostgreSQL",
            i["cpu_ms"]["postgres"],
            "ms",
            "for the baseline",
            b["cpu_ms"]["postgres"],
        ),
        Row(
            "intake",
            f"  p99 at half load ({h['offered']:.0f}/s offered evenly, {h['rate']:.0f}/s done)",
            h["p99_ms"],
            "ms",
            goal="< 50 ms",
        ),
        Row("intake", "    longest stall of every task on I/O meanwhile", _stalled(h), "ms"),
    ]


def _stalled(f: dict[str, Any]) -> float:
    """The longest stretch of a window in which every runnable task waited on I/O
    (:class:`machine.IoStalls`): a disk that stalls holds every commit, and the window's p99
    with it."""
    ms = (f.get("io_stalls_ms") or {}).get("longest")
    return float("nan") if ms is None else float(ms)


def _against_first(
    f: dict[str, Any],
    count: str,
    what: str,
    unit: str,
    figure: Callable[[dict[str, Any]], float],
    goal: str = "≈ 1x",
) -> Row:
    """A figure of the run with ``count`` stored against the same of the first count's run."""
    first_count, first = next(iter(f.items()))
    baseline = f"with {int(first_count):,} stored"
    return Row("stored", what, figure(f[count]), unit, baseline, figure(first), goal)


def _cpu_ms(process: str) -> Callable[[dict[str, Any]], float]:
    """A run's CPU milliseconds per answered request of ``process`` (see ``saturate``)."""
    return lambda r: float(r["cpu_ms"][process])


def stored_rows(f: dict[str, Any]) -> list[Row]:
    rows = []
    for count, r in f.items():
        n = f"{int(count):,}"
        rows.append(
            _against_first(
                f,
                count,
                f"POST /complaints with {n} stored, 32 connections",
                "requests/s",
                lambda r: float(r["rate"]),
            )
        )
        rows.append(Row("stored", f"  p99 with {n} stored", r["p99_ms"], "ms"))
        for process, label in (("server", "intake"), ("postgres", "PostgreSQL")):
            rows.append(
                _against_first(
                    f,
                    count,
                    f"  CPU per request: {label}, {n} stored",
                    "ms",
                    _cpu_ms(process),
                )
            )
    return rows


def stored_pipeline_rows(f: dict[str, Any]) -> list[Row]:
    """Per count stored: the slowest stage's completion rate, POST → ``CaseOpened`` p99 and
    intake's CPU per complaint, each against the run with the first count."""

    def slowest(r: dict[str, Any]) -> float:
        return float(min(s["completed_per_s"] for s in r["stages"].values()))

    rows = []
    for count, r in f.items():
        n = f"{int(count):,}"
        rows += [
            _against_first(
                f,
                count,
                f"pipeline at {r['offered_per_s']:.0f}/s, {n} stored: slowest stage",
                "complaints/s",
                slowest,
            ),
            _against_first(
                f,
                count,
                f"  POST → CaseOpened p99, {n} stored",
                "ms",
                lambda r: float(r["post_to_case_opened_p99_ms"]),
            ),
            _against_first(
                f,
                count,
                f"  CPU per complaint: intake, {n} stored",
                "ms",
                lambda r: float(r["cpu_ms_per_complaint"].get("intake", float("nan"))),
                goal="",
            ),
        ]
    return rows


def _given_up(f: dict[str, Any]) -> str:
    """The requests that got no 2xx: answered with an error (or their connection lost), and
    those the client gave up 10 s after the load, sent or still in its own queue."""
    late = [f"{f[k]} {k}" for k in ("unanswered", "unsent") if f[k]]
    return ", ".join([f"{f['failed']} failed", *late])


def pipeline_rows(f: dict[str, Any]) -> list[Row]:
    offered = f["offered_per_s"]
    rows = [
        Row(
            "pipeline",
            f"POST accepted, {offered:.0f}/s offered for {f['seconds']:.0f} s"
            + (" (mail spool on disk)" if f.get("mail_spool") == "disk" else "")
            # the client competes with the platform for the cores where it could not be raised
            + (
                f"; load at {f['client_priority']} CPU priority"
                if not str(f.get("client_priority", "raised")).startswith("raised")
                else ""
            ),
            f["accepted"] / f["answered_within_seconds"],  # not the load's: answers come later
            "complaints/s",
            goal=_given_up(f),
        ),
        Row("pipeline", "  POST p99 (open loop)", f["post_p99_ms"], "ms"),
        Row(
            "pipeline",
            "  POST → CaseOpened on Kafka, p50",
            f["post_to_case_opened_p50_ms"],
            "ms",
        ),
        Row(
            "pipeline",
            "  POST → CaseOpened on Kafka, p99",
            f["post_to_case_opened_p99_ms"],
            "ms",
            goal="< 250 ms at 300/s",
        ),
        Row("pipeline", "  longest stall of every task on I/O during the load", _stalled(f), "ms"),
        Row(
            "pipeline",
            "  all CPUs' time busy during the load"
            f" (the load's client: {f['cpu_busy_share']['load_client']:.0%})",
            f["cpu_busy_share"]["all"] * 100,
            "%",
        ),
        *(
            Row("pipeline", f"    of the load's time, {name} waited for a CPU", share * 100, "%")
            for name, share in (f.get("run_queue_share") or {}).items()
        ),
        *(
            Row("pipeline", f"  receipt → CaseOpened on Kafka, {p}", f[key], "ms")
            for p, key in (
                ("p50", "received_to_case_opened_p50_ms"),
                ("p99", "received_to_case_opened_p99_ms"),
            )
        ),
        *(
            Row("pipeline", f"    {hop}, {p}", f[key], "ms")
            for hop, p, key in (
                ("receipt → ComplaintReceived on Kafka", "p50", "received_to_published_p50_ms"),
                ("receipt → ComplaintReceived on Kafka", "p99", "received_to_published_p99_ms"),
                ("ComplaintReceived → CaseOpened", "p50", "published_to_case_opened_p50_ms"),
                ("ComplaintReceived → CaseOpened", "p99", "published_to_case_opened_p99_ms"),
            )
        ),
        *(
            Row("pipeline", f"  receipt → acknowledgement e-mail sent, {p}", f[key], "ms")
            for p, key in (
                ("p50", "received_to_acknowledgement_sent_p50_ms"),
                ("p99", "received_to_acknowledgement_sent_p99_ms"),
            )
        ),
    ]
    for stage, s in f["stages"].items():
        rows.append(
            Row(
                "pipeline",
                f"  {stage}: completed (backlog growth {s['backlog_growth_per_s']:+.1f}/s)",
                s["completed_per_s"],
                "complaints/s",
                "offered",
                offered,
                "≥ 300/s, growth ≈ 0",
            )
        )
    for name, n in f["transactions_per_complaint"].items():
        rows.append(Row("pipeline", f"  database transactions per complaint: {name}", n, ""))
    for name, ms in f["cpu_ms_per_complaint"].items():
        rows.append(Row("pipeline", f"  CPU per complaint: {name}", ms, "ms"))
    drained = f["drained_after_s"]
    rows.append(
        Row(
            "pipeline",
            "  drained after the load" if drained is not None else "  NOT drained in time",
            drained if drained is not None else float("nan"),
            "s",
        )
    )
    return rows


def catchup_rows(f: dict[str, Any]) -> list[Row]:
    rows = []
    for stages in f["services"].values():
        for stage, s in stages.items():
            if not s["caught_up"]:
                rows.append(Row("catchup", f"{stage}: NOT caught up in time", float("nan"), ""))
                continue
            rows.append(
                Row(
                    "catchup",
                    f"{stage}: catching up with {f['complaints']:,} complaints"
                    f" ({s['cpu_ms_per_complaint']:.2f} ms CPU each)",
                    s["per_s"],
                    "complaints/s",
                )
            )
    return rows


def rebuild_rows(f: dict[str, Any]) -> list[Row]:
    return [
        Row(
            "rebuild",
            f"learning rebuild, {f['events']:,} events from offset 0",
            f["rebuild_per_s"],
            "events/s",
            "bare consumer reading the same records",
            f["bare_read_per_s"],
            "≥ 50,000/s",
        ),
        Row("rebuild", "  reset (the answer to POST /admin/rebuild)", f["reset_seconds"], "s"),
        Row("rebuild", "  replay until every event is handled again", f["replay_seconds"], "s"),
        Row(
            "rebuild",
            "  of which until the first is handled (rejoin)",
            f["first_handled_after_seconds"] or float("nan"),
            "s",
        ),
    ]


def similar_rows(f: dict[str, float]) -> list[Row]:
    return [
        Row(
            "similar",
            f"query p50 over {f['complaints']:,} complaints",
            f["query_p50_ms"],
            "ms",
            "per-query TF-IDF over 2,000",
            f["earlier_query_at_2000_p50_ms"],
        ),
        Row(
            "similar",
            f"query p99 over {f['complaints']:,}",
            f["query_p99_ms"],
            "ms",
            "the same, columns copied out first",
            f["query_columns_copied_out_p99_ms"],
            goal="< 20",
        ),
        Row("similar", "index build", f["index_build_per_s"], "texts/s"),
    ]


def delivery_rows(figures: dict[str, dict[str, float]]) -> list[Row]:
    rows = []
    for name, what, baseline in (
        ("gateway", "hand-overs to the message gateway (HTTP)", "one httpx client for the run"),
        (
            "mail",
            "hand-overs to the mail server (SMTP, STARTTLS)",
            f"{delivery.AT_ONCE} SMTP connections for the run",
        ),
    ):
        f = figures[name]
        rows += [
            Row("delivery", what, f["notifier_per_s"], "msgs/s", baseline, f["raw_per_s"]),
            Row(
                "delivery",
                "  CPU each (lower is better)",
                f["notifier_cpu_ms"],
                "ms",
                "the same",
                f["raw_cpu_ms"],
            ),
        ]
    return rows


def _figure(value: float) -> str:
    """A figure as printed: small ones (CPU milliseconds) with two decimals, others with one,
    a count as it is."""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'stage':<8} {'measured':<58} {'figure':>16}  {'baseline':<44} {'figure':>16}"
        f" {'ratio':>7}  goal"
    )
    for r in rows:
        base = f"{_figure(r.baseline)} {r.unit}" if r.baseline is not None else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        print(
            f"{r.stage:<8} {r.what:<58} {_figure(r.value):>11} {r.unit:<4}  {r.baseline_what:<44}"
            f" {base:>16} {ratio:>7}  {r.goal}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=15, help="each HTTP load run")
    parser.add_argument(
        "--workers", type=int, default=1, help="intake: processes of intake and of the baseline"
    )
    parser.add_argument(
        "--description-chars",
        type=int,
        help="intake: each complaint's description this long (at most 5000; default: 88)",
    )
    parser.add_argument(
        "--complaints", type=int, default=100_000, help="stored texts for the similar index"
    )
    parser.add_argument("--rate", type=float, default=300, help="pipeline: complaints/s offered")
    parser.add_argument("--pipeline-seconds", type=float, default=60, help="pipeline: how long")
    parser.add_argument(
        "--catchup-complaints", type=int, default=3000, help="catchup: the backlog's complaints"
    )
    parser.add_argument(
        "--rebuild-complaints", type=int, default=10_000, help="rebuild: complaints' histories"
    )
    parser.add_argument(
        "--stored",
        default="0,10000,100000,1000000",
        help="stored: complaints already stored for each intake run",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_STAGES),
        help=f"comma-separated stages of {', '.join(STAGES)} (stored is not in the default)",
    )
    parser.add_argument(
        "--stored-rate", type=float, default=40, help="stored: pipeline complaints/s offered"
    )
    parser.add_argument(
        "--stored-seconds", type=float, default=30, help="stored: how long each pipeline run"
    )
    parser.add_argument(
        "--messages", type=int, default=2000, help="delivery: messages handed over each way"
    )
    parser.add_argument(
        "--consume-batch",
        type=int,
        default=MAX_POLL_RECORDS,
        help=f"consume: the records a poll takes at most (default {MAX_POLL_RECORDS})",
    )
    parser.add_argument("--json", type=Path, help="where to write the figures")
    parser.add_argument(
        "--services-from",
        type=Path,
        help="intake, pipeline, catchup, rebuild: run the services of this other checkout",
    )
    args = parser.parse_args()
    stages = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = stages - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; pick from {', '.join(STAGES)}")
    if args.consume_batch < 1:
        parser.error("--consume-batch must be at least 1")

    out = args.json or ROOT / ".local" / "bench" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    logs = out.with_suffix(".logs")  # the output of every process of the platform it starts
    python_before = machine.python_speed()  # before the infrastructure starts, if it must
    infra = LocalInfra.from_env()
    disk_dir = infra.postgres.home  # where the local database keeps its files
    disk_dir.mkdir(parents=True, exist_ok=True)
    disk_before = machine.disk_sync(disk_dir)
    started = infra.up(identity=bool(stages & SERVICE_STAGES))
    os.environ.setdefault("PGPASSFILE", str(infra.postgres.passfile))
    rows: list[Row] = []
    waits: dict[str, Any] = {}
    details: dict[str, Any] = {"settle": waits}
    try:
        if stages & {"append", "relay", "consume"}:
            settle("append, relay, consume", waits)
            # on the event loop the services run on (uvicorn's, uvloop), baselines alike
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                rows += runner.run(
                    event_path(
                        args.events,
                        infra.kafka.bootstrap,
                        infra.postgres.url,
                        infra.postgres.password(),
                        stages,
                        args.consume_batch,
                    )
                )
        server = infra.postgres.url

        created: list[str] = []

        def create_database(name: str) -> str:
            infra.postgres.ensure_databases([name])
            created.append(name)
            return name

        def drop_earlier() -> None:
            """Drop the databases made so far: a run is not measured beside the database's
            vacuuming of an earlier run's tables."""
            asyncio.run(drop_databases(server, created))
            created.clear()

        def next_stage(stage: str) -> None:
            drop_earlier()
            settle(stage, waits)

        def harness() -> http_intake.Harness:
            """What every stage that runs services needs (a fresh token each time)."""
            return http_intake.Harness(
                server=server,
                bootstrap=infra.kafka.bootstrap,
                issuer=infra.keycloak.issuer,
                token=infra.keycloak.token("channel-gateway"),
                master_key=new_master_key(),
                create_database=create_database,
                logs=logs,
            )

        if "intake" in stages:
            next_stage("intake")
            details["intake"] = http_intake.bench(
                harness(),
                seconds=args.seconds,
                services_from=args.services_from,
                workers=args.workers,
                description_chars=args.description_chars,
            )
            rows += intake_rows(details["intake"])
        if "stored" in stages:
            next_stage("stored")
            counts = [int(c) for c in args.stored.split(",") if c.strip()]
            details["stored"] = http_intake.bench_stored(
                harness(), seconds=args.seconds, counts=counts
            )
            rows += stored_rows(details["stored"])
            details["stored_pipeline"] = {}
            for count in counts:
                drop_earlier()  # the stage's intake runs', or the last count's pipeline's
                details["stored_pipeline"][str(count)] = pipeline.bench(
                    harness(),
                    rate=args.stored_rate,
                    seconds=args.stored_seconds,
                    kafka_pid=infra.kafka.pid(),
                    stored=count,
                    settle=lambda count=count: settle(f"stored pipeline {count}", waits),
                )
            rows += stored_pipeline_rows(details["stored_pipeline"])
        if "pipeline" in stages:
            next_stage("pipeline")
            details["pipeline"] = pipeline.bench(
                harness(),
                rate=args.rate,
                seconds=args.pipeline_seconds,
                kafka_pid=infra.kafka.pid(),
                services_from=args.services_from,
            )
            rows += pipeline_rows(details["pipeline"])
        if "catchup" in stages:
            next_stage("catchup")
            details["catchup"] = pipeline.catch_up(
                harness(),
                complaints=args.catchup_complaints,
                services_from=args.services_from,
                settle=lambda: settle("catchup: the backlog published", waits),
            )
            rows += catchup_rows(details["catchup"])
        if "rebuild" in stages:
            next_stage("rebuild")
            details["rebuild"] = rebuild.bench(
                harness(),
                admin_token=infra.keycloak.token("admin"),
                complaints=args.rebuild_complaints,
                services_from=args.services_from,
            )
            rows += rebuild_rows(details["rebuild"])
        asyncio.run(drop_databases(server, created))
    finally:
        infra.down(started)
    if "similar" in stages:
        settle("similar", waits)
        details["similar"] = similar.bench(args.complaints, 200)
        rows += similar_rows(details["similar"])
    if "delivery" in stages:
        settle("delivery", waits)
        details["delivery"] = delivery.bench(args.messages)
        rows += delivery_rows(details["delivery"])

    # the services log at WARNING: a figure measured beside a warning or an error is suspect
    logged = http_intake.logged_lines(logs)
    if stages & SERVICE_STAGES:
        lines = sum(logged.values())
        rows.append(
            Row("logs", "lines the services logged, WARNING and above", lines, "lines", goal="0")
        )

    wake_ups = machine.wake_up_round_trips()  # after the stages: the machine is quiet again
    python_after = machine.python_speed()
    disk_after = machine.disk_sync(disk_dir)
    print(f"\n{machine.describe(wake_ups)}")
    print(machine.describe_python(python_before, python_after))
    print(machine.describe_disk(disk_before, disk_after))
    print_table(rows)
    for name, count in logged.items():
        print(f"  {count} lines in {logs / name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "at": datetime.now(UTC).isoformat(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": python_before["version"],
                    "python_installed_at": python_before["installed_at"],
                    "python_ns_a_turn": {
                        "before": python_before["ns_a_turn"],
                        "after": python_after["ns_a_turn"],
                    },
                    "wake_up_round_trip": wake_ups,
                    "disk_sync_ms": {"before": disk_before, "after": disk_after},
                },
                "events": args.events,
                "rows": [r.as_dict() for r in rows],
                "details": details,
                "service_logs": {"dir": str(logs), "lines": logged},
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nfigures written to {out}")


if __name__ == "__main__":
    main()
