"""The TOML policy: ISO 8601 durations, partial files, clear errors."""

from __future__ import annotations

from datetime import timedelta
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
