"""Events of the followup service, on ``complaints.followup.v2`` (stream = the complaint)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from complaints_shared.events.base import REGISTRY, DomainEvent, PersonalOrNone
from complaints_shared.vocabulary import Channel

event = REGISTRY.register("followup")


@event
class SatisfactionCheckScheduled(DomainEvent):
    """A satisfaction check for one resolution, due after the policy's delay."""

    check_id: UUID
    complaint_id: UUID
    resolution_event_id: UUID
    channel: Channel
    language: str
    due_at: datetime
    expires_at: datetime


@event
class SatisfactionCheckSent(DomainEvent):
    check_id: UUID
    channel: Channel
    reminder: bool = False


@event
class SatisfactionRecorded(DomainEvent):
    check_id: UUID
    score: int = Field(ge=1, le=5, description="1 very unhappy … 5 very happy")
    solved: bool
    comment: PersonalOrNone = None
    nps: int | None = Field(None, ge=0, le=10)
    category: str | None = None
    channel: Channel | None = None


@event
class SatisfactionCheckExpired(DomainEvent):
    check_id: UUID
    was_sent: bool


@event
class SatisfactionCheckCancelled(DomainEvent):
    check_id: UUID
    reason: str


@event
class ReopenRequested(DomainEvent):
    """The customer is not happy: resolution reopens the case."""

    check_id: UUID
    reason: str
    score: int
    solved: bool


@event
class CustomerMessageSent(DomainEvent):
    """A message was handed to the channel (e-mail server or gateway)."""

    source_event_id: str
    source_type: str
    channel: Channel
    delivery_id: UUID


@event
class NextStepsConfirmed(DomainEvent):
    """The agreed next steps were confirmed to the customer in writing."""

    source_event_id: str
    source_type: str
    channel: Channel
    delivery_id: UUID
    subject: PersonalOrNone = None


@event
class FollowupParked(DomainEvent):
    """Work for this complaint failed on every attempt and was set aside: a message to the
    customer that could not be prepared or handed over (someone must reach them another way),
    or a check that could not be expired.  The other complaints' work went on meanwhile."""

    work: Literal["check", "reminder", "message", "expiry"]
    ref: str  # the check id, or the id of the event whose message it is
    attempts: int
    reason: str  # the error's type, never its text (which may quote personal data)
    channel: Channel | None = None
    delivery_id: UUID | None = None
