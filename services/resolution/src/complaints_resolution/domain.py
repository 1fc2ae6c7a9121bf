"""The case aggregate: state as the fold of its events, commands decided against it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import CommandRejected


class CaseState(StrEnum):
    opened = "opened"
    resolved = "resolved"
    closed = "closed"


ALLOWED_COMMANDS: dict[CaseState, tuple[str, ...]] = {
    CaseState.opened: ("resolve",),
    CaseState.resolved: (),
    CaseState.closed: (),
}


@dataclass(frozen=True, slots=True)
class Case:
    complaint_id: UUID
    state: CaseState
    version: int
    severity: str
    category: str
    opened_at: datetime
    resolved_at: datetime | None = None
    resolution: dict[str, Any] | None = None


def evolve(case: Case | None, event: Event) -> Case | None:
    """The case after ``event``."""
    match event.type:
        case "CaseOpened":
            return Case(
                complaint_id=event.stream_id,
                state=CaseState.opened,
                version=event.version,
                severity=event.data["severity"],
                category=event.data["category"],
                opened_at=event.occurred_at,
            )
        case "CaseClosed" if case is not None:
            return replace(case, state=CaseState.closed, version=event.version)
        case "CaseResolved" if case is not None:
            return replace(
                case,
                state=CaseState.resolved,
                version=event.version,
                resolved_at=event.occurred_at,
                resolution=event.data,
            )
    return None if case is None else replace(case, version=event.version)


def fold(events: Iterable[Event]) -> Case | None:
    case: Case | None = None
    for e in events:
        case = evolve(case, e)
    return case


def open_case(complaint: Event) -> list[NewEvent]:
    """A new case for a received complaint."""
    return [
        NewEvent(
            type="CaseOpened",
            data={
                "complaint_id": str(complaint.stream_id),
                "severity": complaint.data.get("severity", "medium"),
                "category": complaint.data.get("category", "other"),
                "received_at": complaint.occurred_at.isoformat(),
            },
        )
    ]


class ResolveCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: str = Field(min_length=1, max_length=4000, description="What was done")
    resolved_by: str = Field(min_length=1, max_length=100, description="Agent id")


def resolve(case: Case, command: ResolveCase) -> list[NewEvent]:
    _require(case, "resolve")
    return [
        NewEvent(
            type="CaseResolved",
            data={
                "complaint_id": str(case.complaint_id),
                "summary": command.summary,
                "resolved_by": command.resolved_by,
                "category": case.category,
                "severity": case.severity,
            },
        )
    ]


def _require(case: Case, command: str) -> None:
    allowed = ALLOWED_COMMANDS[case.state]
    if command not in allowed:
        raise CommandRejected(case.state.value, command, allowed)


def close_withdrawn(case: Case | None, withdrawal: Event) -> list[NewEvent]:
    """A withdrawn complaint's case closes (nothing to do when it is closed already)."""
    if case is None or case.state is CaseState.closed:
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
