"""The case aggregate without I/O: every transition, every refusal, random command sequences."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from complaints_resolution import commands as cmd
from complaints_resolution.domain import ALLOWED, ALLOWED_COMMANDS, Case, S, fold, open_case
from complaints_resolution.sla import deadlines, on_timer, resolution_clock
from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, Forbidden, InputRejected
from complaints_shared.events import DomainEvent
from complaints_shared.events.intake import ComplaintReceived, Customer
from complaints_shared.events.resolution import CompensationRequested
from complaints_shared.policy import Policy
from complaints_shared.vocabulary import Remedy

POLICY = Policy()
AGENT = cmd.By("a1", "agent")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # Monday, opening time (built-in: 09-17 UTC)
H = timedelta(hours=1)
FUTURE = T0 + timedelta(days=30)

COMMANDS = {
    "assign": lambda: cmd.AssignCase(owner=cmd.Owner(id="a1", name="Ana", contact="a@x.pt")),
    "request_clarification": lambda: cmd.RequestClarification(questions=["Which store?"]),
    "receive_clarification": lambda: cmd.ReceiveClarification(answer="Baixa"),
    "identify_cause": lambda: cmd.IdentifyCause(
        what_happened="x",
        what_should_have_happened="y",
        what_went_wrong="z",
        root_cause="process",
        responsible="us",
    ),
    "propose_solution": lambda: cmd.ProposeSolution(
        options=[
            cmd.SolutionOption(
                remedy=Remedy.refund, description="refund", amount=Decimal("5"), currency="EUR"
            )
        ],
    ),
    "agree_solution": lambda: cmd.AgreeSolution(
        option_id=1,
        agreed_outcome="refunded",
        indicators=["on statement"],
        deadline=FUTURE,
    ),
    "reject_solution": lambda: cmd.RejectSolution(reason="too little"),
    "plan_action": lambda: cmd.PlanAction(description="refund", owner="fin", due_at=FUTURE),
    "request_compensation": lambda: cmd.RequestCompensation(
        amount=Decimal("20"), currency="EUR", reason="trouble"
    ),
    "resolve": lambda: cmd.ResolveCase(summary="done"),
    "close": lambda: cmd.CloseCase(),
    "reopen": lambda: cmd.ReopenCase(reason="not fixed"),
}
DECIDE = {
    "assign": cmd.assign,
    "request_clarification": cmd.request_clarification,
    "receive_clarification": cmd.receive_clarification,
    "identify_cause": cmd.identify_cause,
    "propose_solution": cmd.propose_solution,
    "agree_solution": cmd.agree_solution,
    "reject_solution": cmd.reject_solution,
    "plan_action": cmd.plan_action,
    "request_compensation": cmd.request_compensation,
    "resolve": cmd.resolve,
    "close": cmd.close,
    "reopen": cmd.reopen,
}


class Stream:
    """An in-memory stream: decide, record with contiguous versions, fold."""

    def __init__(self, severity: str = "high") -> None:
        self.id = uuid.uuid4()
        self.now = T0
        received = Event(
            event_id=uuid.uuid4(),
            stream_id=self.id,
            version=1,
            occurred_at=T0,
            source="/complaints/intake",
            payload=ComplaintReceived(
                reference="CMP-1",
                received_at=T0,
                channel="email",
                reply_channel="email",
                customer=Customer(email="c@x.pt"),
                subject="s",
                description="d",
                category="billing",
                severity=severity,
                language="pt",
                first_response_due=T0,
            ),
        )
        self.events: list[Event[DomainEvent]] = []
        self.record(open_case(None, received))

    def record(self, new: list[DomainEvent]) -> None:
        for e in new:
            self.events.append(
                Event(
                    event_id=uuid.uuid4(),
                    stream_id=self.id,
                    version=len(self.events) + 1,
                    occurred_at=self.now,
                    source="/complaints/resolution",
                    payload=e,
                )
            )

    @property
    def case(self) -> Case:
        case = fold(self.events)
        assert case is not None
        return case

    def do(self, name: str, command: object = None, by: cmd.By = AGENT) -> list[DomainEvent]:
        new = DECIDE[name](self.case, command or COMMANDS[name](), by, self.now, POLICY)
        self.record(new)
        return new


PATH = [
    "assign",
    "request_clarification",
    "receive_clarification",
    "identify_cause",
    "propose_solution",
    "reject_solution",
    "propose_solution",
    "agree_solution",
    "plan_action",
]
STATE_AFTER = [
    S.assigned,
    S.awaiting_customer,
    S.investigating,
    S.cause_identified,
    S.solution_proposed,
    S.cause_identified,
    S.solution_proposed,
    S.solution_agreed,
    S.actions_in_progress,
]


def test_the_main_path_walks_through_every_state():
    s = Stream()
    assert s.case.state is S.opened
    for name, state in zip(PATH, STATE_AFTER, strict=True):
        s.do(name)
        assert s.case.state is state, name
    [action] = s.case.actions
    s.record(
        cmd.complete_action(
            s.case,
            cmd.CompleteAction(action_id=action.action_id),
            AGENT,
            s.now,
            POLICY,
        )
    )
    s.do("resolve")
    assert s.case.state is S.resolved
    s.do("close")
    assert s.case.state is S.closed
    s.do("reopen")
    assert s.case.state is S.investigating and s.case.reopen_count == 1


def states_and_cases() -> dict[S, Case]:
    s = Stream()
    out = {S.opened: s.case}
    for name in PATH:
        s.do(name)
        out[s.case.state] = s.case
    [action] = s.case.actions
    s.record(
        cmd.complete_action(
            s.case, cmd.CompleteAction(action_id=action.action_id), AGENT, s.now, POLICY
        )
    )
    s.do("resolve")
    out[S.resolved] = s.case
    s.do("close")
    out[S.closed] = s.case
    return out


CASES = states_and_cases()


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("name", list(DECIDE))
def test_every_command_in_every_state_is_done_or_refused_with_the_allowed_ones(state, name):
    case = CASES[state]
    if state in ALLOWED[name]:
        try:
            new = DECIDE[name](case, COMMANDS[name](), AGENT, T0, POLICY)
        except CommandRejected as exc:  # allowed here, but a rule says not now
            assert name == "resolve" and exc.state == state.value
            return
        assert new, (state, name)
    else:
        with pytest.raises(CommandRejected) as err:
            DECIDE[name](case, COMMANDS[name](), AGENT, T0, POLICY)
        assert err.value.state == state.value
        assert err.value.allowed == ALLOWED_COMMANDS[state]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(COMMANDS)), max_size=40))
def test_no_command_sequence_corrupts_the_stream(names):
    s = Stream(severity="medium")
    for name in names:
        before = s.case
        s.now += timedelta(minutes=7)
        try:
            new = s.do(name)
        except (CommandRejected, InputRejected, Forbidden):
            assert s.case == before  # a refusal records nothing
            continue
        assert new and before.state in ALLOWED[name]  # only allowed commands record events
    assert [e.version for e in s.events] == list(range(1, len(s.events) + 1))
    case = s.case
    if case.state is S.resolved:
        assert case.agreed is not None
        assert all(a.completed_at for a in case.actions) or (case.resolution or {}).get("override")
    if case.paused:
        assert case.state is S.awaiting_customer
    assert case.state in ALLOWED_COMMANDS


def test_resolving_needs_the_actions_done_or_a_supervisor_override():
    s = Stream()
    for name in PATH:
        s.do(name)
    with pytest.raises(CommandRejected) as err:
        s.do("resolve")
    assert "resolve with a supervisor override" in err.value.allowed
    with pytest.raises(Forbidden):
        s.do(
            "resolve",
            cmd.ResolveCase(summary="x", override=cmd.Override(reason="hurry")),
            by=cmd.By("a2", "agent"),
        )
    s.do(
        "resolve",
        cmd.ResolveCase(summary="x", override=cmd.Override(reason="refund done offline")),
        by=cmd.By("sup", "supervisor"),
    )
    assert s.case.state is S.resolved
    assert s.case.resolution is not None and s.case.resolution.override is not None
    assert s.case.resolution.override.open_actions == (s.case.actions[0].action_id,)
    assert (s.case.resolution.override.by, s.case.resolution.override.role) == ("sup", "supervisor")


def test_compensation_authority():
    s = Stream()
    for name in PATH[:4]:
        s.do(name)
    small = s.do(
        "request_compensation",
        cmd.RequestCompensation(amount=Decimal("50"), currency="EUR", reason="r"),
    )
    assert [e.name for e in small] == ["CompensationRequested", "CompensationApproved"]
    big = s.do(
        "request_compensation",
        cmd.RequestCompensation(amount=Decimal("120"), currency="EUR", reason="r"),
    )
    assert [e.name for e in big] == ["CompensationRequested"]
    assert isinstance(big[0], CompensationRequested)
    rid = big[0].request_id

    def decide(by: str, role: cmd.Role, approve: bool = True) -> list[DomainEvent]:
        return cmd.decide_compensation(
            s.case,
            cmd.DecideCompensation(request_id=rid),
            approve,
            cmd.By(by, role),
            s.now,
            POLICY,
        )

    with pytest.raises(Forbidden, match="own"):
        decide("a1", "supervisor")
    with pytest.raises(Forbidden, match="needs a supervisor"):
        decide("a2", "agent")
    s.record(decide("sup-1", "supervisor"))
    assert s.case.compensation(rid).status == "approved"
    with pytest.raises(CommandRejected):
        decide("sup-2", "supervisor")
    huge = s.do(
        "request_compensation",
        cmd.RequestCompensation(amount=Decimal("900"), currency="EUR", reason="r"),
    )
    assert isinstance(huge[0], CompensationRequested)
    rid = huge[0].request_id
    with pytest.raises(Forbidden, match="needs a manager"):
        decide("sup-1", "supervisor")
    s.record(decide("mgr-1", "manager", approve=False))
    assert s.case.compensation(rid).status == "declined"
    with pytest.raises(InputRejected):
        s.do(
            "request_compensation",
            cmd.RequestCompensation(amount=Decimal("1"), currency="USD", reason="r"),
        )


def test_waiting_on_the_customer_pauses_the_resolution_clock_in_business_time():
    s = Stream(severity="high")  # resolution target: 48 business hours
    s.do("assign")
    due_before = resolution_clock(s.case, POLICY, s.now).due_at
    s.now = T0 + 2 * H
    s.do("request_clarification")
    paused = resolution_clock(s.case, POLICY, T0 + 30 * H)
    assert paused.paused and paused.due_at is None
    assert "resolution:0:breach" not in {t.key for t in deadlines(s.case, POLICY, s.now)}
    s.now = T0 + 24 * H + 3 * H  # Tuesday 12:00: paused 9 business hours (Mon 11-17, Tue 9-12)
    s.do("receive_clarification")
    due_after = resolution_clock(s.case, POLICY, s.now).due_at
    assert due_after is not None and due_before is not None
    assert POLICY.calendar.business_calendar().elapsed(due_before, due_after) == 9 * H


def test_timers_warn_then_breach_and_escalate_once_each():
    s = Stream(severity="critical")  # first response 2 h, manager after 8 business hours
    keys = {t.key: t for t in deadlines(s.case, POLICY, s.now)}
    assert keys["first_response:0:warning"].due_at == T0 + 1.6 * H
    assert keys["first_response:0:breach"].due_at == T0 + 2 * H
    assert on_timer(s.case, "first_response:0:breach", POLICY, T0 + H) == []  # not yet
    s.now = T0 + 2 * H
    for key in ("first_response:0:warning", "first_response:0:breach"):
        s.record(on_timer(s.case, key, POLICY, s.now))
    assert [e.type for e in s.events[1:]] == [
        "DeadlineApproaching",
        "DeadlineBreached",
        "CaseEscalated",
    ]
    assert s.case.escalation_level == "team_lead"
    assert on_timer(s.case, "first_response:0:breach", POLICY, s.now) == []  # fired once
    s.now = T0 + 24 * H + 2 * H  # Tuesday 11:00 = 2 h + 8 business hours
    s.record(on_timer(s.case, "first_response:0:manager", POLICY, s.now))
    assert s.case.escalation_level == "manager"
    s.do("assign")  # the first response is met: no more first-response timers
    assert not [t for t in deadlines(s.case, POLICY, s.now) if t.deadline == "first_response"]
