"""HTTP resource: cases, their commands and the worklist."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from complaints_resolution import commands as cmd
from complaints_resolution.domain import Action, Case, Compensation, actor, allowed_commands
from complaints_resolution.messages import telling
from complaints_resolution.projection import cases, load_case
from complaints_resolution.resources import ResolutionResources
from complaints_resolution.sla import Clock, first_response_clock, open_deadlines, resolution_clock
from complaints_shared.auth import Actor, Principal, access
from complaints_shared.conditional import (
    CREATED,
    ETAGGED,
    IfMatch,
    expected_version,
    versioned,
)
from complaints_shared.errors import InputRejected, NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.paging import Cursor, Limit, Page, decode_cursor, next_cursor
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep

READ = access("agent", "integrator")
AGENT = access("agent")  # supervisors and managers are agents too (composite roles)
SUPERVISOR = access("supervisor")  # managers too; the amount decides who may approve

router = APIRouter(
    prefix="/cases",
    tags=["cases"],
    responses={
        **PROBLEM_RESPONSES,
        403: PROBLEM_RESPONSES[409] | {"description": "Not allowed (authority, four-eyes rule)"},
    },
)

MAX_HORIZON = timedelta(days=3650)

ItemId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="an action's or compensation request's id, as the case shows it",
        examples=["3f2a9c1d7e4b"],
    ),
]


class ClockPublic(BaseModel):
    due_at: datetime | None
    met_at: datetime | None
    paused: bool
    breached: bool
    remaining_business_seconds: float | None


class DeadlinePublic(BaseModel):
    deadline: str
    ref: str
    due_at: datetime
    overdue: bool


class ActionPublic(BaseModel):
    action_id: str
    description: str
    owner: str
    due_at: datetime
    completed_at: datetime | None
    outcome: str | None


class CompensationRequestPublic(BaseModel):
    request_id: str
    amount: str = Field(description="in the currency's minor units, as a decimal string")
    currency: str
    reason: str
    requested_by: str
    status: str
    decided_by: str | None


def _action(a: Action) -> ActionPublic:
    return ActionPublic(
        action_id=a.action_id,
        description=a.description,
        owner=a.owner,
        due_at=a.due_at,
        completed_at=a.completed_at,
        outcome=a.outcome,
    )


def _compensation(x: Compensation) -> CompensationRequestPublic:
    return CompensationRequestPublic(
        request_id=x.request_id,
        amount=str(x.amount),
        currency=x.currency,
        reason=x.reason,
        requested_by=x.requested_by,
        status=x.status,
        decided_by=x.decided_by,
    )


class CasePublic(BaseModel):
    complaint_id: UUID
    reference: str
    state: str
    version: int
    severity: str
    category: str
    product: str | None
    classified_by: str | None = Field(
        description="who last confirmed or corrected category, product and severity; null:"
        " as received (intake's suggestions are marked there)"
    )
    owner: dict[str, Any] | None
    owner_history: list[dict[str, Any]]
    cause: dict[str, Any] | None
    proposals: list[dict[str, Any]]
    rejections: list[dict[str, Any]]
    agreed_solution: dict[str, Any] | None
    actions: list[ActionPublic]
    compensation: list[CompensationRequestPublic]
    escalation_level: str | None
    reopen_count: int
    resolution: dict[str, Any] | None
    sla: dict[str, ClockPublic]
    open_deadlines: list[DeadlinePublic]
    allowed_commands: list[str]
    history: list[dict[str, Any]]


class CaseSummary(BaseModel):
    complaint_id: UUID
    reference: str
    state: str
    severity: str
    category: str
    owner_id: str | None
    escalation_level: str | None
    next_deadline_at: datetime | None
    overdue: bool
    version: int


def _clock(c: Clock) -> ClockPublic:
    return ClockPublic(
        due_at=c.due_at,
        met_at=c.met_at,
        paused=c.paused,
        breached=c.breached,
        remaining_business_seconds=c.remaining.total_seconds() if c.remaining is not None else None,
    )


def _public(case: Case, history: list[dict[str, Any]], rt: Runtime) -> CasePublic:
    now = rt.clock()
    return CasePublic(
        complaint_id=case.complaint_id,
        reference=case.reference,
        state=case.state.value,
        version=case.version,
        severity=case.severity,
        category=case.category,
        product=case.product,
        classified_by=case.classified_by,
        owner=case.owner.model_dump(mode="json") if case.owner else None,
        owner_history=[
            {**a.owner.model_dump(mode="json"), "assigned_at": a.assigned_at, "by": a.by}
            for a in case.owners
        ],
        cause=_dump(case.cause),
        proposals=[p.model_dump(mode="json", exclude_none=True) for p in case.proposals],
        rejections=[r.model_dump(mode="json", exclude_none=True) for r in case.rejections],
        agreed_solution=_dump(case.agreed),
        actions=[_action(a) for a in case.actions],
        compensation=[_compensation(x) for x in case.compensations],
        escalation_level=case.escalation_level,
        reopen_count=case.reopen_count,
        resolution=_dump(case.resolution),
        sla={
            "first_response": _clock(first_response_clock(case, rt.policy, now)),
            "resolution": _clock(resolution_clock(case, rt.policy, now)),
        },
        open_deadlines=[
            DeadlinePublic(deadline=d.deadline, ref=d.ref, due_at=d.due_at, overdue=d.due_at < now)
            for d in sorted(open_deadlines(case, rt.policy, now), key=lambda d: d.due_at)
        ],
        allowed_commands=allowed_commands(case),
        history=history,
    )


def _dump(payload: DomainEvent | None) -> dict[str, Any] | None:
    return payload.model_dump(mode="json", exclude_none=True) if payload is not None else None


async def _view(rt: Runtime, complaint_id: UUID) -> CasePublic:
    case, loaded = await load_case(rt.pool, rt, complaint_id)
    history = [
        {
            "version": e.version,
            "type": e.type,
            "occurred_at": e.occurred_at,
            **({"by": by} if (by := actor(e.payload)) else {}),
        }
        for e in loaded.events
    ]
    return _public(case, history, rt)


async def _execute(
    rt: Runtime,
    complaint_id: UUID,
    if_match: str | None,
    decide: Callable[[Case, datetime], list[DomainEvent]],
) -> Case:
    """Decide and record a command; the case after it."""
    res: ResolutionResources = rt.resources
    now = rt.clock()

    def checked(case: Case | None) -> list[DomainEvent]:
        if case is None:
            raise NotFound("case", complaint_id)
        return decide(case, now)

    async with rt.transaction() as conn:
        saved = await cases(rt).execute(
            conn,
            complaint_id,
            telling(checked, res.messages, rt.policy.calendar.timezone),
            expected_version=expected_version(if_match),
            redecide=False,
        )
    assert saved.state is not None
    return saved.state


async def _run(
    rt: Runtime,
    complaint_id: UUID,
    if_match: str | None,
    decide: Callable[[Case, datetime], list[DomainEvent]],
) -> CasePublic:
    await _execute(rt, complaint_id, if_match, decide)
    view = await _view(rt, complaint_id)
    return versioned(view, view.version)


def _by(actor: Principal) -> cmd.By:
    return cmd.By(actor.subject, actor.authority())


def _cmd(
    fn: Callable[..., list[DomainEvent]], body: Any, actor: Principal, rt: Runtime
) -> Callable[[Case, datetime], list[DomainEvent]]:
    return lambda case, now: fn(case, body, _by(actor), now, rt.policy)


@router.get(
    "/{complaint_id}", summary="One case: state, owner, cause, solution, actions, SLA", **READ
)
async def get_case(complaint_id: UUID, rt: RuntimeDep) -> CasePublic:
    view = await _view(rt, complaint_id)
    return versioned(view, view.version)


@router.post(
    "/{complaint_id}/assign", summary="Name the owner who will put this right", **AGENT, **ETAGGED
)
async def assign(
    complaint_id: UUID, body: cmd.AssignCase, rt: RuntimeDep, actor: Actor, if_match: IfMatch = None
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.assign, body, actor, rt))


@router.post(
    "/{complaint_id}/clarification-requests",
    summary="Ask the customer (pauses the resolution clock)",
    **AGENT,
    **ETAGGED,
)
async def request_clarification(
    complaint_id: UUID,
    body: cmd.RequestClarification,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.request_clarification, body, actor, rt))


@router.post(
    "/{complaint_id}/clarifications", summary="The customer's answer (clock resumes)", **AGENT
)
async def receive_clarification(
    complaint_id: UUID,
    body: cmd.ReceiveClarification,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.receive_clarification, body, actor, rt))


@router.post(
    "/{complaint_id}/cause", summary="What happened, what should have, what went wrong", **AGENT
)
async def identify_cause(
    complaint_id: UUID,
    body: cmd.IdentifyCause,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.identify_cause, body, actor, rt))


@router.post(
    "/{complaint_id}/classification",
    summary="Confirm or correct category, product and severity (suggested or not)",
    **AGENT,
    **ETAGGED,
)
async def classify(
    complaint_id: UUID,
    body: cmd.ClassifyCase,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.classify, body, actor, rt))


@router.post("/{complaint_id}/proposals", summary="Offer one or more remedies", **AGENT, **ETAGGED)
async def propose_solution(
    complaint_id: UUID,
    body: cmd.ProposeSolution,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.propose_solution, body, actor, rt))


@router.post(
    "/{complaint_id}/agreement",
    summary="The customer approved an option: outcome, indicators and deadline",
    **AGENT,
    **ETAGGED,
)
async def agree_solution(
    complaint_id: UUID,
    body: cmd.AgreeSolution,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.agree_solution, body, actor, rt))


@router.post(
    "/{complaint_id}/rejection", summary="The customer rejected the proposal", **AGENT, **ETAGGED
)
async def reject_solution(
    complaint_id: UUID,
    body: cmd.RejectSolution,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.reject_solution, body, actor, rt))


@router.post(
    "/{complaint_id}/actions",
    summary="Plan an action of the agreed solution (201: the action, at its Location)",
    **AGENT,
    **CREATED,
)
async def plan_action(
    complaint_id: UUID, body: cmd.PlanAction, rt: RuntimeDep, actor: Actor, if_match: IfMatch = None
) -> ActionPublic:
    case = await _execute(rt, complaint_id, if_match, _cmd(cmd.plan_action, body, actor, rt))
    action = case.actions[-1]  # the command adds exactly one
    return versioned(
        _action(action),
        case.version,
        status_code=201,
        location=f"/cases/{complaint_id}/actions/{action.action_id}",
    )


@router.get("/{complaint_id}/actions/{action_id}", summary="One action of the case", **READ)
async def get_action(complaint_id: UUID, action_id: ItemId, rt: RuntimeDep) -> ActionPublic:
    case, _ = await load_case(rt.pool, rt, complaint_id)
    action = case.action(action_id)
    if action is None:
        raise NotFound("action", action_id)
    return versioned(_action(action), case.version)


class ActionCompletion(BaseModel):
    model_config = cmd.CompleteAction.model_config
    outcome: cmd.Text | None = None


@router.post(
    "/{complaint_id}/actions/{action_id}/complete", summary="An action is done", **AGENT, **ETAGGED
)
async def complete_action(
    complaint_id: UUID,
    action_id: ItemId,
    body: ActionCompletion,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    command = cmd.CompleteAction(action_id=action_id, **body.model_dump())
    return await _run(rt, complaint_id, if_match, _cmd(cmd.complete_action, command, actor, rt))


@router.post(
    "/{complaint_id}/compensation-requests",
    summary="Ask for compensation (approved at once within the agent's limit)",
    **AGENT,
    **CREATED,
)
async def request_compensation(
    complaint_id: UUID,
    body: cmd.RequestCompensation,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CompensationRequestPublic:
    """201: the request (``status`` approved when within the agent's limit), at its Location."""
    case = await _execute(
        rt, complaint_id, if_match, _cmd(cmd.request_compensation, body, actor, rt)
    )
    request = case.compensations[-1]  # the command adds exactly one
    return versioned(
        _compensation(request),
        case.version,
        status_code=201,
        location=f"/cases/{complaint_id}/compensation-requests/{request.request_id}",
    )


@router.get(
    "/{complaint_id}/compensation-requests/{request_id}",
    summary="One compensation request of the case",
    **READ,
)
async def get_compensation_request(
    complaint_id: UUID, request_id: ItemId, rt: RuntimeDep
) -> CompensationRequestPublic:
    case, _ = await load_case(rt.pool, rt, complaint_id)
    request = case.compensation(request_id)
    if request is None:
        raise NotFound("compensation request", request_id)
    return versioned(_compensation(request), case.version)


class CompensationDecision(BaseModel):
    model_config = cmd.DecideCompensation.model_config
    note: cmd.Text | None = None


async def _decide_compensation(
    rt: Runtime,
    complaint_id: UUID,
    request_id: ItemId,
    body: CompensationDecision,
    actor: Principal,
    if_match: str | None,
    approve: bool,
) -> CasePublic:
    command = cmd.DecideCompensation(request_id=request_id, **body.model_dump())
    return await _run(
        rt,
        complaint_id,
        if_match,
        lambda case, now: cmd.decide_compensation(
            case, command, approve, _by(actor), now, rt.policy
        ),
    )


@router.post(
    "/{complaint_id}/compensation-requests/{request_id}/approve",
    summary="A supervisor (or manager) approves; never the requester",
    **SUPERVISOR,
    **ETAGGED,
)
async def approve_compensation(
    complaint_id: UUID,
    request_id: ItemId,
    body: CompensationDecision,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _decide_compensation(rt, complaint_id, request_id, body, actor, if_match, True)


@router.post(
    "/{complaint_id}/compensation-requests/{request_id}/decline",
    summary="A supervisor (or manager) declines; never the requester",
    **SUPERVISOR,
    **ETAGGED,
)
async def decline_compensation(
    complaint_id: UUID,
    request_id: ItemId,
    body: CompensationDecision,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _decide_compensation(rt, complaint_id, request_id, body, actor, if_match, False)


@router.post(
    "/{complaint_id}/resolve",
    summary="Resolve: the agreed solution's actions are done (or a supervisor overrides)",
    **AGENT,
    **ETAGGED,
)
async def resolve(
    complaint_id: UUID,
    body: cmd.ResolveCase,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.resolve, body, actor, rt))


@router.post("/{complaint_id}/close", summary="Close a resolved case", **AGENT, **ETAGGED)
async def close(
    complaint_id: UUID, body: cmd.CloseCase, rt: RuntimeDep, actor: Actor, if_match: IfMatch = None
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.close, body, actor, rt))


@router.post(
    "/{complaint_id}/reopen", summary="Reopen a resolved or closed case, with a reason", **AGENT
)
async def reopen(
    complaint_id: UUID, body: cmd.ReopenCase, rt: RuntimeDep, actor: Actor, if_match: IfMatch = None
) -> CasePublic:
    return await _run(rt, complaint_id, if_match, _cmd(cmd.reopen, body, actor, rt))


@router.get("", summary="The worklist: cases sorted by their nearest deadline", **READ)
async def list_cases(
    rt: RuntimeDep,
    owner: Annotated[str | None, Query(max_length=100)] = None,
    state: Annotated[str | None, Query(max_length=30)] = None,
    severity: Annotated[str | None, Query(max_length=10)] = None,
    overdue: Annotated[bool | None, Query(description="only cases past a deadline")] = None,
    breach_within: Annotated[
        timedelta | None,
        Query(description="ISO 8601 duration: deadlines within it (overdue included)"),
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CaseSummary]:
    now = rt.clock()
    if breach_within is not None and not timedelta(0) <= breach_within <= MAX_HORIZON:
        raise InputRejected("query.breach_within", "a duration from PT0S up to P3650D")
    after_at, after_id = decode_cursor(cursor, _deadline, UUID) if cursor else (None, None)
    rows = await rt.pool.fetch(
        "SELECT * FROM cases WHERE ($1::text IS NULL OR owner_id = $1)"
        " AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR severity = $3)"
        " AND ($4::boolean IS NULL OR (next_deadline_at IS NOT NULL"
        "      AND next_deadline_at < $5) = $4)"
        " AND ($6::timestamptz IS NULL OR next_deadline_at < $6)"
        " AND ($7::text IS NULL OR (coalesce(next_deadline_at, 'infinity'), complaint_id)"
        "      > ($7::text::timestamptz, $8))"
        " ORDER BY coalesce(next_deadline_at, 'infinity'), complaint_id LIMIT $9",
        owner,
        state,
        severity,
        overdue,
        now,
        now + breach_within if breach_within is not None else None,
        after_at,
        after_id,
        limit + 1,
    )
    page = rows[:limit]
    items = [
        CaseSummary(
            complaint_id=r["complaint_id"],
            reference=r["reference"],
            state=r["state"],
            severity=r["severity"],
            category=r["category"],
            owner_id=r["owner_id"],
            escalation_level=r["escalation_level"],
            next_deadline_at=r["next_deadline_at"],
            overdue=r["next_deadline_at"] is not None and r["next_deadline_at"] < now,
            version=r["version"],
        )
        for r in page
    ]
    return Page(
        items=items,
        next_cursor=next_cursor(
            rows,
            limit,
            lambda r: (
                r["next_deadline_at"].isoformat() if r["next_deadline_at"] else "infinity",
                r["complaint_id"],
            ),
        ),
    )


def _deadline(part: str) -> str:
    """A cursor's deadline: ``infinity`` or an instant with its offset, as PostgreSQL reads it."""
    if part == "infinity":
        return part
    parsed = datetime.fromisoformat(part)
    if parsed.tzinfo is None:
        raise ValueError(part)
    return parsed.isoformat()
