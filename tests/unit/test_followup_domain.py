"""Followup's satisfaction checks without I/O: the repository over the in-memory event store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from complaints_followup.domain import (
    Followup,
    SurveyAnswer,
    cancel_open_checks,
    expire,
    fold,
    record_answer,
    schedule_check,
    sent,
    survey_status,
)
from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, Gone
from complaints_shared.events import followup as fu
from complaints_shared.events.resolution import CaseResolved
from complaints_shared.eventstore import InMemoryEventStore
from complaints_shared.policy import Policy
from complaints_shared.repository import Repository

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
POLICY = Policy()
FP = POLICY.followup


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def resolution(stream: uuid.UUID) -> Event[CaseResolved]:
    return Event(
        event_id=uuid.uuid4(),
        stream_id=stream,
        version=9,
        occurred_at=T0,
        source="/complaints/resolution",
        payload=CaseResolved(
            complaint_id=stream,
            summary="refunded",
            resolved_by="a1",
            category="billing",
            severity="medium",
        ),
    )


@pytest.fixture
def world() -> tuple[Repository[Followup], Clock, uuid.UUID]:
    clock = Clock()
    store = InMemoryEventStore(source="/complaints/followup", clock=clock)
    return Repository(store, fold), clock, uuid.uuid4()


async def scheduled(world) -> uuid.UUID:
    repo, _, stream = world
    resolved = resolution(stream)
    saved = await repo.execute(
        None, stream, lambda s: schedule_check(s, resolved, "email", "pt", POLICY)
    )
    (event,) = saved.recorded
    assert isinstance(event.payload, fu.SatisfactionCheckScheduled)
    assert event.payload.due_at == T0 + FP.satisfaction_check_delay
    assert event.payload.expires_at == event.payload.due_at + FP.response_period
    # the same resolution delivered again schedules nothing more
    again = await repo.execute(
        None, stream, lambda s: schedule_check(s, resolved, "email", "pt", POLICY)
    )
    assert again.recorded == []
    return event.payload.check_id


ANSWER_HAPPY = SurveyAnswer(score=5, solved=True)
ANSWER_UNHAPPY = SurveyAnswer(score=2, solved=True, comment="still waiting")


async def test_a_check_is_sent_once_and_reminded_once(world):
    repo, _clock, stream = world
    check = await scheduled(world)
    saved = await repo.execute(None, stream, lambda s: sent(s, check, False, "email"))
    assert saved.state.checks[0].status == "sent"
    assert (await repo.execute(None, stream, lambda s: sent(s, check, True, "email"))).recorded
    assert (
        await repo.execute(None, stream, lambda s: sent(s, check, True, "email"))
    ).recorded == []


async def test_an_unhappy_answer_requests_a_reopen_and_a_second_answer_is_refused(world):
    repo, clock, stream = world
    check = await scheduled(world)
    clock.now = T0 + FP.satisfaction_check_delay + timedelta(hours=1)
    saved = await repo.execute(
        None,
        stream,
        lambda s: record_answer(s, check, ANSWER_UNHAPPY, clock.now, "billing", "email"),
    )
    assert [e.type for e in saved.recorded] == ["SatisfactionRecorded", "ReopenRequested"]
    with pytest.raises(CommandRejected):
        await repo.execute(
            None, stream, lambda s: record_answer(s, check, ANSWER_HAPPY, clock.now, None, None)
        )


async def test_a_happy_answer_reopens_nothing(world):
    repo, clock, stream = world
    check = await scheduled(world)
    saved = await repo.execute(
        None, stream, lambda s: record_answer(s, check, ANSWER_HAPPY, clock.now, None, None)
    )
    assert [e.type for e in saved.recorded] == ["SatisfactionRecorded"]


async def test_expired_and_withdrawn_surveys_are_gone(world):
    repo, _clock, stream = world
    check = await scheduled(world)
    late = T0 + FP.satisfaction_check_delay + FP.response_period
    with pytest.raises(Gone, match="expired"):
        record_answer((await repo.load(None, stream)).state, check, ANSWER_HAPPY, late, None, None)
    saved = await repo.execute(None, stream, lambda s: expire(s, check, late))
    assert saved.state.checks[0].status == "expired"
    assert survey_status("sent", late, late) == "expired"
    assert survey_status("sent", late, T0) == "open"

    check2 = uuid.uuid4()
    other = resolution(stream)
    await repo.execute(None, stream, lambda s: schedule_check(s, other, "email", "pt", POLICY))
    state = await repo.execute(None, stream, lambda s: cancel_open_checks(s, "withdrawn"))
    assert [c.status for c in state.state.checks] == ["expired", "cancelled"]
    with pytest.raises(Gone, match="withdrawn"):
        record_answer(state.state, state.state.checks[1].check_id, ANSWER_HAPPY, T0, None, None)
    with pytest.raises(Gone):
        record_answer(state.state, check2, ANSWER_HAPPY, T0, None, None)
