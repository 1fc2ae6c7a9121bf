"""Business-time arithmetic across nights, weekends, holidays and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import takewhile
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from complaints_shared.business_time import BusinessCalendar, parse_hours

LISBON = ZoneInfo("Europe/Lisbon")
WEEKDAY = parse_hours("09:00-12:30, 14:00-18:00")  # 7.5 h a day
CAL = BusinessCalendar(
    LISBON, (WEEKDAY,) * 5 + (parse_hours("10:00-13:00"), ()), frozenset({date(2026, 12, 25)})
)
H = timedelta(hours=1)


def lisbon(*args: int) -> datetime:
    return datetime(*args, tzinfo=LISBON)


def test_within_one_opening_interval():
    assert CAL.add(lisbon(2026, 11, 23, 9, 0), 2 * H) == lisbon(2026, 11, 23, 11, 0)


def test_lunch_break_is_skipped():
    assert CAL.add(lisbon(2026, 11, 23, 11, 30), 2 * H) == lisbon(2026, 11, 23, 15, 0)


def test_over_night():
    assert CAL.add(lisbon(2026, 11, 23, 17, 0), 2 * H) == lisbon(2026, 11, 24, 10, 0)


def test_started_outside_hours_starts_at_opening():
    assert CAL.add(lisbon(2026, 11, 24, 6, 0), H) == lisbon(2026, 11, 24, 10, 0)


def test_over_the_weekend_saturday_morning_counts_sunday_not():
    # Friday 17:00 + 4 h = 1 h Friday + 3 h Saturday (10-13) → Monday? no: exactly Saturday 13:00
    assert CAL.add(lisbon(2026, 11, 27, 17, 0), 4 * H) == lisbon(2026, 11, 28, 13, 0)
    assert CAL.add(lisbon(2026, 11, 27, 17, 0), 5 * H) == lisbon(2026, 11, 30, 10, 0)


def test_holidays_are_closed():
    # Thursday 24 Dec 17:00 + 2 h: Friday 25 Dec is a holiday → Saturday 26 Dec 11:00
    assert CAL.add(lisbon(2026, 12, 24, 17, 0), 2 * H) == lisbon(2026, 12, 26, 11, 0)


def test_daylight_saving_change_keeps_wall_clock_hours():
    # Lisbon moves from 01:00 to 02:00 on Sunday 29 March 2026.
    # Friday 17:00 + 6 h = 1 h Friday + 3 h Saturday + 2 h Monday → Monday 11:00 summer time
    due = CAL.add(lisbon(2026, 3, 27, 17, 0), 6 * H)
    assert due == lisbon(2026, 3, 30, 11, 0)
    assert due.astimezone(UTC) == datetime(2026, 3, 30, 10, 0, tzinfo=UTC)


def test_elapsed_counts_only_opening_hours():
    assert CAL.elapsed(lisbon(2026, 11, 23, 8, 0), lisbon(2026, 11, 24, 10, 0)) == 8.5 * H
    assert CAL.elapsed(lisbon(2026, 11, 24, 10, 0), lisbon(2026, 11, 23, 8, 0)) == timedelta(0)


def test_twenty_four_seven_counts_every_second():
    cal = BusinessCalendar.twenty_four_seven()
    start = datetime(2026, 11, 22, 23, 59, 58, tzinfo=UTC)
    assert cal.add(start, timedelta(seconds=5)) == start + timedelta(seconds=5)
    assert cal.elapsed(start, start + timedelta(days=2)) == timedelta(days=2)


@pytest.mark.parametrize("spec", ["9-17", "18:00-09:00", "09:00-12:00,11:00-13:00", "x"])
def test_bad_opening_hours_are_refused(spec):
    with pytest.raises(ValueError):
        parse_hours(spec)


@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=0, max_value=60 * 200),
)
def test_add_and_elapsed_agree(start, minutes):
    due = CAL.add(start, timedelta(minutes=minutes))
    assert due >= start
    assert CAL.elapsed(start, due) == timedelta(minutes=minutes)


def _walked_add(cal: BusinessCalendar, start: datetime, duration: timedelta) -> datetime:
    """:meth:`BusinessCalendar.add` as a walk over every opening interval: the deadline lies
    in the first interval by whose end ``duration`` has been used, as far back from its end as
    was used beyond ``duration``."""
    start = start.astimezone(UTC)
    used = timedelta(0)
    for a, b in cal._intervals(start):
        if b > start:
            used += b - max(a, start)
            if used >= duration:
                return b - (used - duration)
    raise AssertionError("unreachable")


def _walked_elapsed(cal: BusinessCalendar, start: datetime, end: datetime) -> timedelta:
    """:meth:`BusinessCalendar.elapsed` as the sum of every opening interval's overlap with
    the span."""
    if end <= start:
        return timedelta(0)
    reached = takewhile(lambda i: i[0] < end, cal._intervals(start))
    overlaps = (min(b, end) - max(a, start) for a, b in reached)
    return sum((o for o in overlaps if o > timedelta(0)), timedelta(0))


# a calendar with a day open until midnight and two holidays on a weekday and a Saturday
LATE = BusinessCalendar(
    LISBON,
    (WEEKDAY,) * 4 + (parse_hours("09:00-00:00"), parse_hours("10:00-13:00"), ()),
    frozenset({date(2026, 12, 25), date(2027, 3, 27)}),
)
instants = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@pytest.mark.parametrize("cal", [CAL, LATE], ids=["weekdays", "late_fridays"])
@given(start=instants, seconds=st.integers(min_value=1, max_value=3600 * 24 * 60))
def test_add_skips_whole_days_to_the_same_deadline_as_walking_every_interval(cal, start, seconds):
    """Deadlines up to 60 days of business time (weeks of calendar days, across holidays and
    daylight-saving changes), whole hours and days included (where a deadline is exactly a
    day's end)."""
    for duration in (timedelta(seconds=seconds), timedelta(hours=seconds // 3600 + 1)):
        assert cal.add(start, duration) == _walked_add(cal, start, duration)


@pytest.mark.parametrize("cal", [CAL, LATE], ids=["weekdays", "late_fridays"])
@given(start=instants, end=instants)
def test_elapsed_adds_whole_days_as_walking_every_interval_does(cal, start, end):
    assert cal.elapsed(start, end) == _walked_elapsed(cal, start, end)
