"""The event store contract, written once and run against every implementation: in memory
(fast domain tests) and PostgreSQL (the real server, outbox included).  The repository's
conflict policy, and the sealing of personal data with the keyring (crypto-shredding), are
checked on both as well."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest

from complaints_shared.db import create_pool
from complaints_shared.envelope import Event
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.eventstore import (
    LOAD_MANY,
    EventRecorder,
    InMemoryEventStore,
    PostgresEventStore,
)
from complaints_shared.privacy import (
    ERASED,
    KEYRING_SESSION,
    KEYS,
    InMemoryKeyring,
    Keyring,
    PostgresKeyring,
    UnknownDataSubject,
    load_master_key,
    new_master_key,
)
from complaints_shared.repository import Repository, StateCache
from tests.events import Confided, Happened, Item
from tests.support import CountingPool, migrated_pool, plan_once_grown, plans_made, unsealed_text

TOPIC = "complaints.test.v1"


@dataclass
class Backend:
    store: EventRecorder
    transaction: Callable[[], Any]  # async context manager giving the ``conn`` to pass
    queued: Callable[[], Awaitable[list[tuple[str, int]]]]  # (topic, version) in outbox order
    keyring: Keyring
    stored: Callable[[uuid.UUID], Awaitable[str]]  # a stream's payloads as stored, as text

    async def append(self, stream: uuid.UUID, expected: int, events: list[DomainEvent]) -> None:
        async with self.transaction() as conn:
            await self.store.append(conn, stream, expected, events)

    async def load(self, stream: uuid.UUID) -> list[Event[DomainEvent]]:
        async with self.transaction() as conn:
            return await self.store.load(conn, stream)


@pytest.fixture
async def memory_backend() -> Backend:
    keyring = InMemoryKeyring()
    store = InMemoryEventStore(source="/complaints/test", topic=TOPIC, keyring=keyring)

    @asynccontextmanager
    async def no_transaction() -> AsyncIterator[None]:
        yield None

    async def queued() -> list[tuple[str, int]]:
        return [(store.topic, e.version) for e in store.queued]

    async def stored(stream: uuid.UUID) -> str:
        return orjson.dumps(store.stored.get(stream, [])).decode()

    return Backend(store, no_transaction, queued, keyring, stored)


@pytest.fixture
async def postgres_backend(database: str) -> AsyncIterator[Backend]:
    pool = await migrated_pool(database)
    keyring = PostgresKeyring(pool, load_master_key(new_master_key()))
    await keyring.migrate()
    store = PostgresEventStore(source="/complaints/test", topic=TOPIC, keyring=keyring)

    @asynccontextmanager
    async def transaction() -> AsyncIterator[Any]:
        async with pool.acquire() as conn, conn.transaction():
            yield conn

    async def queued() -> list[tuple[str, int]]:
        rows = await pool.fetch(  # a row without its event would read as version None
            "SELECT o.topic, e.version FROM outbox o LEFT JOIN events e USING (event_id)"
            " ORDER BY o.position"
        )
        return [(r["topic"], r["version"]) for r in rows]

    async def stored(stream: uuid.UUID) -> str:
        rows = await pool.fetch(
            "SELECT data::text FROM events WHERE stream_id = $1 ORDER BY version", stream
        )
        return "\n".join(r["data"] for r in rows)

    try:
        yield Backend(store, transaction, queued, keyring, stored)
    finally:
        await pool.close()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Backend:
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


def ev(n: int) -> Happened:
    return Happened(n=n, text="açaí, árvíztűrő, ñandú")


def ns(events: list[Event[DomainEvent]]) -> list[int]:
    return [e.payload.n for e in events if isinstance(e.payload, Happened)]


async def test_append_then_load_returns_typed_events_in_version_order(backend: Backend):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1), ev(2)])
    await backend.append(stream, 2, [ev(3)])

    loaded = await backend.load(stream)

    assert [e.version for e in loaded] == [1, 2, 3]
    assert ns(loaded) == [1, 2, 3]
    assert all(isinstance(e.payload, Happened) for e in loaded)
    assert loaded[0].payload == ev(1)  # a payload round-trips through its JSON unchanged
    assert len({e.event_id for e in loaded}) == 3
    assert all(e.stream_id == stream and e.occurred_at.tzinfo is not None for e in loaded)
    async with backend.transaction() as conn:
        assert await backend.store.version(conn, stream) == 3
    assert await backend.load(uuid.uuid4()) == []


async def test_append_queues_every_event_for_the_topic_in_order(backend: Backend):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1), ev(2)])
    await backend.append(stream, 2, [ev(3)])
    assert await backend.queued() == [(TOPIC, 1), (TOPIC, 2), (TOPIC, 3)]


async def test_stale_or_future_expected_version_is_a_conflict_and_changes_nothing(
    backend: Backend,
):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1)])
    with pytest.raises(ConcurrencyConflict) as behind:
        await backend.append(stream, 0, [ev(2)])
    assert behind.value.actual_version == 1
    with pytest.raises(ConcurrencyConflict):  # ahead of the stream: no gaps either
        await backend.append(stream, 5, [ev(2)])
    assert ns(await backend.load(stream)) == [1]
    assert await backend.queued() == [(TOPIC, 1)]


async def test_a_batch_is_atomic_when_another_writer_took_part_of_its_versions(
    backend: Backend,
):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1)])
    await backend.append(stream, 1, [ev(2)])  # another writer took version 2
    with pytest.raises(ConcurrencyConflict):
        await backend.append(stream, 1, [ev(10), ev(11), ev(12)])  # 3 and 4 were free
    assert ns(await backend.load(stream)) == [1, 2]
    assert await backend.queued() == [(TOPIC, 1), (TOPIC, 2)]


async def test_a_conflict_leaves_the_callers_transaction_usable(backend: Backend):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1), ev(2)])
    async with backend.transaction() as conn:
        with pytest.raises(ConcurrencyConflict):
            await backend.store.append(conn, stream, 1, [ev(10), ev(11)])
        await backend.store.append(conn, stream, 2, [ev(3)])
    assert ns(await backend.load(stream)) == [1, 2, 3]


async def test_event_ids_grow_in_the_order_the_events_are_appended(backend: Backend):
    """Later events have greater ids as PostgreSQL orders uuids (by their 16 bytes), across
    streams and appends: the tables keyed by event id (events, outbox, inboxes, timelines)
    are written at the end of their indexes, not at a random page each."""
    streams = [uuid.uuid4() for _ in range(3)]
    for round_ in range(3):
        for stream in streams:
            await backend.append(stream, 2 * round_, [ev(1), ev(2)])
    loaded = {stream: await backend.load(stream) for stream in streams}
    in_append_order = [
        e.event_id
        for round_ in range(3)
        for stream in streams
        for e in loaded[stream][2 * round_ : 2 * round_ + 2]
    ]
    assert len(set(in_append_order)) == 18
    assert sorted(in_append_order, key=lambda i: i.bytes) == in_append_order


@pytest.mark.integration
async def test_a_scan_reads_every_event_in_order_a_chunk_at_a_time(postgres_backend: Backend):
    """A rebuild's read: every event (of the types asked), by stream and version, in chunks of
    at most the size asked through a cursor, personal values opened: a rebuild holds one
    chunk, however many events are stored."""
    b = postgres_backend
    streams = sorted((uuid.uuid4() for _ in range(3)), key=lambda s: s.bytes)  # as PG orders
    await b.keyring.register_many([(s, f"customer-{i}") for i, s in enumerate(streams)])
    for i, stream in enumerate(streams):
        await b.append(stream, 0, [confided(10 * i), ev(10 * i + 1), ev(10 * i + 2)])
    store = cast(PostgresEventStore, b.store)
    async with b.transaction() as conn:
        chunks = [c async for c in store.scan(conn, chunk=2)]
        happened = [c async for c in store.scan(conn, types=[Happened.event_name()], chunk=4)]

    assert [len(c) for c in chunks] == [2, 2, 2, 2, 1]
    events = [e for c in chunks for e in c]
    assert [(e.stream_id, e.version) for e in events] == [
        (s, v) for s in streams for v in (1, 2, 3)
    ]
    assert [e.payload for e in events if isinstance(e.payload, Confided)] == [
        confided(0),
        confided(10),
        confided(20),
    ]  # opened
    assert [len(c) for c in happened] == [4, 2]
    assert [ns(c) for c in happened] == [[1, 2, 11, 12], [21, 22]]


async def test_several_new_streams_are_created_at_once_each_queued_in_its_order(
    backend: Backend,
):
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await backend.keyring.register_many([(first, "customer-1"), (second, "customer-2")])
    async with backend.transaction() as conn:
        created = await backend.store.create_many(
            conn,
            {first: [confided(1), ev(2)], second: [ev(3)], third: [ev(4), ev(5), ev(6)]},
        )
    assert {s: [e.version for e in es] for s, es in created.items()} == {
        first: [1, 2],
        second: [1],
        third: [1, 2, 3],
    }
    assert [e.payload for e in created[first]] == [confided(1), ev(2)]
    for stream, expected in ((first, [2]), (second, [3]), (third, [4, 5, 6])):
        loaded = await backend.load(stream)
        assert [e.event_id for e in loaded] == [e.event_id for e in created[stream]]
        assert ns(loaded) == expected
    assert (await backend.load(first))[0].payload == confided(1)
    assert "Eva" not in unsealed_text(await backend.stored(first))  # sealed for its customer
    versions = [v for _, v in await backend.queued()]
    assert versions == [1, 2, 1, 1, 2, 3]  # in the order given, each stream's in version order


async def test_creating_streams_of_which_one_exists_writes_none_of_them(backend: Backend):
    taken, fresh = uuid.uuid4(), uuid.uuid4()
    await backend.append(taken, 0, [ev(1), ev(2)])
    async with backend.transaction() as conn:
        with pytest.raises(ConcurrencyConflict) as conflict:
            await backend.store.create_many(conn, {fresh: [ev(3)], taken: [ev(4)]})
        assert (conflict.value.stream_id, conflict.value.actual_version) == (taken, 2)
        await backend.store.append(conn, taken, 2, [ev(5)])  # the transaction goes on
    assert await backend.load(fresh) == []
    assert ns(await backend.load(taken)) == [1, 2, 5]
    assert await backend.queued() == [(TOPIC, 1), (TOPIC, 2), (TOPIC, 3)]


async def test_two_concurrent_appends_at_the_same_version_exactly_one_wins(backend: Backend):
    for _ in range(10):
        stream = uuid.uuid4()
        await backend.append(stream, 0, [ev(0)])
        results = await asyncio.gather(
            backend.append(stream, 1, [ev(1)]),
            backend.append(stream, 1, [ev(2), ev(3)]),
            return_exceptions=True,
        )
        assert len([r for r in results if isinstance(r, ConcurrencyConflict)]) == 1, results
        winner = ns(await backend.load(stream))[1:]
        assert winner in ([1], [2, 3])


# -- the repository's conflict policy, on the same backends ----------------------------------


def count(events: Any) -> int:
    return len(list(events))


async def test_a_handler_decision_is_taken_again_on_the_fresh_state(backend: Backend):
    """Another writer appends between this decision's load and its append: the repository
    loads again and decides on what is there now (no blind retry, nothing lost)."""
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1)])
    seen: list[int] = []

    async def interfering_store_append(conn: Any, sid: Any, expected: int, events: Any) -> Any:
        if len(seen) == 1:  # first attempt: somebody else comes first
            async with backend.transaction() as other:
                await original(other, stream, expected, [ev(99)])
        return await original(conn, sid, expected, events)

    original = backend.store.append
    backend.store.append = interfering_store_append  # type: ignore[method-assign]
    repository: Repository[int] = Repository(backend.store, count)

    def decide(state: int) -> list[DomainEvent]:
        seen.append(state)
        return [ev(state + 1)]

    async with backend.transaction() as conn:
        saved = await repository.execute(conn, stream, decide)
    assert seen == [1, 2]
    assert saved.version == 3 and saved.state == 3
    assert ns(await backend.load(stream)) == [1, 99, 3]


def counting_loads(backend: Backend) -> list[uuid.UUID]:
    """The streams the store is asked to read from now on."""
    loads: list[uuid.UUID] = []
    original = backend.store.load

    async def load(conn: Any, stream_id: uuid.UUID, from_version: int = 1) -> Any:
        loads.append(stream_id)
        return await original(conn, stream_id, from_version)

    backend.store.load = load  # type: ignore[method-assign]
    return loads


@pytest.mark.parametrize("cached", [False, True], ids=["folded", "cached"])
async def test_a_stream_likely_new_is_written_without_being_read_first(
    backend: Backend, cached: bool
):
    stream = uuid.uuid4()
    loads = counting_loads(backend)
    cache = StateCache(lambda state, events: state + count(events)) if cached else None
    repository: Repository[int] = Repository(backend.store, count, cache=cache)
    async with backend.transaction() as conn:
        saved = await repository.execute(conn, stream, lambda s: [ev(s + 1)], likely_new=True)
    assert loads == []
    assert (saved.version, saved.state) == (1, 1)
    assert ns(await backend.load(stream)) == [1]


async def test_a_stream_likely_new_that_exists_is_read_and_decided_again(backend: Backend):
    """The guess that the stream is new is checked by the append; a stream that exists makes
    it a conflict, and the decision is taken on what the stream holds."""
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1), ev(2)])
    seen: list[int] = []

    def decide(state: int) -> list[DomainEvent]:
        seen.append(state)
        return [ev(state + 1)]

    repository: Repository[int] = Repository(backend.store, count)
    async with backend.transaction() as conn:
        saved = await repository.execute(conn, stream, decide, likely_new=True)
    assert seen == [0, 2]
    assert (saved.version, saved.state) == (3, 3)
    assert ns(await backend.load(stream)) == [1, 2, 3]
    assert await backend.queued() == [(TOPIC, 1), (TOPIC, 2), (TOPIC, 3)]


async def test_nothing_decided_on_a_likely_new_stream_is_decided_again_on_the_stream(
    backend: Backend,
):
    """Deciding nothing on the empty state proves nothing about the stream: it is read, and
    the decision taken on what it holds."""
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1)])
    repository: Repository[int] = Repository(backend.store, count)
    async with backend.transaction() as conn:
        saved = await repository.execute(
            conn, stream, lambda s: [ev(9)] if s else [], likely_new=True
        )
    assert saved.version == 2
    assert ns(await backend.load(stream)) == [1, 9]


async def test_a_command_with_a_stale_version_is_refused_with_the_current_one(backend: Backend):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1), ev(2)])
    repository: Repository[int] = Repository(backend.store, count)
    async with backend.transaction() as conn:
        with pytest.raises(ConcurrencyConflict) as err:
            await repository.execute(
                conn, stream, lambda s: [ev(3)], expected_version=1, redecide=False
            )
    assert err.value.expected_version == 1 and err.value.actual_version == 2
    assert ns(await backend.load(stream)) == [1, 2]


async def test_a_command_losing_a_race_is_refused_not_decided_again(backend: Backend):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1)])
    original = backend.store.append
    decisions = 0

    async def racing(conn: Any, sid: Any, expected: int, events: Any) -> Any:
        async with backend.transaction() as other:
            await original(other, stream, expected, [ev(50)])
        return await original(conn, sid, expected, events)

    backend.store.append = racing  # type: ignore[method-assign]
    repository: Repository[int] = Repository(backend.store, count)

    def decide(state: int) -> list[DomainEvent]:
        nonlocal decisions
        decisions += 1
        return [ev(7)]

    async with backend.transaction() as conn:
        with pytest.raises(ConcurrencyConflict):
            await repository.execute(conn, stream, decide, redecide=False)
    assert decisions == 1
    assert ns(await backend.load(stream)) == [1, 50]


async def test_nothing_decided_writes_nothing_and_projects_nothing(backend: Backend):
    stream = uuid.uuid4()
    projected: list[int] = []

    async def project(conn: Any, state: int, recorded: Any) -> None:
        projected.append(state)

    repository: Repository[int] = Repository(backend.store, count, project)
    async with backend.transaction() as conn:
        saved = await repository.execute(conn, stream, lambda s: [])
        assert saved.recorded == [] and saved.version == 0
        saved = await repository.execute(conn, stream, lambda s: [ev(1), ev(2)])
    assert projected == [2] and saved.version == 2


async def test_several_new_streams_are_started_at_once_each_projected(backend: Backend):
    first, second = uuid.uuid4(), uuid.uuid4()
    projected: list[tuple[int, list[int]]] = []

    async def project(conn: Any, state: int, recorded: Any) -> None:
        projected.append((state, [e.version for e in recorded]))

    repository: Repository[int] = Repository(backend.store, count, project)
    async with backend.transaction() as conn:
        saved = await repository.create_many(conn, {first: [ev(1), ev(2)], second: [ev(3)]})
    assert {s: (v.state, v.version) for s, v in saved.items()} == {first: (2, 2), second: (1, 1)}
    assert sorted(projected) == [(1, [1]), (2, [1, 2])]
    assert ns(await backend.load(first)) == [1, 2] and ns(await backend.load(second)) == [3]


async def test_starting_streams_of_which_one_exists_writes_and_projects_none(backend: Backend):
    taken, fresh = uuid.uuid4(), uuid.uuid4()
    await backend.append(taken, 0, [ev(1)])
    projected: list[int] = []

    async def project(conn: Any, state: int, recorded: Any) -> None:
        projected.append(state)

    repository: Repository[int] = Repository(backend.store, count, project)
    async with backend.transaction() as conn:
        with pytest.raises(ConcurrencyConflict):
            await repository.create_many(conn, {fresh: [ev(2)], taken: [ev(3)]})
        await repository.execute(conn, taken, lambda s: [ev(4)])  # the transaction goes on
    assert projected == [2]  # only the append after the conflict
    assert await backend.load(fresh) == []
    assert ns(await backend.load(taken)) == [1, 4]


async def test_load_from_a_version_returns_that_event_and_the_later_ones(backend: Backend):
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1), ev(2), ev(3)])
    async with backend.transaction() as conn:
        assert ns(await backend.store.load(conn, stream, 2)) == [2, 3]
        assert [e.version for e in await backend.store.load(conn, stream, 3)] == [3]
        assert await backend.store.load(conn, stream, 4) == []


async def test_several_streams_load_in_one_call_each_from_its_own_version(backend: Backend):
    a, b, none = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await backend.append(a, 0, [ev(1), ev(2), ev(3)])
    await backend.append(b, 0, [ev(10)])
    async with backend.transaction() as conn:
        got = await backend.store.load_many(conn, {a: 2, b: 1, none: 1})
        assert await backend.store.load_many(conn, {}) == {}
    assert {s: ns(events) for s, events in got.items()} == {a: [2, 3], b: [10]}


@pytest.mark.integration
async def test_several_streams_load_each_by_its_own_key_range_however_many_events_there_are(
    database: str,
):
    """Catching cached states up (``load_many`` from each stream's cached version: a batch of
    learning's, for every problem it counts) reads each stream's range of the primary key, not
    the whole events table: as a plain join it hashed every event for any list of streams."""
    pool = await migrated_pool(database)
    try:
        streams = [uuid.uuid4() for _ in range(40)]
        await pool.execute(
            "INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)"
            " SELECT s, v, gen_random_uuid(), 'Happened', now(), jsonb_build_object('n', v)"
            " FROM unnest($1::uuid[]) AS s, generate_series(1, 500) AS v",
            streams,
        )
        await pool.execute("ANALYZE events")
        rows = await pool.fetch(f"EXPLAIN {LOAD_MANY}", streams, [500] * len(streams))
        plan = "\n".join(r[0] for r in rows)
        assert "Seq Scan on events" not in plan, plan
        store = PostgresEventStore(source="/complaints/test", topic=TOPIC)
        got = await store.load_many(pool, {s: 499 for s in streams})
        assert {s: ns(events) for s, events in got.items()} == {s: [499, 500] for s in streams}
    finally:
        await pool.close()


def total(events: Any) -> int:
    return sum(e.payload.n for e in events)


def resume_total(state: int, events: Any) -> int:
    return state + total(events)


class Counting:
    """The backend's store, counting the events each load returns."""

    def __init__(self, store: EventRecorder) -> None:
        self.store = store
        self.loaded: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def load(self, conn: Any, stream_id: uuid.UUID, from_version: int = 1) -> Any:
        events = await self.store.load(conn, stream_id, from_version)
        self.loaded.append(len(events))
        return events


async def test_a_cached_state_is_continued_with_only_the_events_appended_since(backend: Backend):
    """A long stream is not folded again for every decision: the repository continues its
    cached state with what was appended since, another writer's events included."""
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(n) for n in range(1, 51)])
    store = Counting(backend.store)
    repository: Repository[int] = Repository(
        store,
        total,
        cache=StateCache(resume_total),  # type: ignore[arg-type]
    )
    async with backend.transaction() as conn:
        first = await repository.execute(conn, stream, lambda s: [ev(100)])
    await backend.append(stream, 51, [ev(7)])  # another writer, another process
    async with backend.transaction() as conn:
        second = await repository.execute(conn, stream, lambda s: [ev(1000)])
    assert first.state == sum(range(1, 51)) + 100 and first.version == 51
    assert second.state == first.state + 7 + 1000 and second.version == 53
    assert store.loaded == [50, 2]  # the second load: the cached event and the other's
    assert ns(await backend.load(stream)) == [*range(1, 51), 100, 7, 1000]


async def test_states_of_several_streams_continue_cached_ones_with_what_came_since(
    backend: Backend,
):
    """``Repository.states``: the current state of each stream, a cached one continued with
    the events another writer appended since, a stream never seen folded from the start."""
    a, b, fresh = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await backend.append(a, 0, [ev(1), ev(2)])
    await backend.append(b, 0, [ev(10)])
    repository: Repository[int] = Repository(backend.store, total, cache=StateCache(resume_total))
    async with backend.transaction() as conn:
        assert await repository.states(conn, [a, b]) == {a: 3, b: 10}
    await backend.append(a, 2, [ev(100)])  # another writer, after a's state was cached
    await backend.append(fresh, 0, [ev(7)])
    async with backend.transaction() as conn:
        assert await repository.states(conn, [a, b, fresh]) == {a: 103, b: 10, fresh: 7}
        saved = await repository.execute(conn, a, lambda s: [ev(1000)])
    assert saved.state == 1103 and saved.version == 4


@pytest.mark.integration
async def test_a_state_cached_in_a_transaction_that_rolled_back_is_never_used(
    postgres_backend: Backend,
):
    """The decision's transaction rolls back after its state was cached, and another writer
    takes that version: the next decision sees the other writer's event, not the lost one."""
    backend = postgres_backend
    stream = uuid.uuid4()
    await backend.append(stream, 0, [ev(1)])
    repository: Repository[int] = Repository(backend.store, total, cache=StateCache(resume_total))

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned):
        async with backend.transaction() as conn:
            lost = await repository.execute(conn, stream, lambda s: [ev(500)])
            assert lost.state == 501
            raise Abandoned
    await backend.append(stream, 1, [ev(20)])
    async with backend.transaction() as conn:
        saved = await repository.execute(conn, stream, lambda s: [ev(300)])
    assert saved.state == 1 + 20 + 300 and saved.version == 3
    assert ns(await backend.load(stream)) == [1, 20, 300]


# Personal data: sealed per customer, erased by destroying the customer's key.


def confided(n: int) -> Confided:
    return Confided(
        n=n,
        secret="Eva Kovács, eva@example.hu",
        note="call after 6pm on +36 30 123 4567",
        items=(Item(label="receipt", name="Eva's receipt.pdf"), Item(label="photo")),
    )


async def test_personal_values_are_sealed_where_stored_and_open_on_load(backend: Backend):
    stream = uuid.uuid4()
    await backend.keyring.register(stream, "customer-1")

    await backend.append(stream, 0, [confided(1), ev(2)])

    raw = await backend.stored(stream)
    for plain in ("Eva", "eva@example.hu", "36 30 123", "6pm"):
        assert plain not in unsealed_text(raw)
    assert "pii:1:" in raw and '"receipt"' in raw  # non-personal fields stay readable
    loaded = await backend.load(stream)
    assert loaded[0].payload == confided(1)
    assert ns(loaded) == [2]


async def test_erasing_the_customer_makes_every_copy_read_as_erased(backend: Backend):
    ours, theirs = uuid.uuid4(), uuid.uuid4()
    await backend.keyring.register(ours, "customer-1")
    await backend.keyring.register(theirs, "customer-2")
    await backend.append(ours, 0, [confided(1)])
    await backend.append(theirs, 0, [confided(2)])
    # opened once before: the process has unwrapped its key, which must not open it after
    assert (await backend.load(ours))[0].payload == confided(1)

    assert await backend.keyring.erase("customer-1") == [ours]

    erased = (await backend.load(ours))[0].payload
    assert isinstance(erased, Confided)
    assert (erased.n, erased.secret, erased.note) == (1, ERASED, None)
    assert erased.items == (Item(label="receipt", name=None), Item(label="photo"))
    assert (await backend.load(theirs))[0].payload == confided(2)  # others untouched
    # what arrives after the erasure is not kept either; the stream goes on
    await backend.append(ours, 1, [confided(3)])
    later = (await backend.load(ours))[1].payload
    assert isinstance(later, Confided) and (later.secret, later.note) == (ERASED, None)
    assert "Eva" not in unsealed_text(await backend.stored(ours))


async def test_personal_data_of_an_unknown_subject_is_refused(backend: Backend):
    stream = uuid.uuid4()
    with pytest.raises(UnknownDataSubject):
        await backend.append(stream, 0, [confided(1)])
    assert await backend.load(stream) == []
    await backend.append(stream, 0, [ev(1)])  # events without personal data need no subject
    assert ns(await backend.load(stream)) == [1]


@pytest.mark.integration
async def test_a_keyring_session_looks_keys_up_by_index_after_the_keyring_grew(database: str):
    """A keyring pool's sessions (``KEYRING_SESSION``) look keys up by index whatever their
    plans were made for: opening a batch's values stays an index lookup after the keyring grew
    from a few hundred customers (a new deployment's first hours), where a plain session kept
    the plan it made while the keyring was small and scanned every key for every batch."""
    writer = await create_pool(database, max_size=1)
    plain = await create_pool(database, max_size=1)
    keyring = await create_pool(database, max_size=1, session=KEYRING_SESSION)
    try:
        await PostgresKeyring(writer, load_master_key(new_master_key())).migrate()
        await writer.execute(
            "ALTER TABLE data_keys SET (autovacuum_enabled = off)"  # no ANALYZE meanwhile
        )

        async def keys(first: int, last: int) -> None:
            await writer.execute(
                "INSERT INTO data_keys (key_id, customer_key, wrapped)"
                " SELECT md5(i::text), 'customer-' || i, '\\x00'::bytea"
                " FROM generate_series($1::int, $2::int) AS i",
                first,
                last,
            )

        async def grow() -> None:
            await keys(801, 20_800)

        # a batch's keys, as many as its customers (those unwrapped before, and new ones): a
        # plan for any such lists is kept
        ids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 36)]
        wanted = f"'{','.join(ids[:20])}', '{','.join(ids[20:])}'"
        plans = {}
        for name, pool in (("plain", plain), ("keyring", keyring)):
            await writer.execute("TRUNCATE data_keys")  # a few hundred customers so far
            await keys(1, 800)
            async with pool.acquire() as conn:
                plans[name] = await plan_once_grown(conn, KEYS, wanted, grow)
        assert "Seq Scan on data_keys" in plans["plain"]  # the case
        assert "Seq Scan" not in plans["keyring"], plans["keyring"]
        assert "data_keys_pkey" in plans["keyring"]
    finally:
        for pool in (writer, plain, keyring):
            await pool.close()


@pytest.mark.integration
async def test_a_keyring_session_plans_its_lookups_once(database: str):
    """Batch after batch of lookups, a keyring session plans none of them again (planning each
    cost PostgreSQL more than running it)."""
    pool = await create_pool(database, max_size=1, session=KEYRING_SESSION)
    try:
        keyring = PostgresKeyring(pool, load_master_key(new_master_key()))
        await keyring.migrate()
        streams = [uuid.uuid4() for _ in range(40)]
        keys = await keyring.register_many([(s, f"customer-{i}") for i, s in enumerate(streams)])
        ids = [k.key_id for k in keys.values()]
        for n in range(10):  # past the five calls after which a plan may be kept
            found = await keyring.keys(ids[n : n + 5 + n])
            assert set(found) == set(ids[n : n + 5 + n])
        async with pool.acquire() as conn:
            generic, custom = await plans_made(conn, KEYS)
        assert custom == 0 and generic >= 10, (generic, custom)
    finally:
        await pool.close()


async def test_keyring_keeps_one_key_per_customer_until_erased(backend: Backend):
    keyring = backend.keyring
    first, second, later = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    key = await keyring.register(first, "customer-1")
    assert await keyring.register(second, "customer-1") == key
    assert await keyring.register(first, "customer-1") == key  # idempotent
    assert await keyring.key_for_stream(second) == key
    assert await keyring.subject_of(second) == "customer-1"
    assert await keyring.keys([key.key_id, "nope"]) == {key.key_id: key}

    assert await keyring.erase("customer-1") == [first, second]
    assert await keyring.erase("customer-1") == [first, second]  # idempotent
    assert await keyring.key_for_stream(first) is None
    assert await keyring.keys([key.key_id]) == {}
    # the same customer complaining again after the erasure gets a new key
    fresh = await keyring.register(later, "customer-1")
    assert fresh.key_id != key.key_id and await keyring.key_for_stream(first) is None
    with pytest.raises(UnknownDataSubject):
        await keyring.key_for_stream(uuid.uuid4())


async def test_keyring_registers_several_streams_at_once_as_one_by_one(backend: Backend):
    keyring = backend.keyring
    known, a, b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    theirs = await keyring.register(known, "customer-1")
    keys = await keyring.register_many([(a, "customer-1"), (b, "customer-2")])
    assert keys[a] == theirs  # a customer known already keeps their key
    assert keys[b] != theirs
    for stream, customer in ((a, "customer-1"), (b, "customer-2")):
        assert await keyring.key_for_stream(stream) == keys[stream]
        assert await keyring.subject_of(stream) == customer
    assert await keyring.streams_of("customer-1") == [known, a]
    assert await keyring.register_many([(a, "customer-1")]) == {a: theirs}  # idempotent


async def test_a_stream_never_written_is_forgotten_and_its_customer_keeps_the_rest(
    backend: Backend,
):
    keyring = backend.keyring
    kept, never = uuid.uuid4(), uuid.uuid4()
    key = await keyring.register(kept, "customer-1")
    assert await keyring.register_many([(never, "customer-1")]) == {never: key}
    await keyring.forget([never, uuid.uuid4()])  # one nobody registered: no error
    assert await keyring.streams_of("customer-1") == [kept]
    assert await keyring.subject_of(never) is None
    with pytest.raises(UnknownDataSubject):
        await keyring.sealing_key(never)  # not even from this process's memory
    assert await keyring.sealing_key(kept) == key


async def test_a_stream_is_sealed_for_with_its_key_and_not_after_its_erasure(backend: Backend):
    stream = uuid.uuid4()
    key = await backend.keyring.register(stream, "customer-1")
    assert await backend.keyring.sealing_key(stream) == key
    await backend.keyring.erase("customer-1")
    assert await backend.keyring.sealing_key(stream) is None  # this process's erasure: at once
    with pytest.raises(UnknownDataSubject):
        await backend.keyring.sealing_key(uuid.uuid4())


async def test_sealing_keys_prepared_for_several_streams_are_each_streams_own(backend: Backend):
    kept, erased, unknown = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    other = uuid.uuid4()
    key = await backend.keyring.register(kept, "customer-1")
    other_key = await backend.keyring.register(other, "customer-2")
    await backend.keyring.register(erased, "customer-3")
    await backend.keyring.erase("customer-3")
    await backend.keyring.prepare_sealing([kept, other, erased, unknown])  # no error for any
    assert await backend.keyring.sealing_key(kept) == key
    assert await backend.keyring.sealing_key(other) == other_key != key
    assert await backend.keyring.sealing_key(erased) is None
    with pytest.raises(UnknownDataSubject):
        await backend.keyring.sealing_key(unknown)


@pytest.mark.integration
async def test_a_batchs_opening_keys_are_one_lookup_known_or_not_and_an_erasure_elsewhere_shows(
    database: str,
):
    """Opening a batch asks the keyring once for every key: those this process unwrapped before
    (asked only whether they are still there) and new ones alike; a key another process erased
    meanwhile is absent at once, and an id that is no key's (a comma in it) matches none."""
    master = load_master_key(new_master_key())
    pool, other_pool = await migrated_pool(database), await migrated_pool(database)
    try:
        ours, theirs = PostgresKeyring(pool, master), PostgresKeyring(other_pool, master)
        await ours.migrate()
        keys = [await theirs.register(uuid.uuid4(), f"customer-{i}") for i in range(4)]
        a, b, c, d = (k.key_id for k in keys)
        lookups: list[str] = []
        ours.pool = cast(Any, CountingPool(ours.pool, lookups))
        assert await ours.keys([a, b]) == {a: keys[0], b: keys[1]}  # unwrapped now
        await theirs.erase("customer-1")
        found = await ours.keys([a, b, c, "nope", f"{a},{d}", ""])
        assert found == {a: keys[0], c: keys[2]}
        assert await ours.keys([b]) == {}
        await theirs.erase("customer-0")
        assert await ours.keys([a, c, d]) == {c: keys[2], d: keys[3]}
        assert lookups == ["fetch"] * 4  # one statement a batch
    finally:
        await pool.close()
        await other_pool.close()


@pytest.mark.integration
async def test_a_batchs_sealing_keys_are_looked_up_at_once(database: str):
    """Streams another process registered: one lookup prepares them all, and their appends
    then ask the keyring nothing; an erasure by this process meanwhile keeps nothing."""
    master = load_master_key(new_master_key())
    pool, other_pool = await migrated_pool(database), await migrated_pool(database)
    try:
        ours, theirs = PostgresKeyring(pool, master), PostgresKeyring(other_pool, master)
        await ours.migrate()
        streams = [uuid.uuid4() for _ in range(5)]
        for i, stream in enumerate(streams):
            await theirs.register(stream, f"customer-{i}")
        lookups: list[str] = []
        ours.pool = cast(Any, CountingPool(ours.pool, lookups))
        store = PostgresEventStore(source="/complaints/test", topic=TOPIC, keyring=ours)
        await ours.prepare_sealing(streams + streams[:2])
        assert lookups == ["fetch"]  # one statement for every stream
        for stream in streams:
            async with pool.acquire() as conn, conn.transaction():
                await store.append(conn, stream, 0, [confided(1)])
        assert lookups == ["fetch"]  # no append asked for its key
        await ours.prepare_sealing(streams)
        assert lookups == ["fetch"]  # known already: nothing asked
        async with pool.acquire() as conn:
            opened = [(await store.load(conn, s))[0].payload for s in streams]
        assert all(isinstance(p, Confided) and p.secret == confided(1).secret for p in opened)
    finally:
        await pool.close()
        await other_pool.close()


@pytest.mark.integration
async def test_a_process_asks_for_a_streams_sealing_key_once_and_opens_only_with_live_keys(
    database: str, monkeypatch: pytest.MonkeyPatch
):
    """Appends to a stream after its first need no keyring lookup (within SEALING_KEYS_FOR);
    an erasure by another process is not waited for when sealing (what is sealed under the
    destroyed key reads as erased), but is at once when opening."""
    master = load_master_key(new_master_key())
    pool, other_pool = await migrated_pool(database), await migrated_pool(database)
    try:
        ours, theirs = PostgresKeyring(pool, master), PostgresKeyring(other_pool, master)
        await ours.migrate()
        store = PostgresEventStore(source="/complaints/test", topic=TOPIC, keyring=ours)
        stream = uuid.uuid4()
        await theirs.register(stream, "customer-1")  # another process (intake) registered it
        lookups: list[uuid.UUID] = []
        looked_up = ours.key_for_stream

        async def counted(stream_id: uuid.UUID) -> Any:
            lookups.append(stream_id)
            return await looked_up(stream_id)

        monkeypatch.setattr(ours, "key_for_stream", counted)

        async def append(version: int) -> Confided:
            async with pool.acquire() as conn, conn.transaction():
                await store.append(conn, stream, version, [confided(version + 1)])
            async with pool.acquire() as conn:
                loaded = (await store.load(conn, stream))[version].payload
            assert isinstance(loaded, Confided)
            return loaded

        assert (await append(0)).secret == confided(1).secret
        assert (await append(1)).secret == confided(2).secret
        assert lookups == [stream]  # the second append sealed with the key it knew

        await theirs.erase("customer-1")
        after = await append(2)  # sealed under the key known, destroyed meanwhile
        assert (after.secret, after.note) == (ERASED, None)
        assert lookups == [stream]

        monkeypatch.setattr("complaints_shared.privacy.SEALING_KEYS_FOR", 0.0)
        later = await append(3)  # the key is asked for again: none is left
        assert (later.secret, later.note) == (ERASED, None)
        assert lookups == [stream, stream]
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT data::text FROM events WHERE stream_id = $1 AND version = 4", stream
            )
        assert "pii:1:" not in stored  # not sealed at all: nothing of it kept
    finally:
        await pool.close()
        await other_pool.close()
