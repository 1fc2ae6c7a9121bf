"""The case aggregate: fold and decisions, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from complaints_resolution.domain import CaseState, ResolveCase, fold, open_case, resolve
from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import CommandRejected


def recorded(stream: uuid.UUID, new: list[NewEvent], start: int = 1) -> list[Event]:
    return [
        Event(
            event_id=uuid.uuid4(),
            type=e.type,
            stream_id=stream,
            version=start + i,
            occurred_at=datetime(2026, 1, 5, 10, i, tzinfo=UTC),
            source="/complaints/x",
            data=e.data,
        )
        for i, e in enumerate(new)
    ]


def received(stream: uuid.UUID) -> Event:
    return recorded(
        stream,
        [
            NewEvent(
                type="ComplaintReceived", data={"severity": "critical", "category": "cleanliness"}
            )
        ],
    )[0]


def test_a_received_complaint_opens_a_case_with_its_severity_and_category():
    stream = uuid.uuid4()
    case = fold(recorded(stream, open_case(received(stream))))
    assert case is not None
    assert (case.state, case.version, case.severity, case.category) == (
        CaseState.opened,
        1,
        "critical",
        "cleanliness",
    )


def test_resolve_moves_an_open_case_to_resolved_once():
    stream = uuid.uuid4()
    events = recorded(stream, open_case(received(stream)))
    case = fold(events)
    assert case is not None
    decided = resolve(case, ResolveCase(summary="cleaned", resolved_by="a1"))
    assert [e.type for e in decided] == ["CaseResolved"]
    resolved = fold(events + recorded(stream, decided, start=2))
    assert resolved is not None and resolved.state is CaseState.resolved
    assert resolved.resolution is not None and resolved.resolution["summary"] == "cleaned"
    with pytest.raises(CommandRejected) as err:
        resolve(resolved, ResolveCase(summary="again", resolved_by="a1"))
    assert err.value.state == "resolved" and err.value.allowed == []


def test_no_events_no_case():
    assert fold([]) is None
