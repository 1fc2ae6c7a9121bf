"""Human-readable one-line summaries of every event, for the complaint timeline.

Summaries name steps, owners and outcomes; they never quote the customer's own words or
contact details.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as fu
from complaints_shared.events import intake as it
from complaints_shared.events import learning as le
from complaints_shared.events import resolution as rs


def _words(event_type: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r" \1", event_type).capitalize().replace("  ", " ")


def _list(values: Iterable[Any]) -> str:
    return ", ".join(str(v).replace("_", " ") for v in values)


def _details(d: it.ComplaintDetailsAdded) -> str:
    parts = []
    if d.note:
        parts.append("a note")
    if d.answers:
        parts.append(f"{len(d.answers)} answer(s)")
    if d.attachments:
        parts.append(f"{len(d.attachments)} attachment(s)")
    by = f" by {d.added_by}" if d.added_by else " by the customer"
    return "Details added" + by + (": " + ", ".join(parts) if parts else "")


def _summary(p: DomainEvent) -> str | None:
    match p:
        case it.ComplaintReceived():
            return (
                f"Complaint {p.reference} received via {p.channel.value}:"
                f" {p.category.replace('_', ' ')}, {p.severity.value} severity"
                + (" (possible duplicate)" if p.possible_duplicate_of else "")
            )
        case it.ComplaintAcknowledged():
            return (
                f"Acknowledged to the customer by {p.channel.value} in {p.language};"
                f" first response due {p.first_response_due.isoformat()}"
            )
        case it.ComplaintAlertRaised():
            return f"Alert raised: {_list(p.reasons)}"
        case it.ComplaintDetailsAdded():
            return _details(p)
        case it.ComplaintWithdrawn():
            return "Complaint withdrawn" + (f": {p.reason}" if p.reason else "")
        case rs.CaseOpened():
            return "Case opened"
        case rs.CaseAssigned():
            return f"Case assigned to {p.owner.name}"
        case rs.CaseResolved():
            return "Case resolved" + (f": {p.summary}" if p.summary else "")
        case rs.CaseReopened():
            return "Case reopened" + (f": {p.reason}" if p.reason else "")
        case rs.CaseClosed():
            return "Case closed" + (f" ({p.reason})" if p.reason else "")
        case rs.CauseIdentified():
            return "Cause identified: " + p.root_cause.replace("_", " ")
        case rs.DeadlineApproaching():
            return f"Deadline approaching: {p.deadline}"
        case rs.DeadlineBreached():
            return f"Deadline breached: {p.deadline}"
        case rs.CaseEscalated():
            return f"Escalated to {p.level.replace('_', ' ')}"
        case rs.ClarificationRequested():
            return "Customer asked: " + "; ".join(p.questions)
        case rs.ClarificationReceived():
            return "Customer answered the clarification"
        case rs.SolutionProposed():
            return "Solution proposed: " + _list(o.remedy.value for o in p.options)
        case rs.SolutionAgreed():
            return f"Solution agreed: {p.agreed_outcome} by {p.deadline.isoformat()}"
        case rs.SolutionRejected():
            return f"Solution rejected: {p.reason}"
        case rs.ActionPlanned():
            return f"Action planned: {p.description} (due {p.due_at.isoformat()})"
        case rs.ActionCompleted():
            return "Action completed"
        case rs.CompensationRequested():
            return f"Compensation requested: {p.amount} {p.currency}"
        case rs.CompensationApproved():
            return f"Compensation approved: {p.amount} {p.currency}"
        case rs.CompensationDeclined():
            return "Compensation declined"
        case fu.SatisfactionCheckScheduled():
            return f"Satisfaction check scheduled for {p.due_at.isoformat()} by {p.channel.value}"
        case fu.SatisfactionCheckCancelled():
            return "Satisfaction check cancelled" + (f" ({p.reason})" if p.reason else "")
        case fu.SatisfactionRecorded():
            return f"Customer satisfaction recorded: {p.score}/5"
    return None


def summarise(p: DomainEvent) -> str:
    """One line about the event (its name in words when there is nothing more to say)."""
    return (_summary(p) or _words(p.name))[:500]


def complaint_of(event: Event[DomainEvent]) -> UUID:
    """The complaint an event is about: the stream, except for learning's problem events that
    name a complaint."""
    match event.payload:
        case le.RecurrenceDetected() | le.RecurrenceAfterFix():
            return event.payload.complaint_id
    return event.stream_id


def erased_summary(event_type: str) -> str:
    """A timeline entry's summary once its customer was erased: the kind of event only."""
    return _words(event_type)
