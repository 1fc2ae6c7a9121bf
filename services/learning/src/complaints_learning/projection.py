"""Learning's problem streams and their read model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from complaints_learning.domain import Problem, counted_by, evolve, fold
from complaints_learning.resources import LearningResources
from complaints_shared.envelope import Event
from complaints_shared.errors import NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.events import learning as ev
from complaints_shared.eventstore import PostgresEventStore
from complaints_shared.repository import Repository
from complaints_shared.service import Runtime

OCCURRENCES = (ev.ProblemOpened, ev.RecurrenceDetected, ev.RecurrenceAfterFix)


def problems(rt: Runtime) -> Repository[Problem | None]:
    async def project_problem(
        conn: asyncpg.Connection, problem: Problem | None, recorded: Sequence[Event[DomainEvent]]
    ) -> None:
        if problem is not None:
            await project(conn, recorded, problem)

    res: LearningResources = rt.resources
    return Repository(rt.store, fold, project_problem, cache=res.problem_states)


async def project(
    conn: asyncpg.Connection, events: Sequence[Event[DomainEvent]], problem: Problem
) -> None:
    """Refresh the problem's row and link the complaints the events counted (one statement)."""
    row = Folded(events[0].occurred_at, problem)
    for e in events:
        row.note(e)
    # the complaints these events counted (not all of the problem's again: one row per
    # occurrence, however large the problem grows); a withdrawn one is unlinked by the handler
    counted = {str(c) for e in events for c in counted_by(e.payload)}
    await write_row(conn, row, linked=[UUID(c) for c in counted if c in problem.complaints])


@dataclass
class Folded:
    """A problem's state as of the events added so far, and what its row takes of them: when
    the first opened it, when the latest happened, whether any counted a complaint."""

    last: datetime
    problem: Problem | None = None
    version: int = 0
    opened: datetime | None = None
    occurred: bool = False

    def add(self, e: Event[DomainEvent]) -> None:
        """The state after ``e``, and what the row takes of it (a rebuild's read)."""
        self.problem = evolve(self.problem, e)
        self.version = e.version
        self.note(e)

    def note(self, e: Event[DomainEvent]) -> None:
        """What the row takes of ``e``, which :attr:`problem` includes already."""
        if self.opened is None and isinstance(e.payload, ev.ProblemOpened):
            self.opened = e.occurred_at
        self.last = max(self.last, e.occurred_at)
        self.occurred = self.occurred or isinstance(e.payload, OCCURRENCES)


async def write_row(conn: asyncpg.Connection, row: Folded, linked: Sequence[UUID] = ()) -> None:
    """The problem's row (``row.occurred``: its last occurrence is ``row.last``), and the
    complaints in ``linked`` linked to it."""
    problem = row.problem
    assert problem is not None, "a row is written for a problem that exists"
    s = problem.signature
    await conn.execute(
        "WITH p AS (INSERT INTO problems (problem_id, signature, root_cause, category, product,"
        " status, occurrences, recurrences_after_fix, opened_at, fixed_at, resolved_at,"
        " last_occurrence_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
        " $12, $13) ON CONFLICT (problem_id) DO UPDATE SET status = $6, occurrences = $7,"
        " recurrences_after_fix = $8, fixed_at = $10, resolved_at = $11,"
        " last_occurrence_at = CASE WHEN $14 THEN $12 ELSE problems.last_occurrence_at END,"
        " version = $13)"
        " UPDATE complaint_facts SET problem_id = $1 WHERE complaint_id = ANY($15::uuid[])",
        problem.problem_id,
        s.key,
        s.root_cause,
        s.category,
        s.product,
        problem.status,
        len(problem.complaints),
        problem.recurrences_after_fix,
        row.opened or row.last,
        problem.fixed_at,
        problem.resolved_at,
        row.last,
        problem.version,
        row.occurred,
        list(linked),
    )


async def fold_all(conn: asyncpg.Connection, store: PostgresEventStore) -> dict[UUID, Folded]:
    """Every stream's state, its events read a chunk at a time (none kept)."""
    folded: dict[UUID, Folded] = {}
    async for chunk in store.scan(conn):
        for e in chunk:
            f = folded.get(e.stream_id)
            if f is None:
                f = folded[e.stream_id] = Folded(e.occurred_at)
            f.add(e)
    return folded


async def catch_up(
    conn: asyncpg.Connection, store: PostgresEventStore, folded: dict[UUID, Folded]
) -> None:
    """Add to ``folded`` (:func:`fold_all`) the events appended since it was read, new
    streams' too."""
    behind: dict[UUID, int] = {}  # stream → the first version not added yet
    latest = "SELECT stream_id, max(version) AS version FROM events GROUP BY stream_id"
    for r in await conn.fetch(latest):
        f = folded.get(r["stream_id"])
        if f is None or r["version"] > f.version:
            behind[r["stream_id"]] = 1 if f is None else f.version + 1
    if behind:
        for stream_id, events in (await store.load_many(conn, behind)).items():
            f = folded.setdefault(stream_id, Folded(events[0].occurred_at))
            for e in events:
                f.add(e)


async def load_problem(
    conn: asyncpg.Connection | asyncpg.Pool, rt: Runtime, problem_id: UUID
) -> tuple[Problem, list[Event[DomainEvent]]]:
    loaded = await problems(rt).load(conn, problem_id)
    if loaded.state is None:
        raise NotFound("problem", problem_id)
    return loaded.state, loaded.events
