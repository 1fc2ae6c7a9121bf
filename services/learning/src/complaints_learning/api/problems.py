"""HTTP resource: problems (recurring root causes) and their corrective actions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_learning.domain import (
    CorrectiveActionCompletion,
    CorrectiveActionCreate,
    Problem,
    complete_action,
    occurrence_of,
    plan_action,
)
from complaints_learning.projection import load_problem, problems
from complaints_shared.auth import Actor, access
from complaints_shared.errors import NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep

READ = access("agent", "analyst", "quality", "integrator")
QUALITY = access("quality")

router = APIRouter(prefix="/problems", tags=["problems"], responses=PROBLEM_RESPONSES)


class ProblemSummary(BaseModel):
    problem_id: UUID
    root_cause: str
    category: str
    product: str
    status: str
    occurrences: int
    recurrences_after_fix: int
    opened_at: datetime
    fixed_at: datetime | None
    resolved_at: datetime | None
    last_occurrence_at: datetime


class ProblemPublic(ProblemSummary):
    complaints: list[UUID]
    corrective_actions: list[dict[str, Any]]
    history: list[dict[str, Any]]
    version: int


async def _public(rt: Runtime, problem_id: UUID) -> ProblemPublic:
    p, events = await load_problem(rt.pool, rt, problem_id)
    row = await rt.pool.fetchrow("SELECT * FROM problems WHERE problem_id = $1", problem_id)
    return ProblemPublic(
        **{k: row[k] for k in ProblemSummary.model_fields},
        complaints=[UUID(c) for c in p.complaints],
        corrective_actions=[
            {
                "action_id": a.action_id,
                "type": a.type,
                "owner": a.owner,
                "due_at": a.due_at,
                "completed_at": a.completed_at,
            }
            for a in p.actions
        ],
        history=[
            {
                "version": e.version,
                "type": e.type,
                "occurred_at": e.occurred_at,
                **({"complaint_id": c} if (c := occurrence_of(e.payload)) else {}),
            }
            for e in events
        ],
        version=p.version,
    )


@router.get("", summary="Problems, most recently recurring first", **READ)
async def list_problems(
    rt: RuntimeDep,
    status: Annotated[str | None, Query(max_length=10)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ProblemSummary]:
    rows = await rt.pool.fetch(
        "SELECT * FROM problems WHERE ($1::text IS NULL OR status = $1)"
        " ORDER BY last_occurrence_at DESC, problem_id LIMIT $2",
        status,
        limit,
    )
    return [
        ProblemSummary.model_validate({k: r[k] for k in ProblemSummary.model_fields}) for r in rows
    ]


@router.get(
    "/{problem_id}", summary="A problem: its complaints, corrective actions, history", **READ
)
async def get_problem(problem_id: UUID, rt: RuntimeDep) -> ProblemPublic:
    return await _public(rt, problem_id)


async def _run(
    rt: Runtime, problem_id: UUID, decide: Callable[[Problem], list[DomainEvent]]
) -> ProblemPublic:
    def checked(p: Problem | None) -> list[DomainEvent]:
        if p is None:
            raise NotFound("problem", problem_id)
        return decide(p)

    async with rt.pool.acquire() as conn, conn.transaction():
        await problems(rt).execute(conn, problem_id, checked, redecide=False)
    return await _public(rt, problem_id)


@router.post(
    "/{problem_id}/corrective-actions",
    summary="Plan a corrective action that removes the cause",
    **QUALITY,
)
async def post_corrective_action(
    problem_id: UUID, body: CorrectiveActionCreate, rt: RuntimeDep, actor: Actor
) -> ProblemPublic:
    return await _run(rt, problem_id, lambda p: plan_action(p, body, rt.clock(), actor.subject))


@router.post(
    "/{problem_id}/corrective-actions/{action_id}/complete",
    summary="A corrective action is done (all done: the verification window starts)",
    **QUALITY,
)
async def post_completion(
    problem_id: UUID,
    action_id: str,
    body: CorrectiveActionCompletion,
    rt: RuntimeDep,
    actor: Actor,
) -> ProblemPublic:
    return await _run(rt, problem_id, lambda p: complete_action(p, action_id, body, actor.subject))
