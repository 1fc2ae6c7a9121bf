"""The operating policy: SLA targets, follow-up delays, categories and limits, from TOML.

Every value has a default, so a policy file names only what it changes.  Durations are
ISO 8601 (``PT4H``, ``P3D``, ``PT5S``).
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEVERITIES = ("low", "medium", "high", "critical")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlaTarget(_Section):
    first_response: timedelta
    resolution: timedelta


def _default_sla() -> dict[str, SlaTarget]:
    h = timedelta(hours=1)
    return {
        "low": SlaTarget(first_response=48 * h, resolution=240 * h),
        "medium": SlaTarget(first_response=24 * h, resolution=120 * h),
        "high": SlaTarget(first_response=8 * h, resolution=48 * h),
        "critical": SlaTarget(first_response=2 * h, resolution=24 * h),
    }


class IntakePolicy(_Section):
    categories: tuple[str, ...] = (
        "product_availability",
        "cleanliness",
        "staff_treatment",
        "pricing_error",
        "waiting_time",
        "product_defect",
        "delivery",
        "billing",
        "policy",
        "other",
    )


class FollowupPolicy(_Section):
    satisfaction_check_delay: timedelta = timedelta(days=3)
    response_period: timedelta = timedelta(days=14)


class LearningPolicy(_Section):
    recurrence_window: timedelta = timedelta(days=90)
    verification_window: timedelta = timedelta(days=60)


class CompensationPolicy(_Section):
    currency: str = "EUR"
    agent_limit: Decimal = Decimal("50")


class Policy(_Section):
    sla: dict[str, SlaTarget] = Field(default_factory=_default_sla)
    intake: IntakePolicy = IntakePolicy()
    followup: FollowupPolicy = FollowupPolicy()
    learning: LearningPolicy = LearningPolicy()
    compensation: CompensationPolicy = CompensationPolicy()

    @model_validator(mode="after")
    def _every_severity_has_targets(self) -> Policy:
        missing = [s for s in SEVERITIES if s not in self.sla]
        if missing:
            raise ValueError(f"sla targets missing for severities: {', '.join(missing)}")
        return self


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path`` (or the built-in one); raises ``ValueError`` naming what is wrong."""
    if path is None:
        return Policy()
    with path.open("rb") as f:
        raw = tomllib.load(f)
    sla = raw.get("sla")
    if isinstance(sla, dict):
        # a file may change some severities only: the others keep their defaults
        raw["sla"] = {**{k: v.model_dump() for k, v in _default_sla().items()}, **sla}
    return Policy.model_validate(raw)
