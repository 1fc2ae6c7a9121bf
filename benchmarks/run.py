"""Benchmarks of the event path, each against a raw-client baseline in the same run.

    ./dev bench [--events N]

1. publish: N events through append (one transaction each) + outbox relay until all are
   acknowledged, against the same N records sent straight with an ``acks=all`` producer.
2. consume: N events through the inbox consumer (inbox row + projection row per event, then
   offset commit), against reading the same N records with a bare consumer.

The event carries personal data, so both paths pay what the services pay: the append seals it
with the customer's data key, the consumer opens it (keys from the keyring; the complaints are
registered with it before the clock starts, as intake does on receipt).

Figures are ratios against the baseline, as the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import similar  # noqa: E402

from complaints_shared.consumer import ConsumerRunner, Subscription  # noqa: E402
from complaints_shared.db import create_pool  # noqa: E402
from complaints_shared.envelope import Event, to_kafka_record  # noqa: E402
from complaints_shared.events.intake import ComplaintWithdrawn  # noqa: E402
from complaints_shared.eventstore import PostgresEventStore, sealed_payloads  # noqa: E402
from complaints_shared.metrics import ServiceMetrics  # noqa: E402
from complaints_shared.outbox import OutboxRelay  # noqa: E402
from complaints_shared.privacy import PostgresKeyring, load_master_key, new_master_key  # noqa: E402
from complaints_shared.schema import migrate, shared_migrations  # noqa: E402
from complaints_shared.telemetry import setup_telemetry  # noqa: E402
from complaints_shared.topics import ensure_topics  # noqa: E402
from infra import LocalInfra  # noqa: E402

PAYLOAD = ComplaintWithdrawn(reason="Fila de espera " + "x" * 400)


async def bench(n: int, bootstrap: str, server: str) -> None:
    db = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = f"{server}/{db}"
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    raw_topic, outbox_topic = f"{prefix}raw", f"{prefix}outbox"
    await ensure_topics(bootstrap, [raw_topic, outbox_topic, f"{prefix}dlq"], 3)
    pool = await create_pool(dsn, max_size=10)
    async with pool.acquire() as conn:
        await migrate(conn, shared_migrations())
        await conn.execute("CREATE TABLE projection (id uuid PRIMARY KEY, subject text)")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    telemetry = setup_telemetry("bench")
    keyring = PostgresKeyring(pool, load_master_key(new_master_key()))
    await keyring.migrate()
    try:
        # the complaints' customers, registered as intake does on receipt (not measured)
        published, appended_streams = (
            [uuid.uuid4() for _ in range(n)],
            [uuid.uuid4() for _ in range(n)],
        )
        for i, stream in enumerate(published + appended_streams):
            await keyring.register(stream, f"bench-customer-{i % 500}")
        sealed = [
            ComplaintWithdrawn.model_validate((await sealed_payloads(keyring, s, [PAYLOAD]))[0])
            for s in published
        ]

        # 1. publish -------------------------------------------------------------------
        events = [
            Event(
                event_id=uuid.uuid4(),
                stream_id=stream,
                version=1,
                occurred_at=time_now(),
                source="/complaints/bench",
                payload=payload,
            )
            for stream, payload in zip(published, sealed, strict=True)
        ]
        t0 = time.perf_counter()
        acks = []
        for e in events:
            r = to_kafka_record(e)
            acks.append(await producer.send(raw_topic, r.value, key=r.key, headers=r.headers))
        await asyncio.gather(*acks)
        raw_publish = time.perf_counter() - t0

        store = PostgresEventStore(source="/complaints/bench", topic=outbox_topic, keyring=keyring)
        relay = OutboxRelay(
            dsn=dsn, pool=pool, producer=producer, source=store.source, telemetry=telemetry
        )
        relay_task = asyncio.create_task(relay.run())
        while not relay.is_leader:
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(8)

        async def append_one(stream: uuid.UUID) -> None:
            async with sem, pool.acquire() as conn, conn.transaction():
                await store.append(conn, stream, 0, [PAYLOAD])

        await asyncio.gather(*(append_one(s) for s in appended_streams))
        appended = time.perf_counter() - t0
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
            await asyncio.sleep(0.005)
        outbox_publish = time.perf_counter() - t0
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)

        # 2. consume -------------------------------------------------------------------
        bare = AIOKafkaConsumer(
            raw_topic,
            bootstrap_servers=bootstrap,
            group_id=f"{prefix}bare",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await bare.start()
        first = await bare.getmany(timeout_ms=10_000)  # the group join is not what is measured
        t0 = time.perf_counter()
        seen = sum(len(r) for r in first.values())
        while seen < n:
            for recs in (await bare.getmany(timeout_ms=200)).values():
                seen += len(recs)
        await bare.commit()
        raw_consume = time.perf_counter() - t0
        await bare.stop()

        async def project(conn: asyncpg.Connection, e: Event[ComplaintWithdrawn]) -> None:
            await conn.execute(
                "INSERT INTO projection VALUES ($1, $2)", e.event_id, (e.payload.reason or "")[:20]
            )

        metrics = ServiceMetrics()
        runner = ConsumerRunner(
            Subscription(f"{prefix}inbox", (raw_topic,), {"ComplaintWithdrawn": project}),
            bootstrap,
            pool,
            producer,
            telemetry,
            metrics,
            dlq_topic=f"{prefix}dlq",
            keyring=keyring,
        )
        task = asyncio.create_task(runner.run())
        while not runner.assigned:  # the group join is not what is measured
            await asyncio.sleep(0.001)
        t0 = time.perf_counter()
        while metrics.consumed.labels(f"{prefix}inbox", "processed")._value.get() < n:
            await asyncio.sleep(0.005)
        inbox_consume = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await producer.stop()
        await pool.close()
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()

    def rate(seconds: float) -> str:
        return f"{n / seconds:9.0f} events/s"

    print(f"events: {n}")
    print(f"publish  baseline  raw producer, acks=all        {rate(raw_publish)}")
    print(
        f"publish  outbox    append (8 writers) -> relay   {rate(outbox_publish)}"
        f"   ratio {outbox_publish / raw_publish:5.2f}x baseline time"
        f"   (appends alone {rate(appended)})"
    )
    print(f"consume  baseline  bare consumer                 {rate(raw_consume)}")
    print(
        f"consume  inbox     inbox + projection + commit   {rate(inbox_consume)}"
        f"   ratio {inbox_consume / raw_consume:5.2f}x baseline time"
        " (from partition assignment on)"
    )


def time_now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument(
        "--complaints", type=int, default=100_000, help="stored texts for the similar index"
    )
    args = parser.parse_args()
    infra = LocalInfra.from_env()
    started = infra.up(identity=False)  # no API calls here: no identity provider needed
    os.environ.setdefault("PGPASSFILE", str(infra.postgres.passfile))
    try:
        asyncio.run(bench(args.events, infra.kafka.bootstrap, infra.postgres.url))
    finally:
        infra.down(started)
    similar.report(similar.bench(args.complaints, 200))


if __name__ == "__main__":
    main()
