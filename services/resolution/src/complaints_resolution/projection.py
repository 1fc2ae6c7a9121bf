"""Resolution's read models, kept in the appending transaction: the worklist row of each case
and its durable timers (every deadline the case has now, derived from its state by
:func:`complaints_resolution.sla.deadlines`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from complaints_resolution.domain import Case, fold
from complaints_resolution.sla import next_deadline, open_deadlines, timers_of
from complaints_shared.consumer import write
from complaints_shared.envelope import Event
from complaints_shared.errors import NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.policy import Policy
from complaints_shared.repository import Loaded, Repository
from complaints_shared.service import Runtime


def cases(rt: Runtime) -> Repository[Case | None]:
    """The case repository: fold, and project the worklist row and timers."""

    async def project(
        conn: asyncpg.Connection, case: Case | None, recorded: Sequence[Event[DomainEvent]]
    ) -> None:
        if case is not None:
            await save(conn, rt.policy, case, rt.clock())

    return Repository(rt.store, fold, project)


_SAVE = """
WITH worklist AS (
    INSERT INTO cases (complaint_id, reference, state, severity, category, owner_id,
                       escalation_level, next_deadline_at, received_at, updated_at, version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (complaint_id) DO UPDATE SET state = $3, severity = $4, category = $5,
        owner_id = $6, escalation_level = $7, next_deadline_at = $8, updated_at = $10,
        version = $11
), gone AS (
    DELETE FROM timers WHERE complaint_id = $1 AND key <> ALL($12::text[])
), kept AS (
    INSERT INTO timers AS t (complaint_id, key, due_at)
    SELECT $1, d.key, d.due_at FROM unnest($12::text[], $13::timestamptz[]) AS d(key, due_at)
    ON CONFLICT (complaint_id, key) DO UPDATE SET due_at = excluded.due_at
        WHERE t.due_at IS DISTINCT FROM excluded.due_at
)
SELECT 1
"""


async def save(conn: asyncpg.Connection, policy: Policy, case: Case, now: datetime) -> None:
    """Refresh the worklist row and replace the case's timers (in the caller's transaction),
    in one statement: the timers the case no longer has go, the others are set (the
    sub-statements touch disjoint timer rows, as one statement's must).  In a consumer's
    batch the statement is queued with the batch's writes (the cases opened together are
    saved in one round trip)."""
    open_now = open_deadlines(case, policy, now)
    timers = timers_of(case, policy, open_now)
    await write(
        conn,
        _SAVE,
        case.complaint_id,
        case.reference,
        case.state.value,
        case.severity,
        case.category,
        case.owner.id if case.owner else None,
        case.escalation_level,
        next_deadline(open_now),
        case.received_at,
        now,
        case.version,
        [t.key for t in timers],
        [t.due_at for t in timers],
    )


async def load_case(
    conn: asyncpg.Connection | asyncpg.Pool, rt: Runtime, complaint_id: UUID
) -> tuple[Case, Loaded[Case | None]]:
    loaded = await cases(rt).load(conn, complaint_id)
    if loaded.state is None:
        raise NotFound("case", complaint_id)
    return loaded.state, loaded
