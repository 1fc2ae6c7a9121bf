"""Business time: deadlines and elapsed time counted in opening hours, skipping holidays.

All arithmetic is done on UTC instants, so daylight-saving changes shorten or lengthen a day
as the wall clock says, and never shift a deadline by an hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HORIZON_DAYS = 3660  # a deadline further than ten years of opening days away is a policy error
_DAYS_KEPT = 20_000  # days whose opening intervals a calendar keeps (then it starts over)
_ONE_DAY = timedelta(days=1)

# A day's opening intervals as UTC instants, in order, and their total length
Day = tuple[tuple[tuple[datetime, datetime], ...], timedelta]


def parse_hours(spec: str) -> tuple[tuple[time, time], ...]:
    """``"09:00-12:30, 14:00-18:00"`` → intervals; ``""`` or ``"closed"`` → none."""
    spec = spec.strip().lower()
    if spec in ("", "closed"):
        return ()
    out: list[tuple[time, time]] = []
    for part in spec.split(","):
        try:
            a, b = (time.fromisoformat(x.strip()) for x in part.split("-"))
        except ValueError as exc:
            raise ValueError(f"opening hours {part.strip()!r} are not HH:MM-HH:MM") from exc
        if b <= a and b != time(0):
            raise ValueError(f"opening hours {part.strip()!r} close before they open")
        if out and a < out[-1][1]:
            raise ValueError(f"opening hours {spec!r} overlap or are not in order")
        out.append((a, b))
    return tuple(out)


@dataclass(frozen=True)
class BusinessCalendar:
    """Weekly opening hours in a time zone, minus holidays; or always open (24/7)."""

    timezone: ZoneInfo
    week: tuple[tuple[tuple[time, time], ...], ...]  # Monday first
    holidays: frozenset[date] = frozenset()
    always_open: bool = False
    # each day's opening intervals as UTC instants and their total, once computed: a deadline
    # walks the same few days again and again, and placing a wall-clock time in a zone is the
    # costly part
    _days: dict[date, Day] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def twenty_four_seven(cls) -> BusinessCalendar:
        return cls(ZoneInfo("UTC"), ((),) * 7, frozenset(), True)

    def _days_from(self, start: datetime) -> Iterator[Day]:
        """Each day's opening (see :meth:`_opening`) from the day of ``start`` on, in order."""
        day = start.astimezone(self.timezone).date()
        for _ in range(_HORIZON_DAYS):
            yield self._opening(day)
            day += _ONE_DAY
        raise ValueError("no opening hours within ten years: check the calendar policy")

    def _intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Opening intervals (UTC instants) from the day of ``start`` on, in order."""
        for intervals, _ in self._days_from(start):
            yield from intervals

    def _opening(self, day: date) -> Day:
        """The day's opening intervals as UTC instants (none on a holiday), and their total."""
        found = self._days.get(day)
        if found is None:
            intervals = () if day in self.holidays else tuple(self._placed(day))
            found = (intervals, sum((b - a for a, b in intervals), timedelta(0)))
            if len(self._days) >= _DAYS_KEPT:
                self._days.clear()
            self._days[day] = found
        return found

    def _placed(self, day: date) -> Iterator[tuple[datetime, datetime]]:
        for opens, closes in self.week[day.weekday()]:
            a = datetime.combine(day, opens, self.timezone).astimezone(UTC)
            end_day = day + timedelta(days=1) if closes == time(0) else day
            b = datetime.combine(end_day, closes, self.timezone).astimezone(UTC)
            yield a, b

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant when ``duration`` of business time has passed after ``start``.

        A day that opens after ``start`` and ends before the deadline counts as its total,
        without walking its intervals: a deadline weeks away walks days, not intervals."""
        start = start.astimezone(UTC)
        if self.always_open or duration <= timedelta(0):
            return start + max(duration, timedelta(0))
        remaining = duration
        for intervals, total in self._days_from(start):
            if not intervals:
                continue
            if remaining > total and intervals[0][0] >= start:
                remaining -= total
                continue
            for a, b in intervals:
                if b <= start:
                    continue
                s = max(a, start)
                if remaining <= b - s:
                    return s + remaining
                remaining -= b - s
        raise AssertionError("unreachable")

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two instants (zero if ``end`` is not after ``start``)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if end <= start:
            return timedelta(0)
        if self.always_open:
            return end - start
        total = timedelta(0)
        for intervals, day_total in self._days_from(start):
            if not intervals:
                continue
            if intervals[0][0] >= end:
                break
            if intervals[0][0] >= start and intervals[-1][1] <= end:
                total += day_total  # the whole day lies between the two
                continue
            for a, b in intervals:
                if a >= end:
                    break
                total += max(timedelta(0), min(b, end) - max(a, start))
        return total

    def is_open(self, at: datetime) -> bool:
        if self.always_open:
            return True
        return any(a <= at < b for a, b in self._intervals(at - timedelta(days=1)) if a <= at)
