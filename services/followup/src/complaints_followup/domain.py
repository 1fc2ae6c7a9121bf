"""Satisfaction checks of one complaint: scheduled after each resolution, sent, answered,
reminded, expired or cancelled (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, Gone
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as ev
from complaints_shared.events.resolution import CaseResolved
from complaints_shared.policy import Policy
from complaints_shared.vocabulary import REOPEN_MAX_SCORE, Channel

OPEN = ("scheduled", "sent")


@dataclass(frozen=True)
class Check:
    check_id: UUID
    resolution_event_id: UUID
    status: str  # scheduled | sent | answered | expired | cancelled
    channel: str
    language: str
    due_at: datetime
    expires_at: datetime
    sent_at: datetime | None = None
    reminded: bool = False


@dataclass(frozen=True)
class Followup:
    """All checks of one complaint, in order."""

    checks: tuple[Check, ...] = ()

    def check(self, check_id: UUID) -> Check | None:
        return next((c for c in self.checks if c.check_id == check_id), None)


def evolve(state: Followup, e: Event[DomainEvent]) -> Followup:
    p = e.payload

    def update(check_id: UUID, **changes: Any) -> Followup:
        return Followup(
            tuple(replace(c, **changes) if c.check_id == check_id else c for c in state.checks)
        )

    match p:
        case ev.SatisfactionCheckScheduled():
            check = Check(
                p.check_id,
                p.resolution_event_id,
                "scheduled",
                p.channel.value,
                p.language,
                p.due_at,
                p.expires_at,
            )
            return Followup((*state.checks, check))
        case ev.SatisfactionCheckSent() if p.reminder:
            return update(p.check_id, reminded=True)
        case ev.SatisfactionCheckSent():
            return update(p.check_id, status="sent", sent_at=e.occurred_at)
        case ev.SatisfactionRecorded():
            return update(p.check_id, status="answered")
        case ev.SatisfactionCheckExpired():
            return update(p.check_id, status="expired")
        case ev.SatisfactionCheckCancelled():
            return update(p.check_id, status="cancelled")
    return state


def fold(events: Iterable[Event[DomainEvent]]) -> Followup:
    state = Followup()
    for e in events:
        state = evolve(state, e)
    return state


def schedule_check(
    state: Followup,
    resolved: Event[CaseResolved],
    channel: str | None,
    language: str | None,
    policy: Policy,
) -> list[DomainEvent]:
    """One satisfaction check per resolution, due after the policy's delay."""
    if any(c.resolution_event_id == resolved.event_id for c in state.checks):
        return []
    fp = policy.followup
    due = resolved.occurred_at + fp.satisfaction_check_delay
    return [
        ev.SatisfactionCheckScheduled(
            check_id=uuid4(),
            complaint_id=resolved.stream_id,
            resolution_event_id=resolved.event_id,
            channel=Channel(channel or Channel.email),
            language=language or policy.intake.default_language,
            due_at=due,
            expires_at=due + fp.response_period,
        )
    ]


def cancel_open_checks(state: Followup, reason: str) -> list[DomainEvent]:
    """Checks that must not go out or be answered any more (reopened, withdrawn)."""
    return [
        ev.SatisfactionCheckCancelled(check_id=c.check_id, reason=reason)
        for c in state.checks
        if c.status in OPEN
    ]


def sent(state: Followup, check_id: UUID, reminder: bool, channel: str) -> list[DomainEvent]:
    c = state.check(check_id)
    if c is None or c.status not in OPEN or (reminder and c.reminded):
        return []
    return [
        ev.SatisfactionCheckSent(check_id=check_id, channel=Channel(channel), reminder=reminder)
    ]


def expire(state: Followup, check_id: UUID, now: datetime) -> list[DomainEvent]:
    c = state.check(check_id)
    if c is None or c.status not in OPEN or c.expires_at > now:
        return []
    return [ev.SatisfactionCheckExpired(check_id=check_id, was_sent=c.status == "sent")]


def survey_status(status: str, expires_at: datetime, now: datetime) -> str:
    """What a customer opening the survey finds: ``open``, ``answered``, ``expired`` or
    ``cancelled`` (a check past its expiry is expired, whatever the worker recorded yet)."""
    if status in ("answered", "expired", "cancelled"):
        return status
    return "expired" if expires_at <= now else "open"


def require_open(status: str, expires_at: datetime, now: datetime) -> None:
    """Refuse an answer to a survey that is not open: 409 answered, 410 expired or withdrawn."""
    match survey_status(status, expires_at, now):
        case "answered":
            raise CommandRejected("answered", "answer", [])
        case "cancelled":
            raise Gone("this survey was withdrawn")
        case "expired":
            raise Gone("this survey has expired")


class SurveyAnswer(BaseModel):
    """The customer's answer to a satisfaction check."""

    model_config = ConfigDict(extra="forbid")

    score: int = Field(ge=1, le=5, description="CSAT: 1 very unhappy … 5 very happy")
    solved: bool = Field(description="was your problem solved?")
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    nps: int | None = Field(None, ge=0, le=10, description="how likely to recommend us, 0-10")


def record_answer(
    state: Followup,
    check_id: UUID,
    answer: SurveyAnswer,
    now: datetime,
    category: str | None,
    channel: str | None,
) -> list[DomainEvent]:
    """Record the answer once; an unhappy customer (score ≤ 2, or not solved) reopens the case."""
    c = state.check(check_id)
    if c is None:
        raise Gone("this survey does not exist any more")
    require_open(c.status, c.expires_at, now)
    events: list[DomainEvent] = [
        ev.SatisfactionRecorded(
            check_id=check_id,
            score=answer.score,
            solved=answer.solved,
            comment=answer.comment,
            nps=answer.nps,
            category=category,
            channel=Channel(channel) if channel else None,
        )
    ]
    if answer.score <= REOPEN_MAX_SCORE or not answer.solved:
        reason = (
            f"satisfaction score {answer.score} of 5"
            if answer.score <= REOPEN_MAX_SCORE
            else "the customer says the problem is not solved"
        )
        events.append(
            ev.ReopenRequested(
                check_id=check_id, reason=reason, score=answer.score, solved=answer.solved
            )
        )
    return events
