"""The case aggregate: state as the fold of its events, commands decided against it (no I/O).

States and the commands each allows are in :data:`ALLOWED_COMMANDS`; the diagram is in
``docs/resolution.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import CommandRejected, InputRejected


class CaseState(StrEnum):
    opened = "opened"
    assigned = "assigned"
    awaiting_customer = "awaiting_customer"  # clarification requested: SLA clock paused
    investigating = "investigating"
    cause_identified = "cause_identified"
    solution_proposed = "solution_proposed"
    solution_agreed = "solution_agreed"
    actions_in_progress = "actions_in_progress"
    resolved = "resolved"
    closed = "closed"


S = CaseState
WORKING = (
    S.assigned,
    S.investigating,
    S.cause_identified,
    S.solution_proposed,
    S.solution_agreed,
    S.actions_in_progress,
)
COMPENSATION_STATES = (
    S.cause_identified,
    S.solution_proposed,
    S.solution_agreed,
    S.actions_in_progress,
)

ALLOWED: dict[str, tuple[CaseState, ...]] = {
    "assign": (S.opened, S.awaiting_customer, *WORKING),
    "request_clarification": (S.assigned, S.investigating, S.cause_identified, S.solution_proposed),
    "receive_clarification": (S.awaiting_customer,),
    "identify_cause": (S.assigned, S.investigating, S.cause_identified),
    "propose_solution": (S.cause_identified, S.solution_proposed),
    "agree_solution": (S.solution_proposed,),
    "reject_solution": (S.solution_proposed,),
    "plan_action": (S.solution_agreed, S.actions_in_progress),
    "complete_action": (S.actions_in_progress,),
    "request_compensation": COMPENSATION_STATES,
    "approve_compensation": COMPENSATION_STATES,
    "decline_compensation": COMPENSATION_STATES,
    "resolve": (S.solution_agreed, S.actions_in_progress),
    "close": (S.resolved,),
    "reopen": (S.resolved, S.closed),
}
ALLOWED_COMMANDS: dict[CaseState, list[str]] = {
    state: [c for c, states in ALLOWED.items() if state in states] for state in CaseState
}
CUSTOMER_VISIBLE = (
    "CaseAssigned",
    "ClarificationRequested",
    "SolutionProposed",
    "SolutionAgreed",
    "CaseResolved",
)
FIRST_RESPONSE_EVENTS = ("CaseAssigned", "ClarificationRequested", "SolutionProposed")


@dataclass(frozen=True)
class Action:
    action_id: str
    description: str
    owner: str
    due_at: datetime
    completed_at: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class Compensation:
    request_id: str
    amount: Decimal
    currency: str
    reason: str
    requested_by: str
    status: str = "pending"  # pending | approved | declined
    decided_by: str | None = None
    decision_note: str | None = None


@dataclass(frozen=True)
class Case:
    complaint_id: UUID
    state: CaseState
    version: int
    severity: str
    category: str
    reference: str
    language: str
    reply_channel: str
    customer_name: str | None
    received_at: datetime
    product: str | None = None
    safety_incident: bool = False
    owner: dict[str, Any] | None = None
    owners: tuple[dict[str, Any], ...] = ()
    cause: dict[str, Any] | None = None
    proposals: tuple[dict[str, Any], ...] = ()
    rejections: tuple[dict[str, Any], ...] = ()
    agreed: dict[str, Any] | None = None
    actions: tuple[Action, ...] = ()
    compensations: tuple[Compensation, ...] = ()
    first_response_at: datetime | None = None
    clock_started_at: datetime | None = None  # resolution clock: received, or reopened
    pauses: tuple[tuple[datetime, datetime | None], ...] = ()
    resume_state: CaseState | None = None
    resolved_at: datetime | None = None
    resolution: dict[str, Any] | None = None
    closed_at: datetime | None = None
    reopen_count: int = 0
    escalation_level: str | None = None
    fired: frozenset[str] = field(default_factory=frozenset)

    @property
    def paused(self) -> bool:
        return bool(self.pauses) and self.pauses[-1][1] is None

    def action(self, action_id: str) -> Action | None:
        return next((a for a in self.actions if a.action_id == action_id), None)

    def compensation(self, request_id: str) -> Compensation | None:
        return next((c for c in self.compensations if c.request_id == request_id), None)


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def evolve(case: Case | None, e: Event) -> Case | None:
    """The case after event ``e``."""
    d, at = e.data, e.occurred_at
    if e.type == "CaseOpened":
        return Case(
            complaint_id=e.stream_id,
            state=S.opened,
            version=e.version,
            severity=d["severity"],
            category=d["category"],
            reference=d.get("reference", ""),
            language=d.get("language", "en"),
            reply_channel=d.get("reply_channel", "email"),
            customer_name=d.get("customer_name"),
            product=d.get("product"),
            safety_incident=bool(d.get("safety_incident")),
            received_at=_dt(d["received_at"]) if d.get("received_at") else at,
            clock_started_at=_dt(d["received_at"]) if d.get("received_at") else at,
        )
    if case is None:
        return None
    c = replace(case, version=e.version)
    if e.type in FIRST_RESPONSE_EVENTS and c.first_response_at is None:
        c = replace(c, first_response_at=at)
    match e.type:
        case "CaseAssigned":
            entry = {**d["owner"], "assigned_at": at.isoformat(), "by": d.get("assigned_by")}
            state = S.assigned if c.state is S.opened else c.state
            c = replace(c, owner=d["owner"], owners=(*c.owners, entry), state=state)
        case "ClarificationRequested":
            c = replace(
                c, state=S.awaiting_customer, resume_state=c.state, pauses=(*c.pauses, (at, None))
            )
        case "ClarificationReceived":
            back = c.resume_state if c.resume_state not in (None, S.assigned) else S.investigating
            pauses = (*c.pauses[:-1], (c.pauses[-1][0], at)) if c.paused else c.pauses
            c = replace(c, state=back or S.investigating, resume_state=None, pauses=pauses)
        case "CauseIdentified":
            c = replace(c, state=S.cause_identified, cause=d)
        case "SolutionProposed":
            c = replace(c, state=S.solution_proposed, proposals=(*c.proposals, d))
        case "SolutionRejected":
            c = replace(c, state=S.cause_identified, rejections=(*c.rejections, d))
        case "SolutionAgreed":
            c = replace(c, state=S.solution_agreed, agreed=d)
        case "ActionPlanned":
            action = Action(d["action_id"], d["description"], d["owner"], _dt(d["due_at"]))
            c = replace(c, state=S.actions_in_progress, actions=(*c.actions, action))
        case "ActionCompleted":
            c = replace(
                c,
                actions=tuple(
                    replace(a, completed_at=at, outcome=d.get("outcome"))
                    if a.action_id == d["action_id"]
                    else a
                    for a in c.actions
                ),
            )
        case "CompensationRequested":
            comp = Compensation(
                d["request_id"], Decimal(d["amount"]), d["currency"], d["reason"], d["requested_by"]
            )
            c = replace(c, compensations=(*c.compensations, comp))
        case "CompensationApproved" | "CompensationDeclined":
            status = "approved" if e.type == "CompensationApproved" else "declined"
            c = replace(
                c,
                compensations=tuple(
                    replace(
                        x,
                        status=status,
                        decided_by=d.get("decided_by"),
                        decision_note=d.get("note"),
                    )
                    if x.request_id == d["request_id"]
                    else x
                    for x in c.compensations
                ),
            )
        case "CaseResolved":
            c = replace(c, state=S.resolved, resolved_at=at, resolution=d)
        case "CaseClosed":
            pauses = (*c.pauses[:-1], (c.pauses[-1][0], at)) if c.paused else c.pauses
            c = replace(c, state=S.closed, closed_at=at, pauses=pauses)
        case "CaseReopened":
            c = replace(
                c,
                state=S.investigating if c.owner else S.opened,
                reopen_count=c.reopen_count + 1,
                clock_started_at=at,
                resolved_at=None,
                resolution=None,
                closed_at=None,
                agreed=None,
                pauses=(),
                escalation_level=None,
            )
        case "DeadlineApproaching" | "DeadlineBreached":
            c = replace(c, fired=c.fired | {d["timer"]})
        case "CaseEscalated":
            c = replace(
                c,
                escalation_level=d["level"],
                fired=c.fired | ({d["timer"]} if d.get("timer") else set()),
            )
    return c


def fold(events: Iterable[Event]) -> Case | None:
    case: Case | None = None
    for e in events:
        case = evolve(case, e)
    return case


def require(case: Case, command: str) -> None:
    if case.state not in ALLOWED[command]:
        raise CommandRejected(case.state.value, command, ALLOWED_COMMANDS[case.state])


def open_case(complaint: Event) -> list[NewEvent]:
    """A new case for a received complaint, carrying what customer messages need."""
    d = complaint.data
    return [
        NewEvent(
            type="CaseOpened",
            data={
                "complaint_id": str(complaint.stream_id),
                "reference": d.get("reference", ""),
                "severity": d.get("severity", "medium"),
                "category": d.get("category", "other"),
                "language": d.get("language", "en"),
                "reply_channel": d.get("reply_channel") or d.get("channel", "email"),
                "customer_name": (d.get("customer") or {}).get("name"),
                "product": d.get("product"),
                "safety_incident": bool(d.get("safety_incident")),
                "received_at": complaint.occurred_at.isoformat(),
            },
        )
    ]


def close_withdrawn(case: Case | None, withdrawal: Event) -> list[NewEvent]:
    """A withdrawn complaint's case closes (nothing to do when it is closed already)."""
    if case is None or case.state is S.closed:
        return []
    return [
        NewEvent(
            type="CaseClosed",
            data={
                "complaint_id": str(case.complaint_id),
                "reason": "withdrawn",
                "customer_reason": withdrawal.data.get("reason"),
            },
        )
    ]


def reopen_requested(case: Case | None, request: Event) -> list[NewEvent]:
    """Followup's ``ReopenRequested``: an unhappy customer reopens a resolved or closed case."""
    if case is None or case.state not in (S.resolved, S.closed):
        return []
    return [
        NewEvent(
            type="CaseReopened",
            data={
                "complaint_id": str(case.complaint_id),
                "reason": request.data.get("reason", "the customer is not satisfied"),
                "requested_by": "customer",
                "source_event": str(request.event_id),
            },
        )
    ]


def details_as_clarification(case: Case | None, details: Event) -> list[NewEvent]:
    """Details the customer added while we waited on them answer the clarification."""
    if case is None or case.state is not S.awaiting_customer or details.data.get("added_by"):
        return []
    return [
        NewEvent(
            type="ClarificationReceived",
            data={
                "complaint_id": str(case.complaint_id),
                "answer": details.data.get("note")
                or "; ".join(
                    f"{a['question']}: {a['answer']}" for a in details.data.get("answers", [])
                ),
                "received_by": "customer",
            },
        )
    ]


def new_id() -> str:
    return uuid4().hex[:12]


def check_action(case: Case, action_id: str) -> Action:
    action = case.action(action_id)
    if action is None:
        raise InputRejected(
            "body.action_id",
            f"no action {action_id!r} on this case",
            known=[a.action_id for a in case.actions],
        )
    return action
