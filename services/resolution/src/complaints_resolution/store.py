"""Loading, changing and saving cases: events, the worklist row and the durable timers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import asyncpg

from complaints_resolution.domain import Case, fold
from complaints_resolution.messages import with_customer_message
from complaints_resolution.resources import ResolutionResources
from complaints_resolution.sla import deadlines, next_deadline
from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import ConcurrencyConflict, NotFound
from complaints_shared.service import Runtime

Decide = Callable[[Case | None, datetime], list[NewEvent]]


async def save(conn: asyncpg.Connection, rt: Runtime, case: Case, now: datetime) -> None:
    """Refresh the worklist row and replace the case's timers (in the caller's transaction)."""
    await conn.execute(
        "INSERT INTO cases (complaint_id, reference, state, severity, category, owner_id,"
        " escalation_level, next_deadline_at, received_at, updated_at, version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (complaint_id) DO UPDATE SET state = $3, owner_id = $6,"
        " escalation_level = $7, next_deadline_at = $8, updated_at = $10, version = $11",
        case.complaint_id,
        case.reference,
        case.state.value,
        case.severity,
        case.category,
        (case.owner or {}).get("id"),
        case.escalation_level,
        next_deadline(case, rt.policy, now),
        case.received_at,
        now,
        case.version,
    )
    await conn.execute("DELETE FROM timers WHERE complaint_id = $1", case.complaint_id)
    await conn.executemany(
        "INSERT INTO timers (complaint_id, key, due_at) VALUES ($1, $2, $3)",
        [(case.complaint_id, t.key, t.due_at) for t in deadlines(case, rt.policy, now)],
    )


async def change(
    conn: asyncpg.Connection,
    rt: Runtime,
    complaint_id: UUID,
    decide: Decide,
    *,
    expected_version: int | None = None,
) -> tuple[Case | None, list[Event]]:
    """Load, decide, append (with customer messages) and save, in the caller's transaction."""
    events = await rt.store.load(conn, complaint_id)
    case = fold(events)
    if expected_version is not None and (case is None or case.version != expected_version):
        raise ConcurrencyConflict(complaint_id, expected_version, case.version if case else None)
    now = rt.clock()
    new = decide(case, now)
    if not new:
        return case, []
    if case is not None:
        res: ResolutionResources = rt.resources
        new = with_customer_message(new, case, res.messages, rt.policy.calendar.timezone)
    recorded = await rt.store.append(conn, complaint_id, len(events), new)
    case = fold(events + recorded)
    assert case is not None
    await save(conn, rt, case, now)
    return case, recorded


async def load_case(
    conn: asyncpg.Connection | asyncpg.Pool, rt: Runtime, complaint_id: UUID
) -> tuple[Case, list[Event]]:
    events = await rt.store.load(conn, complaint_id)
    case = fold(events)
    if case is None:
        raise NotFound("case", complaint_id)
    return case, events
