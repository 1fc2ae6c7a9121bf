"""Events of the resolution service, on ``complaints.resolution.v2`` (stream = the complaint).

Customer-visible steps carry ``customer_message``: what the customer is told, in their language
and on their channel; followup delivers it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from complaints_shared.events.base import REGISTRY, DomainEvent, Payload, Personal, PersonalOrNone
from complaints_shared.vocabulary import Channel, Remedy, Severity

event = REGISTRY.register("resolution")

Deadline = Literal["first_response", "resolution", "action", "agreed_deadline"]
Level = Literal["team_lead", "manager"]
Authority = Literal["none", "supervisor", "manager"]
Role = Literal["agent", "supervisor", "manager"]


class CustomerMessage(Payload):
    channel: Channel
    language: str
    subject: Personal
    body: Personal


class Owner(Payload):
    """The named person responsible for the case, and how the customer reaches them."""

    id: str
    name: str
    contact: str
    team: str | None = None


class SolutionOption(Payload):
    option_id: int
    remedy: Remedy
    description: Personal
    amount: Decimal | None = None
    currency: str | None = None


class Money(Payload):
    amount: Decimal
    currency: str


class CustomerVisible(DomainEvent):
    """A step the customer is told about: it carries the message to deliver."""

    customer_message: CustomerMessage | None = None


class Override(Payload):
    by: str
    role: Role
    reason: str
    open_actions: tuple[str, ...] = ()
    pending_compensation: tuple[str, ...] = ()


@event
class CaseOpened(DomainEvent):
    complaint_id: UUID
    reference: str
    severity: Severity
    category: str
    language: str
    reply_channel: Channel
    customer_name: PersonalOrNone = None
    product: str | None = None
    safety_incident: bool = False
    received_at: datetime


@event
class CaseAssigned(CustomerVisible):
    owner: Owner
    assigned_by: str
    previous_owner: str | None = None


@event
class ClarificationRequested(CustomerVisible):
    questions: tuple[str, ...]
    requested_by: str


@event
class ClarificationReceived(DomainEvent):
    answer: Personal
    received_by: str
    complaint_id: UUID | None = None


@event
class CauseIdentified(DomainEvent):
    """What happened, what should have happened, what went wrong, and the root cause code."""

    complaint_id: UUID
    what_happened: Personal
    what_should_have_happened: Personal
    what_went_wrong: Personal
    root_cause: str
    responsible: Literal["us", "customer", "third_party"]
    identified_by: str
    category: str
    product: str | None = None
    safety_incident: bool = False


@event
class SolutionProposed(CustomerVisible):
    proposal_id: str
    options: tuple[SolutionOption, ...]
    proposed_by: str


@event
class SolutionAgreed(CustomerVisible):
    """The agreed outcome, like a contract: indicators and a deadline."""

    proposal_id: str
    option: SolutionOption
    agreed_outcome: Personal
    indicators: tuple[str, ...]
    deadline: datetime
    recorded_by: str


@event
class SolutionRejected(DomainEvent):
    proposal_id: str
    reason: Personal
    recorded_by: str


@event
class ActionPlanned(DomainEvent):
    action_id: str
    description: str
    owner: str
    due_at: datetime


@event
class ActionCompleted(DomainEvent):
    action_id: str
    completed_by: str
    outcome: str | None = None


@event
class CompensationRequested(DomainEvent):
    request_id: str
    amount: Decimal
    currency: str
    reason: str
    requested_by: str
    needs: Authority


@event
class CompensationApproved(DomainEvent):
    request_id: str
    amount: Decimal
    currency: str
    decided_by: str | None = None
    role: Role | None = None
    note: str | None = None
    within_agent_limit: bool = False


@event
class CompensationDeclined(DomainEvent):
    request_id: str
    amount: Decimal
    currency: str
    decided_by: str
    role: Role
    note: str | None = None


@event
class DeadlineApproaching(DomainEvent):
    complaint_id: UUID
    deadline: Deadline
    ref: str
    due_at: datetime
    timer: str


@event
class DeadlineBreached(DomainEvent):
    complaint_id: UUID
    deadline: Deadline
    ref: str
    due_at: datetime
    timer: str
    breached_at: datetime


@event
class CaseEscalated(DomainEvent):
    complaint_id: UUID
    level: Level
    reason: str
    deadline: Deadline
    ref: str
    owner: str | None = None
    timer: str | None = None


@event
class CaseResolved(CustomerVisible):
    complaint_id: UUID
    summary: Personal
    resolved_by: str
    category: str
    severity: Severity
    root_cause: str | None = None
    remedy: Remedy | None = None
    compensation_awarded: tuple[Money, ...] = ()
    reopen_count: int = 0
    override: Override | None = None


@event
class CaseReopened(DomainEvent):
    complaint_id: UUID
    reason: Personal
    requested_by: Literal["customer", "agent"]
    reopened_by: str | None = None
    source_event: UUID | None = None


@event
class CaseClosed(DomainEvent):
    complaint_id: UUID
    reason: str | None = None
    closed_by: str | None = None
    customer_reason: PersonalOrNone = None


class Classification(Payload):
    category: str
    product: str | None = None
    severity: Severity


@event
class CaseClassified(DomainEvent):
    """An agent confirmed or corrected the complaint's category, product and severity (the
    suggested ones, or an earlier agent's); ``previous`` is what it was until now."""

    complaint_id: UUID
    category: str
    product: str | None = None
    severity: Severity
    previous: Classification
    classified_by: str
    reason: str | None = None
