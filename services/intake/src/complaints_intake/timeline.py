"""Human-readable one-line summaries of every event type, for the complaint timeline."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from complaints_shared.envelope import Event

Summary = Callable[[dict[str, Any]], str]


def _words(event_type: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r" \1", event_type).capitalize().replace("  ", " ")


def _list(values: Any) -> str:
    return ", ".join(str(v).replace("_", " ") for v in values or [])


def _details(d: dict[str, Any]) -> str:
    parts = []
    if d.get("note"):
        parts.append("a note")
    if d.get("answers"):
        parts.append(f"{len(d['answers'])} answer(s)")
    if d.get("attachments"):
        parts.append(f"{len(d['attachments'])} attachment(s)")
    by = f" by {d['added_by']}" if d.get("added_by") else " by the customer"
    return "Details added" + by + (": " + ", ".join(parts) if parts else "")


SUMMARIES: dict[str, Summary] = {
    "ComplaintReceived": lambda d: (
        f"Complaint {d.get('reference', '')} received via {d.get('channel', '?')}: "
        f"{str(d.get('category', '?')).replace('_', ' ')}, {d.get('severity', '?')} severity"
        + (" (possible duplicate)" if d.get("possible_duplicate_of") else "")
    ),
    "ComplaintAcknowledged": lambda d: (
        f"Acknowledged to the customer by {d.get('channel', '?')} in {d.get('language', '?')};"
        f" first response due {d.get('first_response_due', '?')}"
    ),
    "ComplaintAlertRaised": lambda d: f"Alert raised: {_list(d.get('reasons'))}",
    "ComplaintDetailsAdded": _details,
    "ComplaintWithdrawn": lambda d: (
        "Complaint withdrawn" + (f": {d['reason']}" if d.get("reason") else "")
    ),
    "CaseOpened": lambda d: "Case opened",
    "CaseAssigned": lambda d: f"Case assigned to {(d.get('owner') or {}).get('name', '?')}",
    "CaseResolved": lambda d: "Case resolved" + (f": {d['summary']}" if d.get("summary") else ""),
    "CaseReopened": lambda d: "Case reopened" + (f": {d['reason']}" if d.get("reason") else ""),
    "CaseClosed": lambda d: "Case closed" + (f" ({d['reason']})" if d.get("reason") else ""),
    "CauseIdentified": lambda d: (
        "Cause identified: " + str(d.get("root_cause", "?")).replace("_", " ")
    ),
    "DeadlineBreached": lambda d: f"Deadline breached: {d.get('deadline', '?')!s}",
    "CaseEscalated": lambda d: f"Escalated to {str(d.get('level', '?')).replace('_', ' ')}",
    "ClarificationRequested": lambda d: "Customer asked: " + "; ".join(d.get("questions", [])),
    "ClarificationReceived": lambda d: "Customer answered the clarification",
    "SolutionProposed": lambda d: (
        "Solution proposed: " + _list(o.get("remedy") for o in d.get("options", []))
    ),
    "SolutionAgreed": lambda d: (
        f"Solution agreed: {d.get('agreed_outcome', '?')} by {d.get('deadline', '?')}"
    ),
    "SolutionRejected": lambda d: f"Solution rejected: {d.get('reason', '?')}",
    "ActionPlanned": lambda d: (
        f"Action planned: {d.get('description', '?')} (due {d.get('due_at', '?')})"
    ),
    "ActionCompleted": lambda d: "Action completed",
    "CompensationRequested": lambda d: (
        f"Compensation requested: {d.get('amount')} {d.get('currency')}"
    ),
    "CompensationApproved": lambda d: (
        f"Compensation approved: {d.get('amount')} {d.get('currency')}"
    ),
    "CompensationDeclined": lambda d: "Compensation declined",
    "DeadlineApproaching": lambda d: f"Deadline approaching: {d.get('deadline', '?')!s}",
    "SatisfactionCheckScheduled": lambda d: (
        f"Satisfaction check scheduled for {d.get('due_at', '?')} by {d.get('channel', '?')}"
    ),
    "SatisfactionCheckCancelled": lambda d: (
        "Satisfaction check cancelled" + (f" ({d['reason']})" if d.get("reason") else "")
    ),
    "SatisfactionRecorded": lambda d: f"Customer satisfaction recorded: {d.get('score', '?')}/5",
}


def summarise(event: Event) -> str:
    summary = SUMMARIES.get(event.type)
    if summary is None:
        return _words(event.type)
    try:
        return summary(event.data)[:500]
    except (AttributeError, TypeError, ValueError):
        return _words(event.type)
