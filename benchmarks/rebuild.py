"""Learning's rebuild: replaying its input topics from offset 0, against reading them bare.

The learning service runs as its own process (fresh database, keyring database and topics under
a throw-away prefix).  The bench publishes ``complaints`` complaints' history to intake's,
resolution's and followup's topics as those services would (personal values sealed for each
customer, whose key is in the keyring): receipt, cause (a few dozen root causes, so problems
open), resolution, and a satisfaction answer for every other complaint.  Learning consumes it
once as it arrives (not measured); then ``POST /admin/rebuild`` (an admin's token) resets its
read models and replays everything from offset 0.  Measured: from the rebuild's answer until
learning's new consumer group has committed the offset of every record (after the transaction
of each batch), as the broker has them; its inbox must then hold every event again.

Baseline: a bare aiokafka consumer reading the same records from offset 0 in this process, so
the ratio says what share of the broker's read rate the rebuild reaches.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from http_intake import Harness, LoggedProcess, _stop, _wait_ready, free_port, service_env

from complaints_shared.consumer import group_id
from complaints_shared.envelope import Event, new_event_id, to_kafka_record
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as fu
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs
from complaints_shared.eventstore import sealed_payloads
from complaints_shared.outbox import new_producer
from complaints_shared.privacy import PostgresKeyring, load_master_key
from complaints_shared.topics import Topics, delete_topics, ensure_topics

PARTITIONS = 3  # of each topic
CAUSES = [f"cause_{i:02d}" for i in range(40)]
CATEGORIES = ["delivery", "billing", "product_quality", "service"]


def _history(i: int, at: datetime) -> list[tuple[str, DomainEvent, datetime]]:
    """One complaint's events as learning reads them: (service, payload, when)."""
    category = CATEGORIES[i % len(CATEGORIES)]
    cid = uuid.uuid4()  # replaced by the stream id below; the payload refers to it
    out: list[tuple[str, DomainEvent, datetime]] = [
        (
            "intake",
            it.ComplaintReceived(
                reference=f"CMP-2026-{i:06d}",
                received_at=at,
                channel="email",
                reply_channel="email",
                customer=it.Customer(name=f"Cliente {i}", email=f"c{i}@example.pt"),
                subject="Encomenda atrasada",
                description=f"A encomenda {i} chegou com duas semanas de atraso.",
                category=category,
                severity="medium",
                language="pt",
                first_response_due=at + timedelta(hours=8),
            ),
            at,
        ),
        (
            "resolution",
            rs.CauseIdentified(
                complaint_id=cid,
                what_happened="atraso",
                what_should_have_happened="entrega a tempo",
                what_went_wrong="transportadora",
                root_cause=CAUSES[i % len(CAUSES)],
                responsible="us",
                identified_by="agent-1",
                category=category,
            ),
            at + timedelta(hours=2),
        ),
        (
            "resolution",
            rs.CaseResolved(
                complaint_id=cid,
                summary="Reembolso dos portes",
                resolved_by="agent-1",
                category=category,
                severity="medium",
            ),
            at + timedelta(hours=20),
        ),
    ]
    if i % 2 == 0:
        out.append(
            (
                "followup",
                fu.SatisfactionRecorded(check_id=uuid.uuid4(), score=1 + i % 5, solved=i % 5 > 1),
                at + timedelta(days=3),
            )
        )
    return out


async def _seed(h: Harness, keyring_dsn: str, topics: Topics, complaints: int) -> int:
    """Every complaint's history on the topics, sealed as the services seal it; how many."""
    pool = await asyncpg.create_pool(keyring_dsn, min_size=1, max_size=4)
    keyring = PostgresKeyring(pool, load_master_key(h.master_key))
    producer = new_producer(h.bootstrap)
    await producer.start()
    start = datetime.now(UTC) - timedelta(days=60)
    sent = 0
    try:
        acks = []
        for i in range(complaints):
            stream = uuid.uuid4()
            await keyring.register(stream, f"bench-customer-{i}")
            at = start + timedelta(seconds=i * 300)
            for version, (service, payload, when) in enumerate(_history(i, at), start=1):
                if hasattr(payload, "complaint_id"):
                    payload = payload.model_copy(update={"complaint_id": stream})
                data = (await sealed_payloads(keyring, stream, [payload]))[0]
                event = Event(
                    event_id=new_event_id(),  # as the services' stores make them
                    stream_id=stream,
                    version=version,
                    occurred_at=when,
                    source=f"/complaints/{service}",
                    payload=type(payload).model_validate(data),
                )
                r = to_kafka_record(event)
                topic = getattr(topics, service)
                acks.append(await producer.send(topic, r.value, key=r.key, headers=r.headers))
                sent += 1
            if len(acks) >= 5000:
                await asyncio.gather(*acks)
                acks = []
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
        await pool.close()
    return sent


async def _read_bare(bootstrap: str, topics: list[str], total: int) -> float:
    """Seconds a bare consumer takes to read ``total`` records of ``topics`` from offset 0."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        t0 = time.perf_counter()
        seen = 0
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=500)).values():
                seen += len(records)
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


async def _wait_committed(
    admin: AIOKafkaAdminClient,
    group: str,
    ends: dict[TopicPartition, int],
    within: float,
) -> tuple[float, float | None]:
    """Seconds until learning's consumer ``group`` has committed the offsets of every record
    (``ends``: each partition's end), and until it had committed any (raises after
    ``within``).  Learning commits a batch's offsets after the batch's database transaction:
    every record committed is an event handled.  Watched through the broker: counting
    learning's inbox instead (a scan of all its rows, 20 ms at 100,000 events, every 50 ms)
    kept the database busy for a third of a core during the replay it measured."""
    t0 = time.perf_counter()
    first: float | None = None
    left = sum(ends.values())
    while left:
        committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
        done = {tp: max(c.offset, 0) for tp, c in committed.items()}
        left = sum(end - done.get(tp, 0) for tp, end in ends.items())
        if first is None and left < sum(ends.values()):
            first = time.perf_counter() - t0
        if not left:
            break
        if time.perf_counter() - t0 > within:
            raise RuntimeError(
                f"learning left {left} of {sum(ends.values())} events in {within:.0f}s"
            )
        await asyncio.sleep(0.02)
    return time.perf_counter() - t0, first


async def _ends(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """Each partition's end offset: what a consumer group has read all of once it commits it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        return {tp: end for tp, end in (await consumer.end_offsets(partitions)).items() if end}
    finally:
        await consumer.stop()


async def _group(conn: asyncpg.Connection, consumer: str) -> str:
    """The Kafka consumer group of ``consumer``'s current generation."""
    generation = await conn.fetchval(
        "SELECT generation FROM consumer_generations WHERE consumer = $1", consumer
    )
    return group_id(consumer, int(generation or 0))


def _rebuild(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/admin/rebuild", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        answer: dict[str, Any] = json.loads(r.read())
        return answer


def bench(
    h: Harness, *, admin_token: str, complaints: int, services_from: Path | None = None
) -> dict[str, Any]:
    suffix = os.urandom(3).hex()
    database = h.create_database(f"bench_rebuild_{suffix}")
    keyring_db = h.create_database(f"bench_rebuild_{suffix}_keyring")
    prefix = f"benchrebuild{suffix}."
    topics = Topics(prefix)
    port = free_port()
    asyncio.run(ensure_topics(h.bootstrap, topics.all(), PARTITIONS))
    proc = LoggedProcess(
        [sys.executable, "-m", "complaints_learning"],
        env={**service_env(services_from), **h.service_env(database, keyring_db, prefix, port)},
        log=h.log(f"{prefix}learning"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)

        async def measure() -> dict[str, Any]:
            total = await _seed(h, f"{h.server}/{keyring_db}", topics, complaints)
            read = [topics.intake, topics.resolution, topics.followup]
            ends = await _ends(h.bootstrap, read)
            assert sum(ends.values()) == total, (ends, total)
            consumer = f"{prefix}complaints-learning"
            conn = await asyncpg.connect(f"{h.server}/{database}")
            admin = AIOKafkaAdminClient(bootstrap_servers=h.bootstrap)
            await admin.start()
            try:
                # the live pass
                await _wait_committed(admin, await _group(conn, consumer), ends, within=600)
                t0 = time.perf_counter()
                answer = await asyncio.to_thread(_rebuild, url, admin_token)
                reset = time.perf_counter() - t0
                group = await _group(conn, consumer)  # the rebuild's new generation
                replay, first = await _wait_committed(admin, group, ends, within=600)
                handled = await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE consumer = $1", consumer
                )
                if handled != total:
                    raise RuntimeError(f"learning's inbox holds {handled} of {total} events")
                problems = int(await conn.fetchval("SELECT count(*) FROM problems"))
            finally:
                await admin.close()
                await conn.close()
            bare = await _read_bare(h.bootstrap, read, total)
            return {
                "complaints": complaints,
                "events": total,
                "reset_seconds": round(reset, 2),
                "replay_seconds": round(replay, 2),
                "first_handled_after_seconds": round(first, 2) if first is not None else None,
                "rebuild_per_s": round(total / (reset + replay), 1),
                "bare_read_per_s": round(total / bare, 1),
                "problems": problems,
                "problems_reset": answer.get("problems"),
            }

        return asyncio.run(measure())
    finally:
        _stop(proc)
        asyncio.run(delete_topics(h.bootstrap, prefix))
