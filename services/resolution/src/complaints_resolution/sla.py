"""SLA clocks of a case, counted in business time and paused while waiting on the customer.

``deadlines`` lists every timer the case needs now (warnings, breaches, escalation to the
manager, overdue actions, the agreed deadline); the adapter stores them durably and calls
``on_timer`` when one is due.  Timers that have fired are recorded in the case's events, so a
timer fires once, also across restarts and replays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from complaints_resolution.domain import Case, S
from complaints_shared.business_time import BusinessCalendar
from complaints_shared.events import DomainEvent
from complaints_shared.events import resolution as ev
from complaints_shared.policy import Policy

ACTIVE_FOR_RESOLUTION = tuple(s for s in S if s not in (S.resolved, S.closed))


@dataclass(frozen=True)
class Timer:
    key: str  # unique per case: "<deadline>:<ref>:<kind>"
    deadline: str  # first_response | resolution | action | agreed_deadline
    ref: str
    kind: str  # warning | breach | manager
    due_at: datetime
    deadline_at: datetime  # the deadline itself (for a warning: the one it warns of)


@dataclass(frozen=True)
class Clock:
    due_at: datetime | None
    met_at: datetime | None
    paused: bool
    remaining: timedelta | None  # business time left (negative: overdue)
    breached: bool


def _paused_time(case: Case, cal: BusinessCalendar, until: datetime) -> timedelta:
    start = case.clock_started_at or case.received_at
    total = timedelta(0)
    for a, b in case.pauses:
        total += cal.elapsed(max(a, start), b or until)
    return total


def resolution_clock(case: Case, policy: Policy, now: datetime) -> Clock:
    cal = policy.calendar.business_calendar()
    start = case.clock_started_at or case.received_at
    target = policy.sla[case.severity].resolution
    met = case.resolved_at
    end = met or now
    used = cal.elapsed(start, end) - _paused_time(case, cal, end)
    remaining = target - used
    if case.paused and met is None:
        return Clock(None, None, True, remaining, remaining < timedelta(0))
    due = cal.add(start, target + _paused_time(case, cal, end))
    breached = (met or now) > due
    return Clock(due, met, False, remaining, breached)


def first_response_clock(case: Case, policy: Policy, now: datetime) -> Clock:
    cal = policy.calendar.business_calendar()
    target = policy.sla[case.severity].first_response
    due = cal.add(case.received_at, target)
    met = case.first_response_at
    remaining = target - cal.elapsed(case.received_at, met or now)
    return Clock(due, met, False, remaining, (met or now) > due)


@dataclass(frozen=True)
class OpenDeadline:
    deadline: str
    ref: str
    due_at: datetime
    target: timedelta | None = None  # for warnings: the SLA target and where it started
    start: datetime | None = None
    paused: timedelta = timedelta(0)


def open_deadlines(case: Case, policy: Policy, now: datetime) -> list[OpenDeadline]:
    """The deadlines not met yet (breached or not); a paused clock has none."""
    cal = policy.calendar.business_calendar()
    sla = policy.sla[case.severity]
    out: list[OpenDeadline] = []
    if case.first_response_at is None and case.state is not S.closed:
        fr = first_response_clock(case, policy, now)
        assert fr.due_at is not None
        out.append(
            OpenDeadline("first_response", "0", fr.due_at, sla.first_response, case.received_at)
        )
    if case.state in ACTIVE_FOR_RESOLUTION:
        if not case.paused:
            rc = resolution_clock(case, policy, now)
            assert rc.due_at is not None
            out.append(
                OpenDeadline(
                    "resolution",
                    str(case.reopen_count),
                    rc.due_at,
                    sla.resolution,
                    case.clock_started_at or case.received_at,
                    _paused_time(case, cal, now),
                )
            )
        out.extend(
            OpenDeadline("action", a.action_id, a.due_at)
            for a in case.actions
            if a.completed_at is None
        )
        if case.agreed is not None:
            out.append(
                OpenDeadline(
                    "agreed_deadline",
                    str(case.reopen_count),
                    case.agreed.deadline,
                )
            )
    return out


def deadlines(case: Case, policy: Policy, now: datetime) -> list[Timer]:
    """Every timer the case needs now, fired ones left out."""
    return timers_of(case, policy, open_deadlines(case, policy, now))


def timers_of(case: Case, policy: Policy, open_now: list[OpenDeadline]) -> list[Timer]:
    """The timers of the case's open deadlines (:func:`open_deadlines`), fired ones left out."""
    cal = policy.calendar.business_calendar()
    rp = policy.resolution
    out: list[Timer] = []
    for d in open_now:
        prefix = f"{d.deadline}:{d.ref}"
        if d.target is not None and d.start is not None:
            out.append(
                Timer(
                    f"{prefix}:warning",
                    d.deadline,
                    d.ref,
                    "warning",
                    cal.add(d.start, d.target * rp.warning_ratio + d.paused),
                    d.due_at,
                )
            )
        out.append(Timer(f"{prefix}:breach", d.deadline, d.ref, "breach", d.due_at, d.due_at))
        if d.deadline in ("first_response", "resolution"):
            out.append(
                Timer(
                    f"{prefix}:manager",
                    d.deadline,
                    d.ref,
                    "manager",
                    cal.add(d.due_at, rp.manager_after),
                    d.due_at,
                )
            )
    return [t for t in out if t.key not in case.fired]


def next_deadline(open_now: list[OpenDeadline]) -> datetime | None:
    """The nearest of the case's open deadlines (:func:`open_deadlines`; in the past:
    overdue), for the worklist."""
    return min((d.due_at for d in open_now), default=None)


def on_timer(case: Case, key: str, policy: Policy, now: datetime) -> list[DomainEvent]:
    """What a due timer means for the case now: a warning, a breach with escalation, or
    nothing (the deadline was met, moved, or already handled)."""
    timer = next((t for t in deadlines(case, policy, now) if t.key == key), None)
    if timer is None or timer.due_at > now:
        return []
    deadline: ev.Deadline = timer.deadline  # type: ignore[assignment]
    owner = case.owner.id if case.owner else None
    if timer.kind == "warning":
        return [
            ev.DeadlineApproaching(
                complaint_id=case.complaint_id,
                deadline=deadline,
                ref=timer.ref,
                due_at=timer.deadline_at,
                timer=timer.key,
            )
        ]
    if timer.kind == "breach":
        return [
            ev.DeadlineBreached(
                complaint_id=case.complaint_id,
                deadline=deadline,
                ref=timer.ref,
                due_at=timer.deadline_at,
                timer=timer.key,
                breached_at=now,
            ),
            ev.CaseEscalated(
                complaint_id=case.complaint_id,
                level="manager" if case.escalation_level == "team_lead" else "team_lead",
                reason=f"{timer.deadline} deadline breached",
                deadline=deadline,
                ref=timer.ref,
                owner=owner,
            ),
        ]
    return [
        ev.CaseEscalated(
            complaint_id=case.complaint_id,
            level="manager",
            reason=f"{timer.deadline} deadline still not met",
            deadline=deadline,
            ref=timer.ref,
            owner=owner,
            timer=timer.key,
        )
    ]
