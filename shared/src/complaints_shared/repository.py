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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from complaints_shared.envelope import Event
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.eventstore import EventRecorder

S = TypeVar("S")

Fold = Callable[[Iterable[Event[DomainEvent]]], S]
Decide = Callable[[S], Sequence[DomainEvent]]
Project = Callable[[Any, S, Sequence[Event[DomainEvent]]], Awaitable[None]]

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


class Repository(Generic[S]):
    def __init__(
        self,
        store: EventRecorder,
        fold: Fold[S],
        project: Project[S] | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.store = store
        self.fold = fold
        self.project = project
        self.attempts = attempts

    async def load(self, conn: Any, stream_id: UUID) -> Loaded[S]:
        events = await self.store.load(conn, stream_id)
        return Loaded(self.fold(events), len(events), events)

    async def create(self, conn: Any, stream_id: UUID, events: Sequence[DomainEvent]) -> Saved[S]:
        """Start a new stream with ``events``: nothing to load or fold first.  A stream that
        exists already raises :class:`ConcurrencyConflict` (the append's version check)."""
        recorded = await self.store.append(conn, stream_id, 0, events)
        state = self.fold(recorded)
        if self.project is not None:
            await self.project(conn, state, recorded)
        return Saved(state, len(recorded), recorded)

    async def execute(
        self,
        conn: Any,
        stream_id: UUID,
        decide: Decide[S],
        *,
        expected_version: int | None = None,
        redecide: bool = True,
    ) -> Saved[S]:
        """Decide on the stream's state and append what was decided (see the module's
        conflict policy).  No new events: nothing is written, and the state is returned."""
        attempts = self.attempts if redecide and expected_version is None else 1
        for attempt in range(1, attempts + 1):
            loaded = await self.load(conn, stream_id)
            if expected_version is not None and loaded.version != expected_version:
                raise ConcurrencyConflict(stream_id, expected_version, loaded.version)
            new = list(decide(loaded.state))
            if not new:
                return Saved(loaded.state, loaded.version, [])
            try:
                recorded = await self.store.append(conn, stream_id, loaded.version, new)
            except ConcurrencyConflict:
                if attempt == attempts:
                    raise
                continue
            state = self.fold([*loaded.events, *recorded])
            if self.project is not None:
                await self.project(conn, state, recorded)
            return Saved(state, loaded.version + len(recorded), recorded)
        raise AssertionError("unreachable")  # pragma: no cover
