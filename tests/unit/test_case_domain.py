"""The case aggregate without I/O: every transition, every refusal, random command sequences."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from complaints_resolution import commands as cmd
from complaints_resolution.domain import (
    ALLOWED,
    ALLOWED_COMMANDS,
    Case,
    S,
    allowed_commands,
    close_withdrawn,
    fold,
    open_case,
    reopen_requested,
)
from complaints_resolution.sla import deadlines, on_timer, resolution_clock
from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, Forbidden, InputRejected
from complaints_shared.events import DomainEvent
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.events.intake import ComplaintReceived, ComplaintWithdrawn, Customer
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
    if name in allowed_commands(case):
        assert DECIDE[name](case, COMMANDS[name](), AGENT, T0, POLICY), (state, name)
    else:
        with pytest.raises(CommandRejected) as err:
            DECIDE[name](case, COMMANDS[name](), AGENT, T0, POLICY)
        assert err.value.state == state.value
        if name != "resolve" or state not in ALLOWED["resolve"]:  # resolve says what to do
            assert err.value.allowed == allowed_commands(case)


MANAGER = cmd.By("m1", "manager")
EVERY_STEP = [*DECIDE, "complete_action", "approve_compensation", "decline_compensation"]


def attempt(s: Stream, name: str) -> list[DomainEvent]:
    """A command as an agent would send it: the first open action, the first pending request
    (decided by a manager, not the requester)."""
    case = s.case
    if name in DECIDE:
        return s.do(name)
    if name == "complete_action":
        action = next(iter(case.open_actions), "none")
        new = cmd.complete_action(case, cmd.CompleteAction(action_id=action), AGENT, s.now, POLICY)
    else:
        request = next(iter(case.pending_compensations), "none")
        new = cmd.decide_compensation(
            case,
            cmd.DecideCompensation(request_id=request),
            name == "approve_compensation",
            MANAGER,
            s.now,
            POLICY,
        )
    s.record(new)
    return new


def foreign(s: Stream, source: str, payload: DomainEvent) -> Event:
    """Another service's event about the stream's complaint."""
    return Event(
        event_id=uuid.uuid4(),
        stream_id=s.id,
        version=1,
        occurred_at=s.now,
        source=source,
        payload=payload,
    )


def withdraw(s: Stream) -> None:
    withdrawn = ComplaintWithdrawn(reason="sorted it myself")
    s.record(close_withdrawn(s.case, foreign(s, "/complaints/intake", withdrawn)))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from([*EVERY_STEP, "withdraw"]), max_size=40),
    st.sampled_from(["20", "200", "2000"]),
)
def test_the_listed_commands_are_exactly_the_ones_the_case_accepts(names, amount):
    """Every command ``allowed_commands`` lists is accepted, every other one refused (409)."""
    s = Stream(severity="medium")
    COMMANDS_WITH = {
        **COMMANDS,
        "request_compensation": lambda: cmd.RequestCompensation(
            amount=Decimal(amount), currency="EUR", reason="trouble"
        ),
    }
    for name in names:
        s.now += timedelta(minutes=7)
        if name == "withdraw":
            withdraw(s)
            continue
        listed = allowed_commands(s.case)
        before = s.case
        try:
            if name == "request_compensation":
                s.do(name, COMMANDS_WITH[name]())
            else:
                attempt(s, name)
            accepted = True
        except CommandRejected:
            accepted = False
            assert s.case == before
        assert accepted == (name in listed), (name, before.state, listed)


def test_a_withdrawn_complaints_case_cannot_be_reopened():
    s = Stream()
    s.do("assign")
    withdraw(s)
    assert s.case.state is S.closed and "reopen" not in allowed_commands(s.case)
    with pytest.raises(CommandRejected):
        s.do("reopen")
    unhappy = ReopenRequested(reason="unhappy", check_id=uuid.uuid4(), score=1, solved=False)
    assert reopen_requested(s.case, foreign(s, "/complaints/followup", unhappy)) == []


def test_a_reopened_case_keeps_its_cause_and_can_go_straight_to_a_new_proposal():
    s = Stream()
    for name in PATH:
        s.do(name)
    [action] = s.case.actions
    attempt(s, "complete_action")
    assert not s.case.open_actions and action.action_id
    s.do("resolve")
    s.do("reopen")
    assert s.case.state is S.investigating and s.case.cause is not None
    assert "propose_solution" in allowed_commands(s.case)
    s.do("propose_solution")
    assert s.case.state is S.solution_proposed


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
    assert "resolve" not in err.value.allowed
    assert err.value.reason is not None and "supervisor's override" in err.value.reason
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


def agreed_on_money(remedy: Remedy, amount: str, by: cmd.By = AGENT) -> tuple[Stream, list]:
    """A case whose agreed solution is ``amount`` EUR of ``remedy``, agreed by ``by``."""
    s = Stream()
    for name in ("assign", "identify_cause"):
        s.do(name)
    option = cmd.SolutionOption(
        remedy=remedy, description="money", amount=Decimal(amount), currency="EUR"
    )
    s.do("propose_solution", cmd.ProposeSolution(options=[option]))
    return s, s.do("agree_solution", by=by)


def test_money_agreed_beyond_the_agents_limit_needs_approval_before_resolving():
    """A refund in a solution is compensation: beyond the agreeing agent's limit (50 EUR) it
    waits for a supervisor's approval like any compensation request, and resolve waits too."""
    s, new = agreed_on_money(Remedy.refund, "200")
    [request] = [e for e in new if isinstance(e, CompensationRequested)]
    assert (request.amount, request.needs) == (Decimal("200"), "supervisor")
    assert "resolve" not in allowed_commands(s.case)
    with pytest.raises(CommandRejected):
        s.do("resolve")
    with pytest.raises(Forbidden):  # an agent cannot approve it
        attempt_as(s, "approve_compensation", cmd.By("a2", "agent"))
    attempt_as(s, "approve_compensation", cmd.By("s1", "supervisor"))
    [resolved] = s.do("resolve")
    assert resolved.compensation_awarded[0].amount == Decimal("200")


def test_money_within_the_agreeing_persons_limit_needs_no_approval():
    for remedy, amount, by in (
        (Remedy.refund, "5", AGENT),
        (Remedy.goodwill_gesture, "300", cmd.By("s1", "supervisor")),
    ):
        s, new = agreed_on_money(remedy, amount, by)
        assert not [e for e in new if isinstance(e, CompensationRequested)]
        assert "resolve" in allowed_commands(s.case)


def attempt_as(s: Stream, name: str, by: cmd.By) -> None:
    request = next(iter(s.case.pending_compensations))
    s.record(
        cmd.decide_compensation(
            s.case,
            cmd.DecideCompensation(request_id=request),
            name == "approve_compensation",
            by,
            s.now,
            POLICY,
        )
    )
