"""Events of the learning service, on ``complaints.learning.v1``.

The stream, the record key and ``ce_subject`` are the problem id; ``complaint_id`` in the data
names the complaint an occurrence came from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from complaints_shared.events.base import REGISTRY, DomainEvent, Payload

event = REGISTRY.register("learning")

CorrectiveType = Literal[
    "improve_procedure",
    "eliminate_defect",
    "improve_staff_behaviour",
    "raise_standard",
    "change_policy",
    "refocus_on_customer_needs",
]


class Signature(Payload):
    """What makes complaints one problem: the root cause an agent identified on one product,
    normalised.  ``category`` is the category of the complaint the event is about, for
    reading; it does not split a problem (a category may be a guess nobody confirmed)."""

    root_cause: str
    category: str
    product: str


@event
class ProblemOpened(DomainEvent):
    problem_id: UUID
    signature: Signature
    complaint_ids: tuple[UUID, ...]
    occurrences: int
    reason: Literal["recurring", "safety incident"]


@event
class RecurrenceDetected(DomainEvent):
    problem_id: UUID
    complaint_id: UUID
    occurrences: int
    signature: Signature


@event
class RecurrenceAfterFix(DomainEvent):
    """The cause came back after its corrective actions were done."""

    problem_id: UUID
    complaint_id: UUID
    occurrences: int
    fixed_at: datetime
    signature: Signature


@event
class CorrectiveActionPlanned(DomainEvent):
    problem_id: UUID
    action_id: str
    type: CorrectiveType
    description: str
    owner: str
    due_at: datetime
    planned_by: str | None = None


@event
class CorrectiveActionCompleted(DomainEvent):
    problem_id: UUID
    action_id: str
    completed_by: str
    outcome: str | None = None


@event
class ProblemResolved(DomainEvent):
    """No recurrence for the verification window after the fix."""

    problem_id: UUID
    fixed_at: datetime
    verification_window_seconds: float
    occurrences: int


@event
class OccurrenceWithdrawn(DomainEvent):
    """A complaint no longer counts for this problem: an agent corrected its product or its
    root cause, and it counts for the problem of its new signature instead."""

    problem_id: UUID
    complaint_id: UUID
    occurrences: int
    signature: Signature
    """the complaint's new signature"""
