"""The case aggregate: state as the fold of its events, commands decided against it (no I/O).

States and the commands each allows are in :data:`ALLOWED_COMMANDS`; the diagram is in
``docs/resolution.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID, uuid4

from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, InputRejected
from complaints_shared.events import DomainEvent
from complaints_shared.events import resolution as ev
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.events.intake import (
    ComplaintDetailsAdded,
    ComplaintReceived,
    ComplaintWithdrawn,
)


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
    # investigating: reopened with its cause kept (see _NEEDS)
    "propose_solution": (S.investigating, S.cause_identified, S.solution_proposed),
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
    # confirm or correct category, product and severity, until the case is closed
    "classify": tuple(s for s in CaseState if s is not S.closed),
}
ALLOWED_COMMANDS: dict[CaseState, list[str]] = {
    state: [c for c, states in ALLOWED.items() if state in states] for state in CaseState
}
"""The commands each state admits at most; :func:`allowed_commands` narrows them by the case."""
FIRST_RESPONSE_EVENTS = (ev.CaseAssigned, ev.ClarificationRequested, ev.SolutionProposed)


@dataclass(frozen=True)
class Assignment:
    owner: ev.Owner
    assigned_at: datetime
    by: str | None


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
    owner: ev.Owner | None = None
    owners: tuple[Assignment, ...] = ()
    cause: ev.CauseIdentified | None = None
    proposals: tuple[ev.SolutionProposed, ...] = ()
    rejections: tuple[ev.SolutionRejected, ...] = ()
    agreed: ev.SolutionAgreed | None = None
    actions: tuple[Action, ...] = ()
    compensations: tuple[Compensation, ...] = ()
    first_response_at: datetime | None = None
    clock_started_at: datetime | None = None  # resolution clock: received, or reopened
    pauses: tuple[tuple[datetime, datetime | None], ...] = ()
    resume_state: CaseState | None = None
    resolved_at: datetime | None = None
    resolution: ev.CaseResolved | None = None
    closed_at: datetime | None = None
    reopen_count: int = 0
    withdrawn: bool = False  # closed because the customer withdrew the complaint: final
    classified_by: str | None = None  # who last confirmed or corrected the classification
    escalation_level: str | None = None
    fired: frozenset[str] = field(default_factory=frozenset)

    @property
    def paused(self) -> bool:
        return bool(self.pauses) and self.pauses[-1][1] is None

    def action(self, action_id: str) -> Action | None:
        return next((a for a in self.actions if a.action_id == action_id), None)

    def compensation(self, request_id: str) -> Compensation | None:
        return next((c for c in self.compensations if c.request_id == request_id), None)

    @property
    def open_actions(self) -> list[str]:
        return [a.action_id for a in self.actions if a.completed_at is None]

    @property
    def pending_compensations(self) -> list[str]:
        return [x.request_id for x in self.compensations if x.status == "pending"]


def evolve(case: Case | None, e: Event[DomainEvent]) -> Case | None:
    """The case after event ``e``."""
    p, at = e.payload, e.occurred_at
    if isinstance(p, ev.CaseOpened):
        return Case(
            complaint_id=e.stream_id,
            state=S.opened,
            version=e.version,
            severity=p.severity.value,
            category=p.category,
            reference=p.reference,
            language=p.language,
            reply_channel=p.reply_channel.value,
            customer_name=p.customer_name,
            product=p.product,
            safety_incident=p.safety_incident,
            received_at=p.received_at,
            clock_started_at=p.received_at,
        )
    if case is None:
        return None
    c = replace(case, version=e.version)
    if isinstance(p, FIRST_RESPONSE_EVENTS) and c.first_response_at is None:
        c = replace(c, first_response_at=at)
    match p:
        case ev.CaseAssigned():
            state = S.assigned if c.state is S.opened else c.state
            entry = Assignment(p.owner, at, p.assigned_by)
            c = replace(c, owner=p.owner, owners=(*c.owners, entry), state=state)
        case ev.ClarificationRequested():
            c = replace(
                c, state=S.awaiting_customer, resume_state=c.state, pauses=(*c.pauses, (at, None))
            )
        case ev.ClarificationReceived():
            back = c.resume_state if c.resume_state not in (None, S.assigned) else S.investigating
            pauses = (*c.pauses[:-1], (c.pauses[-1][0], at)) if c.paused else c.pauses
            c = replace(c, state=back or S.investigating, resume_state=None, pauses=pauses)
        case ev.CauseIdentified():
            c = replace(c, state=S.cause_identified, cause=p)
        case ev.CaseClassified():
            c = replace(
                c,
                category=p.category,
                product=p.product,
                severity=p.severity.value,
                classified_by=p.classified_by,
            )
        case ev.SolutionProposed():
            c = replace(c, state=S.solution_proposed, proposals=(*c.proposals, p))
        case ev.SolutionRejected():
            c = replace(c, state=S.cause_identified, rejections=(*c.rejections, p))
        case ev.SolutionAgreed():
            c = replace(c, state=S.solution_agreed, agreed=p)
        case ev.ActionPlanned():
            action = Action(p.action_id, p.description, p.owner, p.due_at)
            c = replace(c, state=S.actions_in_progress, actions=(*c.actions, action))
        case ev.ActionCompleted():
            c = replace(
                c,
                actions=tuple(
                    replace(a, completed_at=at, outcome=p.outcome)
                    if a.action_id == p.action_id
                    else a
                    for a in c.actions
                ),
            )
        case ev.CompensationRequested():
            comp = Compensation(p.request_id, p.amount, p.currency, p.reason, p.requested_by)
            c = replace(c, compensations=(*c.compensations, comp))
        case ev.CompensationApproved() | ev.CompensationDeclined():
            status = "approved" if isinstance(p, ev.CompensationApproved) else "declined"
            c = replace(
                c,
                compensations=tuple(
                    replace(x, status=status, decided_by=p.decided_by, decision_note=p.note)
                    if x.request_id == p.request_id
                    else x
                    for x in c.compensations
                ),
            )
        case ev.CaseResolved():
            c = replace(c, state=S.resolved, resolved_at=at, resolution=p)
        case ev.CaseClosed():
            pauses = (*c.pauses[:-1], (c.pauses[-1][0], at)) if c.paused else c.pauses
            c = replace(
                c, state=S.closed, closed_at=at, pauses=pauses, withdrawn=p.reason == "withdrawn"
            )
        case ev.CaseReopened():
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
        case ev.DeadlineApproaching() | ev.DeadlineBreached():
            c = replace(c, fired=c.fired | {p.timer})
        case ev.CaseEscalated():
            c = replace(
                c,
                escalation_level=p.level,
                fired=c.fired | ({p.timer} if p.timer else set()),
            )
    return c


def fold(events: Iterable[Event[DomainEvent]]) -> Case | None:
    case: Case | None = None
    for e in events:
        case = evolve(case, e)
    return case


# What a command needs of the case beyond its state (none: the state is enough).
_NEEDS: dict[str, Callable[[Case], bool]] = {
    "propose_solution": lambda c: c.cause is not None,
    "complete_action": lambda c: bool(c.open_actions),
    "approve_compensation": lambda c: bool(c.pending_compensations),
    "decline_compensation": lambda c: bool(c.pending_compensations),
    # with open work only under a supervisor's override, which is not listed
    "resolve": lambda c: not c.open_actions and not c.pending_compensations,
    "reopen": lambda c: not c.withdrawn,
}


def admits(case: Case, command: str) -> bool:
    """Whether the case accepts ``command`` now (valid input given): the one rule that both
    :func:`allowed_commands` and :func:`require` apply."""
    needs = _NEEDS.get(command)
    return case.state in ALLOWED[command] and (needs is None or needs(case))


def allowed_commands(case: Case) -> list[str]:
    """The commands the case accepts now, as the API lists them."""
    return [command for command in ALLOWED if admits(case, command)]


def require(case: Case, command: str) -> None:
    if not admits(case, command):
        raise CommandRejected(case.state.value, command, allowed_commands(case))


def open_case(case: Case | None, complaint: Event[ComplaintReceived]) -> list[DomainEvent]:
    """A new case for a received complaint, carrying what customer messages need."""
    if case is not None:
        return []
    c = complaint.payload
    return [
        ev.CaseOpened(
            complaint_id=complaint.stream_id,
            reference=c.reference,
            severity=c.severity,
            category=c.category,
            language=c.language,
            reply_channel=c.reply_channel,
            customer_name=c.customer.name,
            product=c.product,
            safety_incident=c.safety_incident,
            received_at=c.received_at,
        )
    ]


def close_withdrawn(case: Case | None, withdrawal: Event[ComplaintWithdrawn]) -> list[DomainEvent]:
    """A withdrawn complaint's case closes (nothing to do when it is closed already)."""
    if case is None or case.state is S.closed:
        return []
    return [
        ev.CaseClosed(
            complaint_id=case.complaint_id,
            reason="withdrawn",
            customer_reason=withdrawal.payload.reason,
        )
    ]


def reopen_requested(case: Case | None, request: Event[ReopenRequested]) -> list[DomainEvent]:
    """Followup's ``ReopenRequested``: an unhappy customer reopens a resolved or closed case."""
    if case is None or not admits(case, "reopen"):
        return []  # not resolved or closed, or withdrawn by the customer: final
    return [
        ev.CaseReopened(
            complaint_id=case.complaint_id,
            reason=request.payload.reason,
            requested_by="customer",
            source_event=request.event_id,
        )
    ]


def details_as_clarification(
    case: Case | None, details: Event[ComplaintDetailsAdded]
) -> list[DomainEvent]:
    """Details the customer added while we waited on them answer the clarification."""
    d = details.payload
    if case is None or case.state is not S.awaiting_customer or d.added_by:
        return []
    return [
        ev.ClarificationReceived(
            complaint_id=case.complaint_id,
            answer=d.note or "; ".join(f"{a.question}: {a.answer}" for a in d.answers),
            received_by="customer",
        )
    ]


def actor(p: DomainEvent) -> str | None:
    """Who took the step an event records (for the case history), if a person did."""
    match p:
        case ev.CaseAssigned():
            return p.assigned_by
        case ev.ClarificationRequested():
            return p.requested_by
        case ev.ClarificationReceived():
            return p.received_by
        case ev.CauseIdentified():
            return p.identified_by
        case ev.CaseClassified():
            return p.classified_by
        case ev.SolutionProposed():
            return p.proposed_by
        case ev.SolutionAgreed() | ev.SolutionRejected():
            return p.recorded_by
        case ev.ActionCompleted():
            return p.completed_by
        case ev.CompensationRequested():
            return p.requested_by
        case ev.CompensationApproved() | ev.CompensationDeclined():
            return p.decided_by
        case ev.CaseResolved():
            return p.resolved_by
        case ev.CaseClosed():
            return p.closed_by
        case ev.CaseReopened():
            return p.reopened_by or p.requested_by
    return None


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
