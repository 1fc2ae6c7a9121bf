"""Learning's problem streams and their read model."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from complaints_learning.domain import Problem, counted_by, fold
from complaints_learning.resources import LearningResources
from complaints_shared.envelope import Event
from complaints_shared.errors import NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.events import learning as ev
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
    conn: asyncpg.Connection,
    events: Sequence[Event[DomainEvent]],
    problem: Problem,
    *,
    link: bool = True,
) -> None:
    """Refresh the problem's row and link the complaints the events counted (one statement).

    ``link=False``: the row alone, for a rebuild's reset, which has just emptied the
    complaints' facts (its replay links them again); linking a large problem's every
    complaint there took about an eighth of the reset's time, and changed nothing."""
    opened = next((e.occurred_at for e in events if isinstance(e.payload, ev.ProblemOpened)), None)
    last = max(e.occurred_at for e in events)
    s = problem.signature
    # the complaints these events counted (not all of the problem's again: one row per
    # occurrence, however large the problem grows); a withdrawn one is unlinked by the handler
    linked: list[UUID] = []
    if link:
        counted = {str(c) for e in events for c in counted_by(e.payload)}
        linked = [UUID(c) for c in counted if c in problem.complaints]
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
        opened or last,
        problem.fixed_at,
        problem.resolved_at,
        last,
        problem.version,
        any(isinstance(e.payload, OCCURRENCES) for e in events),
        linked,
    )


async def load_problem(
    conn: asyncpg.Connection | asyncpg.Pool, rt: Runtime, problem_id: UUID
) -> tuple[Problem, list[Event[DomainEvent]]]:
    loaded = await problems(rt).load(conn, problem_id)
    if loaded.state is None:
        raise NotFound("problem", problem_id)
    return loaded.state, loaded.events
