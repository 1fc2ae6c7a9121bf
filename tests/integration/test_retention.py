"""Retention: topics keep their records for good; operational rows are pruned after the
policy's periods, safely with several replicas pruning at once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from complaints_shared.policy import RetentionPolicy
from complaints_shared.retention import SHARED, Prune, prune_once
from complaints_shared.topics import Topics, ensure_topics

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


async def test_topics_are_created_with_infinite_retention(infrastructure, topic_prefix):
    topics = Topics(topic_prefix)
    created = await ensure_topics(infrastructure.kafka_bootstrap, topics.all(), 1)
    assert sorted(created) == sorted(topics.all())
    admin = AIOKafkaAdminClient(bootstrap_servers=infrastructure.kafka_bootstrap)
    await admin.start()
    try:
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics.all()]
        )
    finally:
        await admin.close()
    seen = {}
    for answer in answers:
        for resource in answer.resources:
            configs = {c[0]: c[1] for c in resource[4]}
            seen[resource[3]] = (configs["retention.ms"], configs["retention.bytes"])
    assert seen == {t: ("-1", "-1") for t in topics.all()}


@pytest.mark.parametrize("creator", ["this service", "another service, a moment before"])
async def test_created_topics_are_served_when_ensure_topics_returns(
    infrastructure, topic_prefix, caplog, creator
):
    """A consumer group that starts on topics just created reads them without a refused
    offset request (which the Kafka client logs as an ERROR): the services starting on a
    fresh platform log none, also the ones that find the topics another service has just
    created (and so do not create them)."""
    topics = Topics(topic_prefix)
    names = [topics.intake, topics.resolution, topics.followup, topics.learning]
    partitions = 3
    if creator != "this service":
        # with more partitions than this service would make: it waits for all of them
        partitions = 12
        admin = AIOKafkaAdminClient(bootstrap_servers=infrastructure.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        finally:
            await admin.close()
    created = await ensure_topics(infrastructure.kafka_bootstrap, names, 3)
    assert sorted(created) == (sorted(names) if creator == "this service" else [])
    consumer = AIOKafkaConsumer(
        *names,
        bootstrap_servers=infrastructure.kafka_bootstrap,
        group_id=f"{topic_prefix}served",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        await consumer.start()
        try:
            for _ in range(50):  # until the group has assigned the partitions
                await consumer.getmany(timeout_ms=100)
                if consumer.assignment():
                    break
            assert len(consumer.assignment()) == len(names) * partitions
            await consumer.getmany(timeout_ms=500)  # their offsets are looked up now
            positions = [await consumer.position(tp) for tp in consumer.assignment()]
        finally:
            await consumer.stop()
    assert positions == [0] * len(names) * partitions
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_pruning_removes_only_done_rows_past_their_period_across_replicas(pool):
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE jobs (id int PRIMARY KEY, done_at timestamptz)")
        # outbox rows need their events
        rows = []
        for i in range(2500):
            sent = NOW - timedelta(days=8) if i < 2000 else (None if i % 2 else NOW)
            rows.append((uuid.uuid4(), sent))
        await conn.executemany(
            "INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)"
            " VALUES ($1, 1, $1, 'Pinged', now(), '{}'::jsonb)",
            [(r[0],) for r in rows],
        )
        await conn.executemany(
            "INSERT INTO outbox (event_id, topic, sent_at) VALUES ($1, 't', $2)", rows
        )
        await conn.executemany(
            "INSERT INTO inbox (consumer, event_id, event_type, processed_at)"
            " VALUES ('c', $1, 'Pinged', $2)",
            [(uuid.uuid4(), NOW - timedelta(days=31 if i < 10 else 1)) for i in range(20)],
        )
        await conn.executemany(
            "INSERT INTO jobs VALUES ($1, $2)",
            [(i, NOW - timedelta(days=2) if i < 5 else None) for i in range(10)],
        )
    policy = RetentionPolicy(prune_batch=300)
    rules = [*SHARED, Prune("jobs", "done_at < $1", lambda _: timedelta(days=1))]

    # two replicas at once: each row goes once, nobody waits or fails
    first, second = await asyncio.gather(
        prune_once(pool, rules, policy, lambda: NOW), prune_once(pool, rules, policy, lambda: NOW)
    )
    assert {t: first[t] + second[t] for t in first} == {"outbox": 2000, "inbox": 10, "jobs": 5}
    left = await pool.fetch("SELECT sent_at FROM outbox")
    assert len(left) == 500 and all(r["sent_at"] in (None, NOW) for r in left)
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 10
    assert await pool.fetchval("SELECT count(*) FROM jobs WHERE done_at IS NULL") == 5
    assert await pool.fetchval("SELECT count(*) FROM events") == 2500  # events stay for good
    again = await prune_once(pool, rules, policy, lambda: NOW)
    assert again == {"outbox": 0, "inbox": 0, "jobs": 0}


async def test_a_locked_row_is_skipped_not_waited_for(pool):
    event = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)"
            " VALUES ($1, 1, $1, 'Pinged', now(), '{}'::jsonb)",
            event,
        )
        await conn.execute(
            "INSERT INTO outbox (event_id, topic, sent_at) VALUES ($1, 't', $2)",
            event,
            NOW - timedelta(days=30),
        )
    holder: asyncpg.Connection
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT * FROM outbox FOR UPDATE")
        removed = await asyncio.wait_for(
            prune_once(pool, SHARED, RetentionPolicy(), lambda: NOW), timeout=5
        )
        assert removed["outbox"] == 0
    assert (await prune_once(pool, SHARED, RetentionPolicy(), lambda: NOW))["outbox"] == 1
