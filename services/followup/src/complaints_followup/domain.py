"""Satisfaction checks: when and where a resolved complaint's customer is asked."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

from complaints_shared.envelope import NewEvent
from complaints_shared.policy import Policy


def schedule_check(
    complaint_id: UUID,
    resolved_version: int,
    resolved_at: datetime,
    channel: str | None,
    language: str | None,
    policy: Policy,
) -> list[NewEvent]:
    """One satisfaction check per resolution, due after the policy's delay."""
    due = resolved_at + policy.followup.satisfaction_check_delay
    return [
        NewEvent(
            type="SatisfactionCheckScheduled",
            data={
                "check_id": str(uuid4()),
                "complaint_id": str(complaint_id),
                "resolution_version": resolved_version,
                "channel": channel or "email",
                "language": language or "en",
                "due_at": due.isoformat(),
                "expires_at": (due + policy.followup.response_period).isoformat(),
            },
        )
    ]


def cancel_checks(check_ids: list[UUID], reason: str) -> list[NewEvent]:
    """Scheduled checks that must not go out (the case reopened, the complaint was withdrawn)."""
    return [
        NewEvent(type="SatisfactionCheckCancelled", data={"check_id": str(c), "reason": reason})
        for c in check_ids
    ]
