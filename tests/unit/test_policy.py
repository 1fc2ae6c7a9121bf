"""The TOML policy: ISO 8601 durations, partial files, clear errors."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from complaints_shared.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def test_builtin_policy_has_targets_for_every_severity():
    p = load_policy(None)
    assert set(p.sla) == {"low", "medium", "high", "critical"}
    assert p.sla["critical"].first_response < p.sla["low"].first_response
    assert p.followup.satisfaction_check_delay == timedelta(days=3)


def test_iso_durations_and_a_partial_sla_table(tmp_path):
    p = load_policy(
        write(
            tmp_path,
            """
[sla.critical]
first_response = "PT5S"
resolution = "PT1M30S"

[followup]
satisfaction_check_delay = "P2DT4H"
""",
        )
    )
    assert p.sla["critical"].first_response == timedelta(seconds=5)
    assert p.sla["critical"].resolution == timedelta(seconds=90)
    assert p.sla["low"] == Policy().sla["low"]  # untouched severities keep their defaults
    assert p.followup.satisfaction_check_delay == timedelta(days=2, hours=4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[followup]\nsatisfaction_check_delay = "three days"\n', "satisfaction_check_delay"),
        ('[followup]\nsatisfaction_check_dealy = "P3D"\n', "satisfaction_check_dealy"),
        ('[sla.high]\nfirst_response = "PT1H"\n', "resolution"),
        ("[unknown]\nx = 1\n", "unknown"),
    ],
)
def test_invalid_policies_name_the_offending_setting(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_policy(write(tmp_path, text))


@pytest.mark.parametrize("name", ["default.toml", "demo.toml"])
def test_shipped_policies_load(name):
    p = load_policy(ROOT / "deploy" / "policies" / name)
    assert set(p.sla) >= {"low", "medium", "high", "critical"}


def test_the_calendar_is_built_once_from_the_policy_file(tmp_path):
    p = load_policy(
        write(
            tmp_path,
            '[calendar]\ntimezone = "Europe/Lisbon"\nholidays = [2026-12-25]\n'
            '[calendar.hours]\nmon = "08:00-12:00, 13:00-17:00"\nsat = "closed"\n',
        )
    )
    calendar = p.calendar.business_calendar()
    assert calendar is p.calendar.business_calendar()  # every due date counts in the same one
    assert str(calendar.timezone) == "Europe/Lisbon" and calendar.holidays == {date(2026, 12, 25)}
    assert [len(day) for day in calendar.week] == [2, 0, 0, 0, 0, 0, 0]
    always = load_policy(write(tmp_path, "[calendar]\nalways_open = true\n")).calendar
    assert always.business_calendar().always_open
