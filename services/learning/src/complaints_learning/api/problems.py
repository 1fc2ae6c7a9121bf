"""HTTP resource: problems (recurring root causes) and their corrective actions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from complaints_learning.domain import (
    Action,
    CorrectiveActionCompletion,
    CorrectiveActionCreate,
    Problem,
    complete_action,
    occurrence_of,
    plan_action,
)
from complaints_learning.projection import load_problem, problems
from complaints_shared.auth import Actor, access
from complaints_shared.conditional import CREATED, ETAGGED, IfMatch, expected_version, versioned
from complaints_shared.errors import NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.paging import Cursor, Limit, Page, decode_cursor, instant, next_cursor
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep

READ = access("agent", "analyst", "quality", "integrator")
QUALITY = access("quality")

router = APIRouter(prefix="/problems", tags=["problems"], responses=PROBLEM_RESPONSES)

ActionId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a corrective action's id")
]


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


class CorrectiveActionPublic(BaseModel):
    action_id: str
    type: str
    owner: str
    due_at: datetime
    completed_at: datetime | None


def _action(a: Action) -> CorrectiveActionPublic:
    return CorrectiveActionPublic(
        action_id=a.action_id,
        type=a.type,
        owner=a.owner,
        due_at=a.due_at,
        completed_at=a.completed_at,
    )


class ProblemPublic(ProblemSummary):
    complaints: list[UUID]
    corrective_actions: list[CorrectiveActionPublic]
    history: list[dict[str, Any]]
    version: int


async def _public(rt: Runtime, problem_id: UUID) -> ProblemPublic:
    p, events = await load_problem(rt.pool, rt, problem_id)
    row = await rt.pool.fetchrow("SELECT * FROM problems WHERE problem_id = $1", problem_id)
    return ProblemPublic(
        **{k: row[k] for k in ProblemSummary.model_fields},
        complaints=[UUID(c) for c in p.complaints],
        corrective_actions=[_action(a) for a in p.actions],
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
    status: Annotated[Literal["open", "fixing", "fixed", "resolved"] | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ProblemSummary]:
    after_at, after_id = decode_cursor(cursor, instant, UUID) if cursor else (None, None)
    rows = await rt.pool.fetch(
        "SELECT * FROM problems WHERE ($1::text IS NULL OR status = $1)"
        " AND ($2::timestamptz IS NULL OR (last_occurrence_at, problem_id) < ($2, $3))"
        " ORDER BY last_occurrence_at DESC, problem_id DESC LIMIT $4",
        status,
        after_at,
        after_id,
        limit + 1,
    )
    return Page(
        items=[
            ProblemSummary.model_validate({k: r[k] for k in ProblemSummary.model_fields})
            for r in rows[:limit]
        ],
        next_cursor=next_cursor(
            rows, limit, lambda r: (r["last_occurrence_at"].isoformat(), r["problem_id"])
        ),
    )


@router.get(
    "/{problem_id}",
    summary="A problem: its complaints, corrective actions, history",
    **READ,
    **ETAGGED,
)
async def get_problem(problem_id: UUID, rt: RuntimeDep) -> ProblemPublic:
    view = await _public(rt, problem_id)
    return versioned(view, view.version)


async def _execute(
    rt: Runtime,
    problem_id: UUID,
    if_match: str | None,
    decide: Callable[[Problem], list[DomainEvent]],
) -> Problem:
    def checked(p: Problem | None) -> list[DomainEvent]:
        if p is None:
            raise NotFound("problem", problem_id)
        return decide(p)

    async with rt.transaction() as conn:
        saved = await problems(rt).execute(
            conn,
            problem_id,
            checked,
            expected_version=expected_version(if_match),
            redecide=False,
        )
    assert saved.state is not None
    return saved.state


@router.post(
    "/{problem_id}/corrective-actions",
    summary="Plan a corrective action that removes the cause (201: the action, at its Location)",
    **QUALITY,
    **CREATED,
)
async def post_corrective_action(
    problem_id: UUID,
    body: CorrectiveActionCreate,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CorrectiveActionPublic:
    p = await _execute(
        rt, problem_id, if_match, lambda p: plan_action(p, body, rt.clock(), actor.subject)
    )
    action = p.actions[-1]  # the command adds exactly one
    return versioned(
        _action(action),
        p.version,
        status_code=201,
        location=f"/problems/{problem_id}/corrective-actions/{action.action_id}",
    )


@router.get(
    "/{problem_id}/corrective-actions/{action_id}",
    summary="One corrective action of the problem",
    **READ,
    **ETAGGED,
)
async def get_corrective_action(
    problem_id: UUID, action_id: ActionId, rt: RuntimeDep
) -> CorrectiveActionPublic:
    p, _ = await load_problem(rt.pool, rt, problem_id)
    action = next((a for a in p.actions if a.action_id == action_id), None)
    if action is None:
        raise NotFound("corrective action", action_id)
    return versioned(_action(action), p.version)


@router.post(
    "/{problem_id}/corrective-actions/{action_id}/complete",
    summary="A corrective action is done (all done: the verification window starts)",
    **QUALITY,
    **ETAGGED,
)
async def post_completion(
    problem_id: UUID,
    action_id: ActionId,
    body: CorrectiveActionCompletion,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> ProblemPublic:
    await _execute(
        rt, problem_id, if_match, lambda p: complete_action(p, action_id, body, actor.subject)
    )
    view = await _public(rt, problem_id)
    return versioned(view, view.version)
