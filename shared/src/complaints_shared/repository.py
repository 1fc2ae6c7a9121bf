"""The repository: load (fold) → decide → append with optimistic concurrency → project.

Every service changes its aggregates through :meth:`Repository.execute` (or starts a new
stream with :meth:`Repository.create`, which has nothing to load), in the caller's
transaction.  The conflict policy is one, and it depends on who decided:

- **A handler or a timer** (``expected_version=None``, ``redecide=True``): when another writer
  appended first, the decision is taken again on the fresh state, at most ``attempts`` times
  (then :class:`ConcurrencyConflict` propagates and the caller's retry policy applies).  This
  is no blind retry: the decision sees what happened meanwhile.
- **An HTTP command** (``redecide=False``): a person decided on what they saw.  With
  ``expected_version`` (from ``If-Match``) a stream at another version is refused at once;
  without it, the state loaded now is what the command is checked against.  Either way a
  concurrent append answers 409 carrying the stream's current version, and nothing changes.

``decide`` is pure: it returns the new events (payload models), and raises a domain error to
refuse.  The projection sees the state after the new events and the recorded events, and writes
read models in the same transaction.  Side effects (messages to customers, timers) are outputs
of the decision or derived by the projection from the state, never added by the store.

A repository may keep the latest states of recently used streams (:class:`StateCache`), so that
:meth:`Repository.execute` reads only the events appended since, instead of folding a long
stream again for every decision.  A cached state is used only while the event it was folded up
to is still the stream's event at that version (event ids are unique, and a rolled-back append
leaves nothing behind), so a state from a transaction that did not commit is never used.  Only
for aggregates whose state holds no personal data: a cached state would outlive an erasure.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from complaints_shared.envelope import Event
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.eventstore import EventRecorder
from complaints_shared.latest import keep_latest

S = TypeVar("S")

Fold = Callable[[Iterable[Event[DomainEvent]]], S]
Decide = Callable[[S], Sequence[DomainEvent]]
# a projection may answer what it wrote (a new row, say), handed back as ``Saved.projected``
Project = Callable[[Any, S, Sequence[Event[DomainEvent]]], Awaitable[Any]]

DEFAULT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    state: S
    version: int
    events: list[Event[DomainEvent]]


@dataclass(frozen=True, slots=True)
class Saved(Generic[S]):
    state: S
    version: int
    recorded: list[Event[DomainEvent]]
    projected: Any = None  # what the projection answered, if anything


@dataclass(frozen=True, slots=True)
class _Cached(Generic[S]):
    state: S
    version: int
    event_id: UUID  # the stream's event at ``version``, which ``state`` was folded up to


class StateCache(Generic[S]):
    """The latest state of up to ``size`` recently used streams, in this process (see the
    module's docstring).  ``resume(state, events)`` continues a fold from a state; one cache is
    shared by every repository of the same aggregate (say, every replica's handlers and API)."""

    def __init__(
        self, resume: Callable[[S, Iterable[Event[DomainEvent]]], S], size: int = 10_000
    ) -> None:
        self.resume = resume
        self.size = size
        self._states: OrderedDict[UUID, _Cached[S]] = OrderedDict()

    def get(self, stream_id: UUID) -> _Cached[S] | None:
        found = self._states.get(stream_id)
        if found is not None:
            self._states.move_to_end(stream_id)
        return found

    def put(self, stream_id: UUID, state: S, last: Event[DomainEvent]) -> None:
        keep_latest(self._states, stream_id, _Cached(state, last.version, last.event_id), self.size)

    def forget(self, stream_id: UUID) -> None:
        self._states.pop(stream_id, None)


class Repository(Generic[S]):
    def __init__(
        self,
        store: EventRecorder,
        fold: Fold[S],
        project: Project[S] | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        cache: StateCache[S] | None = None,
    ) -> None:
        self.store = store
        self.fold = fold
        self.project = project
        self.attempts = attempts
        self.cache = cache

    async def _current(self, conn: Any, stream_id: UUID) -> tuple[S, int]:
        """The stream's state and version for a decision: from the cache and the events
        appended since, when the cached state is still valid; else folded from the start."""
        assert self.cache is not None
        cached = self.cache.get(stream_id)
        if cached is not None:
            events = await self.store.load(conn, stream_id, cached.version)
            continued = self._continued(stream_id, cached, events)
            if continued is not None:
                return continued
        return await self._folded(conn, stream_id)

    def _continued(
        self, stream_id: UUID, cached: _Cached[S], events: list[Event[DomainEvent]]
    ) -> tuple[S, int] | None:
        """The cached state continued with ``events`` (the stream's from the cached version
        on) and its version; None, and forgotten, when it is no longer valid."""
        assert self.cache is not None
        if events and events[0].event_id == cached.event_id:
            newer = events[1:]
            state = self.cache.resume(cached.state, newer) if newer else cached.state
            if newer:
                self.cache.put(stream_id, state, newer[-1])
            return state, cached.version + len(newer)
        self.cache.forget(stream_id)  # not committed after all, or the stream was removed
        return None

    async def _folded(self, conn: Any, stream_id: UUID) -> tuple[S, int]:
        """The stream folded from the start, and its version; cached when there is a cache."""
        events = await self.store.load(conn, stream_id)
        return self._fold(stream_id, events), len(events)

    def _fold(self, stream_id: UUID, events: list[Event[DomainEvent]]) -> S:
        """``events`` (all of the stream's) folded; the state cached when there is a cache."""
        state = self.fold(events)
        if self.cache is not None and events:
            self.cache.put(stream_id, state, events[-1])
        return state

    async def states(self, conn: Any, stream_ids: Iterable[UUID]) -> dict[UUID, S]:
        """Several streams' current states, in one round trip: each continued from its cached
        state with the events appended since (when the cache has a valid one), else folded
        from the start; for reads that decide nothing (deciding goes through
        :meth:`execute`)."""
        cached = {s: self.cache.get(s) if self.cache else None for s in stream_ids}
        loaded = await self.store.load_many(
            conn, {s: c.version if c else 1 for s, c in cached.items()}
        )
        out: dict[UUID, S] = {}
        for stream_id, c in cached.items():
            events = loaded.get(stream_id, [])
            if c is None:  # what was just read is the whole stream
                out[stream_id] = self._fold(stream_id, events)
                continue
            continued = self._continued(stream_id, c, events)
            out[stream_id] = (continued or await self._folded(conn, stream_id))[0]
        return out

    async def load(self, conn: Any, stream_id: UUID) -> Loaded[S]:
        events = await self.store.load(conn, stream_id)
        return Loaded(self.fold(events), len(events), events)

    async def create(self, conn: Any, stream_id: UUID, events: Sequence[DomainEvent]) -> Saved[S]:
        """Start a new stream with ``events``: nothing to load or fold first.  A stream that
        exists already raises :class:`ConcurrencyConflict` (the append's version check)."""
        return await self._started(conn, await self.store.append(conn, stream_id, 0, events))

    async def create_many(
        self,
        conn: Any,
        streams: Mapping[UUID, Sequence[DomainEvent]],
        trace_contexts: Mapping[UUID, Mapping[str, str]] | None = None,
    ) -> dict[UUID, Saved[S]]:
        """:meth:`create` for several new streams, written in one round trip, each projected;
        each stream's events carry its own trace context (``trace_contexts``; else the running
        span's).  A stream that exists already raises :class:`ConcurrencyConflict`; then
        nothing of the call is written or projected, and the caller's transaction goes on."""
        recorded = await self.store.create_many(conn, streams, trace_contexts)
        return {s: await self._started(conn, events) for s, events in recorded.items()}

    async def _started(self, conn: Any, recorded: list[Event[DomainEvent]]) -> Saved[S]:
        """A new stream's state after ``recorded`` (all its events), projected."""
        state = self.fold(recorded)
        projected = await self.project(conn, state, recorded) if self.project else None
        return Saved(state, len(recorded), recorded, projected)

    async def execute(
        self,
        conn: Any,
        stream_id: UUID,
        decide: Decide[S],
        *,
        expected_version: int | None = None,
        redecide: bool = True,
        likely_new: bool = False,
    ) -> Saved[S]:
        """Decide on the stream's state and append what was decided (see the module's
        conflict policy).  No new events: nothing is written, and the state is returned.

        ``likely_new`` (a handler of the event that starts the stream): the first decision is
        taken on the empty state and appended at version 0 without reading the stream first.
        A stream that exists after all makes that append a conflict, and the decision is taken
        again on what the stream holds, as for any conflict (an extra attempt); so is one that
        decides nothing on the empty state (the stream's own state may say otherwise)."""
        attempts = self.attempts if redecide and expected_version is None else 1
        guess = likely_new and attempts > 1
        if guess:
            attempts += 1  # the guess is an attempt of its own
        for attempt in range(1, attempts + 1):
            so_far: list[Event[DomainEvent]] = []
            guessed, guess = guess, False
            if guessed:
                current, version = self.fold([]), 0
            elif self.cache is not None:
                current, version = await self._current(conn, stream_id)
            else:
                loaded = await self.load(conn, stream_id)
                current, version, so_far = loaded.state, loaded.version, loaded.events
            if expected_version is not None and version != expected_version:
                raise ConcurrencyConflict(stream_id, expected_version, version)
            new = list(decide(current))
            if not new:
                if guessed:
                    continue
                return Saved(current, version, [])
            try:
                recorded = await self.store.append(conn, stream_id, version, new)
            except ConcurrencyConflict:
                if attempt == attempts:
                    raise
                continue
            if self.cache is not None:
                state = self.cache.resume(current, recorded)
                self.cache.put(stream_id, state, recorded[-1])
            else:
                state = self.fold([*so_far, *recorded])
            projected = await self.project(conn, state, recorded) if self.project else None
            return Saved(state, version + len(recorded), recorded, projected)
        raise AssertionError("unreachable")  # pragma: no cover
