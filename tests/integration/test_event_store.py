"""Event store contract on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from complaints_shared.envelope import NewEvent
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.eventstore import EventStore
from tests.support import migrated_pool

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await migrated_pool(database)
    yield pool
    await pool.close()


@pytest.fixture
def store() -> EventStore:
    return EventStore(source="/complaints/test", topic="complaints.test.v1")


def ev(n: int) -> NewEvent:
    return NewEvent(type="Happened", data={"n": n, "text": "açaí, árvíztűrő, ñandú"})


async def append(
    pool: asyncpg.Pool, store: EventStore, stream: uuid.UUID, expected: int, events: list[NewEvent]
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.append(conn, stream, expected, events)


async def test_append_then_load_returns_the_events_in_version_order(pool, store):
    stream = uuid.uuid4()
    await append(pool, store, stream, 0, [ev(1), ev(2)])
    await append(pool, store, stream, 2, [ev(3)])

    loaded = await store.load(pool, stream)

    assert [e.version for e in loaded] == [1, 2, 3]
    assert [e.data["n"] for e in loaded] == [1, 2, 3]
    assert loaded[0].data["text"] == "açaí, árvíztűrő, ñandú"
    assert len({e.event_id for e in loaded}) == 3
    assert all(e.stream_id == stream and e.occurred_at.tzinfo is not None for e in loaded)
    assert await store.version(pool, stream) == 3
    assert await store.load(pool, uuid.uuid4()) == []


async def test_append_queues_every_event_in_the_outbox_of_the_same_transaction(pool, store):
    stream = uuid.uuid4()
    await append(pool, store, stream, 0, [ev(1), ev(2)])
    rows = await pool.fetch(
        "SELECT o.topic, o.sent_at, e.version FROM outbox o JOIN events e USING (event_id)"
        " ORDER BY o.position"
    )
    assert [(r["topic"], r["sent_at"], r["version"]) for r in rows] == [
        ("complaints.test.v1", None, 1),
        ("complaints.test.v1", None, 2),
    ]


async def test_stale_expected_version_is_a_conflict_and_changes_nothing(pool, store):
    stream = uuid.uuid4()
    await append(pool, store, stream, 0, [ev(1)])
    with pytest.raises(ConcurrencyConflict):
        await append(pool, store, stream, 0, [ev(2)])
    with pytest.raises(ConcurrencyConflict):  # ahead of the stream: no gaps either
        await append(pool, store, stream, 5, [ev(2)])
    assert [e.data["n"] for e in await store.load(pool, stream)] == [1]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_two_concurrent_appends_at_the_same_version_exactly_one_wins(pool, store):
    for _ in range(20):
        stream = uuid.uuid4()
        await append(pool, store, stream, 0, [ev(0)])
        results = await asyncio.gather(
            append(pool, store, stream, 1, [ev(1)]),
            append(pool, store, stream, 1, [ev(2), ev(3)]),
            return_exceptions=True,
        )
        conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
        assert len(conflicts) == 1, results
        winner = [e.data["n"] for e in await store.load(pool, stream)][1:]
        assert winner in ([1], [2, 3])
        queued = await pool.fetchval(
            "SELECT count(*) FROM outbox o JOIN events e USING (event_id) WHERE e.stream_id=$1",
            stream,
        )
        assert queued == 1 + len(winner)


async def test_a_batch_is_atomic(pool, store):
    stream = uuid.uuid4()
    await append(pool, store, stream, 0, [ev(1)])
    # another writer takes version 2 first: none of the three-event batch may land
    async with pool.acquire() as other, other.transaction():
        await store.append(other, stream, 1, [ev(2)])
    with pytest.raises(ConcurrencyConflict):
        await append(pool, store, stream, 1, [ev(10), ev(11), ev(12)])
    assert [e.data["n"] for e in await store.load(pool, stream)] == [1, 2]

    # a failure later in the caller's transaction takes the events and the outbox rows back
    with pytest.raises(RuntimeError, match="projection failed"):
        async with pool.acquire() as conn, conn.transaction():
            await store.append(conn, stream, 2, [ev(3), ev(4)])
            raise RuntimeError("projection failed")
    assert await store.version(pool, stream) == 2
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


async def test_append_outside_a_transaction_is_refused(pool, store):
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside a transaction"):
            await store.append(conn, uuid.uuid4(), 0, [ev(1)])
