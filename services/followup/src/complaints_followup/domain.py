"""Satisfaction checks of one complaint: scheduled after each resolution, sent, answered,
reminded, expired or cancelled (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import CommandRejected, Gone
from complaints_shared.policy import Policy

OPEN = ("scheduled", "sent")


@dataclass(frozen=True)
class Check:
    check_id: str
    resolution_event_id: str
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

    def check(self, check_id: str) -> Check | None:
        return next((c for c in self.checks if c.check_id == check_id), None)


def evolve(state: Followup, e: Event) -> Followup:
    d = e.data

    def update(**changes: Any) -> Followup:
        return Followup(
            tuple(
                replace(c, **changes) if c.check_id == d.get("check_id") else c
                for c in state.checks
            )
        )

    match e.type:
        case "SatisfactionCheckScheduled":
            return Followup(
                (
                    *state.checks,
                    Check(
                        d["check_id"],
                        d.get("resolution_event_id", ""),
                        "scheduled",
                        d["channel"],
                        d["language"],
                        datetime.fromisoformat(d["due_at"]),
                        datetime.fromisoformat(d["expires_at"]),
                    ),
                )
            )
        case "SatisfactionCheckSent":
            c = state.check(d["check_id"])
            if d.get("reminder"):
                return update(reminded=True)
            return update(status="sent", sent_at=e.occurred_at) if c else state
        case "SatisfactionRecorded":
            return update(status="answered")
        case "SatisfactionCheckExpired":
            return update(status="expired")
        case "SatisfactionCheckCancelled":
            return update(status="cancelled")
    return state


def fold(events: Iterable[Event]) -> Followup:
    state = Followup()
    for e in events:
        state = evolve(state, e)
    return state


def schedule_check(
    state: Followup, resolved: Event, channel: str | None, language: str | None, policy: Policy
) -> list[NewEvent]:
    """One satisfaction check per resolution, due after the policy's delay."""
    if any(c.resolution_event_id == str(resolved.event_id) for c in state.checks):
        return []
    fp = policy.followup
    due = resolved.occurred_at + fp.satisfaction_check_delay
    return [
        NewEvent(
            type="SatisfactionCheckScheduled",
            data={
                "check_id": str(uuid4()),
                "complaint_id": str(resolved.stream_id),
                "resolution_event_id": str(resolved.event_id),
                "channel": channel or "email",
                "language": language or policy.intake.default_language,
                "due_at": due.isoformat(),
                "expires_at": (due + fp.response_period).isoformat(),
            },
        )
    ]


def cancel_open_checks(state: Followup, reason: str) -> list[NewEvent]:
    """Checks that must not go out or be answered any more (reopened, withdrawn)."""
    return [
        NewEvent(type="SatisfactionCheckCancelled", data={"check_id": c.check_id, "reason": reason})
        for c in state.checks
        if c.status in OPEN
    ]


def sent(state: Followup, check_id: str, reminder: bool, channel: str) -> list[NewEvent]:
    c = state.check(check_id)
    if c is None or c.status not in OPEN or (reminder and c.reminded):
        return []
    return [
        NewEvent(
            type="SatisfactionCheckSent",
            data={"check_id": check_id, "channel": channel, "reminder": reminder},
        )
    ]


def expire(state: Followup, check_id: str, now: datetime) -> list[NewEvent]:
    c = state.check(check_id)
    if c is None or c.status not in OPEN or c.expires_at > now:
        return []
    return [
        NewEvent(
            type="SatisfactionCheckExpired",
            data={"check_id": check_id, "was_sent": c.status == "sent"},
        )
    ]


class SurveyAnswer(BaseModel):
    """The customer's answer to a satisfaction check."""

    model_config = ConfigDict(extra="forbid")

    score: int = Field(ge=1, le=5, description="CSAT: 1 very unhappy … 5 very happy")
    solved: bool = Field(description="was your problem solved?")
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    nps: int | None = Field(None, ge=0, le=10, description="how likely to recommend us, 0-10")


REOPEN_SCORE = 2


def record_answer(
    state: Followup,
    check_id: str,
    answer: SurveyAnswer,
    now: datetime,
    category: str | None,
    channel: str | None,
) -> list[NewEvent]:
    """Record the answer once; an unhappy customer (score ≤ 2, or not solved) reopens the case."""
    c = state.check(check_id)
    if c is None:
        raise Gone("this survey does not exist any more")
    if c.status == "answered":
        raise CommandRejected("answered", "answer", [])
    if c.status in ("expired", "cancelled") or c.expires_at <= now:
        raise Gone(f"this survey is {c.status if c.status != 'sent' else 'expired'}")
    data = {
        "check_id": check_id,
        **answer.model_dump(exclude_none=True),
        "category": category,
        "channel": channel,
    }
    events = [NewEvent(type="SatisfactionRecorded", data=data)]
    if answer.score <= REOPEN_SCORE or not answer.solved:
        reason = (
            f"satisfaction score {answer.score} of 5"
            if answer.score <= REOPEN_SCORE
            else "the customer says the problem is not solved"
        )
        events.append(
            NewEvent(
                type="ReopenRequested",
                data={
                    "check_id": check_id,
                    "reason": reason,
                    "score": answer.score,
                    "solved": answer.solved,
                },
            )
        )
    return events
