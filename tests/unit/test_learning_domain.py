"""Learning's problems without I/O: the repository over the in-memory event store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from complaints_learning.domain import (
    CorrectiveActionCompletion,
    CorrectiveActionCreate,
    Counted,
    Problem,
    Signature,
    complete_action,
    fold,
    occurrence,
    plan_action,
    recurrence_window,
    resume,
    verify,
    withdraw_occurrence,
)
from complaints_shared.envelope import Event
from complaints_shared.events import learning as ev
from complaints_shared.eventstore import InMemoryEventStore
from complaints_shared.policy import Policy
from complaints_shared.repository import Repository

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
POLICY = Policy()


def test_a_signature_ignores_case_accents_and_spacing():
    a = Signature.of("Pricing_System", "Faturação", "  Torradeira  X-200 ")
    b = Signature.of("pricing_system", "faturacao", "torradeira x-200")
    assert a == b and a.problem_id == b.problem_id
    assert Signature.of("capacity", None, "").product == "-"


def test_the_recurrence_window_counts_on_either_side():
    since, until = recurrence_window(T0, POLICY)
    assert T0 - since == until - T0 == POLICY.learning.recurrence_window


async def test_a_problem_opens_recurs_is_fixed_verified_and_catches_a_recurrence_after_fix():
    clock = {"now": T0}
    store = InMemoryEventStore(source="/complaints/learning", clock=lambda: clock["now"])
    repo: Repository[Problem | None] = Repository(store, fold)
    sig = Signature.of("capacity", "waiting_time", None)
    c = [str(uuid.uuid4()) for _ in range(4)]

    async def occurs(i: int, window: list[str]) -> list[str]:
        saved = await repo.execute(
            None, sig.problem_id, lambda p: occurrence(p, sig, c[i], window, False)
        )
        return [e.type for e in saved.recorded]

    assert await occurs(0, [c[0]]) == []  # one occurrence is no problem yet
    assert await occurs(1, [c[0], c[1]]) == ["ProblemOpened"]
    assert await occurs(1, [c[0], c[1]]) == []  # the same complaint again changes nothing
    assert await occurs(2, []) == ["RecurrenceDetected"]

    due = T0 + timedelta(days=7)
    action = CorrectiveActionCreate(
        type="improve_procedure", description="second till at peak", owner="ops", due_at=due
    )
    saved = await repo.execute(None, sig.problem_id, lambda p: plan_action(p, action, T0))
    assert saved.state is not None and saved.state.status == "fixing"
    action_id = saved.state.actions[0].action_id
    done = CorrectiveActionCompletion()
    saved = await repo.execute(
        None, sig.problem_id, lambda p: complete_action(p, action_id, done, "ops")
    )
    assert saved.state is not None and saved.state.status == "fixed"

    early = await repo.execute(None, sig.problem_id, lambda p: verify(p, T0, POLICY))
    assert early.recorded == []
    clock["now"] = T0 + POLICY.learning.verification_window + timedelta(seconds=1)
    later = clock["now"]
    verified = await repo.execute(None, sig.problem_id, lambda p: verify(p, later, POLICY))
    assert verified.state is not None and verified.state.status == "resolved"

    assert await occurs(3, []) == ["RecurrenceAfterFix"]
    after = (await repo.load(None, sig.problem_id)).state
    assert after is not None and after.recurrences_after_fix == 1 and after.status == "fixing"


async def test_a_safety_incident_opens_a_problem_at_once():
    store = InMemoryEventStore()
    repo: Repository[Problem | None] = Repository(store, fold)
    sig = Signature.of("product_defect", "safety", "charger")
    c = str(uuid.uuid4())
    saved = await repo.execute(None, sig.problem_id, lambda p: occurrence(p, sig, c, [c], True))
    assert [e.type for e in saved.recorded] == ["ProblemOpened"]
    assert saved.state is not None and saved.state.complaints == (c,)


def test_an_unconfirmed_category_does_not_split_a_problem():
    delivery = Signature.of("late_fee_posting", "delivery", "Credit card")
    billing = Signature.of("late_fee_posting", "billing", "credit card")
    assert delivery.problem_id == billing.problem_id
    assert Signature.of("late_fee_posting", "billing", "mortgage").problem_id != (
        billing.problem_id
    )


def test_a_recategorised_complaint_leaves_its_old_problem():
    sig = Signature.of("thermostat", "product_defect", "toaster t-100")
    moved_to = Signature.of("thermostat", "product_defect", "kettle k-1")
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    opened = occurrence(None, sig, b, [a, b, c], False)
    problem = fold([_recorded(sig.problem_id, 1, opened[0])])
    assert problem is not None and problem.complaints == (a, b, c)
    [withdrawn] = withdraw_occurrence(problem, c, moved_to)
    after = fold([_recorded(sig.problem_id, 1, opened[0]), _recorded(sig.problem_id, 2, withdrawn)])
    assert after is not None and after.complaints == (a, b) and withdrawn.occurrences == 2
    assert withdraw_occurrence(after, c, moved_to) == []  # once


def test_a_complaint_from_before_the_fix_is_no_recurrence_after_it():
    sig = Signature.of("capacity", "waiting_time", None)
    fixed_at = T0 + timedelta(days=3)
    a, b, late, early = (str(uuid.uuid4()) for _ in range(4))
    problem = Problem(sig.problem_id, sig, (a, b), fixed_at=fixed_at, version=3)
    [before] = occurrence(problem, sig, early, [], False, happened_at=fixed_at - timedelta(hours=1))
    assert isinstance(before, ev.RecurrenceDetected)
    [after] = occurrence(problem, sig, late, [], False, happened_at=fixed_at + timedelta(hours=1))
    assert isinstance(after, ev.RecurrenceAfterFix)


def test_a_problems_states_each_keep_the_complaints_they_counted():
    """Successive states share what they counted: a later state adding a complaint changes
    no earlier one, and an earlier one adding another goes its own way."""
    a, b, c, d = (str(uuid.uuid4()) for _ in range(4))
    first = Counted([a, b, a])  # each once, in order
    assert first == (a, b) and len(first) == 2 and list(first) == [a, b]
    second = first.add(c)
    third = second.add(d)
    assert first == (a, b) and c not in first and d not in first
    assert second == (a, b, c) and d not in second and second[-1] == c
    assert third == (a, b, c, d) and third.add(b) is third
    other = first.add(d)  # from an earlier state: its own
    assert other == (a, b, d) and c not in other and third == (a, b, c, d)
    assert second.without(a) == (b, c) and second == (a, b, c)
    assert third.without(c).add(c) == (a, b, d, c)


def test_folding_a_problem_counts_each_complaint_in_order_as_it_went():
    sig = Signature.of("capacity", "waiting_time", None)
    a, b, *more = (str(uuid.uuid4()) for _ in range(6))
    [opened] = occurrence(None, sig, b, [a, b], False)
    events = [_recorded(sig.problem_id, 1, opened)]
    problem = fold(events)
    states = [problem]
    for c in more:
        assert problem is not None
        [recurred] = occurrence(problem, sig, c, [], False)
        events.append(_recorded(sig.problem_id, len(events) + 1, recurred))
        problem = resume(problem, events[-1:])
        states.append(problem)
    assert problem is not None and problem.complaints == (a, b, *more)
    assert problem == fold(events) and problem.version == len(events)
    assert [len(s.complaints) for s in states if s] == [2, 3, 4, 5, 6]  # each as it was


def _recorded(stream: uuid.UUID, version: int, payload):  # type: ignore[no-untyped-def]
    return Event(uuid.uuid4(), stream, version, T0, "/complaints/learning", payload)
