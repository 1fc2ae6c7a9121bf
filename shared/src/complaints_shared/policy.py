"""The operating policy: SLA targets, follow-up delays, categories and limits, from TOML.

Every value has a default, so a policy file names only what it changes.  Durations are
ISO 8601 (``PT4H``, ``P3D``, ``PT5S``).
"""

from __future__ import annotations

import functools
import re
import tomllib
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from complaints_shared.business_time import WEEKDAYS, BusinessCalendar, parse_hours

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


TAXONOMIES = ("retail", "telecom", "utilities", "financial_services")
"""The taxonomies shipped in ``complaints_shared/taxonomies``."""


class Category(_Section):
    description: str = ""
    keywords: tuple[str, ...] = ()


class Taxonomy(_Section):
    """A business's complaint categories and the keywords that suggest each; ``other`` is
    always there (no keyword suggests it)."""

    categories: dict[str, Category]

    @model_validator(mode="after")
    def _named(self) -> Taxonomy:
        bad = [c for c in self.categories if not re.fullmatch(r"[a-z][a-z0-9_]{0,59}", c)]
        if bad:
            raise ValueError(f"category names must be snake_case: {bad}")
        if "other" in self.categories:
            raise ValueError("'other' is implied: do not list it")
        if not self.categories:
            raise ValueError("a taxonomy needs at least one category")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.categories, "other")

    @classmethod
    def load(cls, name_or_path: str) -> Taxonomy:
        """A shipped taxonomy by name (read once per process), or the TOML file at a path."""
        if name_or_path in TAXONOMIES:
            return _shipped(name_or_path)
        if not name_or_path.endswith(".toml"):
            raise ValueError(
                f"unknown taxonomy {name_or_path!r}: one of {', '.join(TAXONOMIES)},"
                " or the path of a .toml file"
            )
        try:
            text = Path(name_or_path).read_text("utf-8")
        except OSError as exc:
            raise ValueError(f"taxonomy file {name_or_path}: {exc.strerror}") from None
        return cls.model_validate(tomllib.loads(text))


@functools.cache
def _shipped(name: str) -> Taxonomy:
    text = resources.files("complaints_shared").joinpath("taxonomies", f"{name}.toml")
    return Taxonomy.model_validate(tomllib.loads(text.read_text("utf-8")))


class IntakePolicy(_Section):
    taxonomy: str = Field(
        "retail",
        description="categories and their keywords: a shipped taxonomy (retail, telecom,"
        " utilities, financial_services) or a .toml file (relative to the policy file)",
    )
    languages: tuple[str, ...] = ("en", "pt", "es", "hu")
    default_language: str = "en"
    repeat_window: timedelta = timedelta(days=30)
    repeat_threshold: int = Field(3, ge=2, description="complaints in the window that alert")
    duplicate_window: timedelta = timedelta(days=7)
    duplicate_similarity: float = Field(0.85, gt=0, le=1)
    negative_wording_threshold: int = Field(2, ge=1)
    max_attachments: int = Field(10, ge=0, le=100)
    _taxonomy: Taxonomy = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._taxonomy = Taxonomy.load(self.taxonomy)

    @model_validator(mode="after")
    def _consistent(self) -> IntakePolicy:
        if self.default_language not in self.languages:
            raise ValueError(f"default_language {self.default_language!r} not in languages")
        return self

    @property
    def categories(self) -> tuple[str, ...]:
        """The taxonomy's categories, ``other`` last."""
        return self._taxonomy.names

    @property
    def category_keywords(self) -> dict[str, tuple[str, ...]]:
        return {name: c.keywords for name, c in self._taxonomy.categories.items()}


def _default_hours() -> dict[str, str]:
    return {d: ("09:00-17:00" if d not in ("sat", "sun") else "") for d in WEEKDAYS}


class CalendarPolicy(_Section):
    """Opening hours that SLA clocks count in; ``always_open`` makes every hour count."""

    timezone: str = "UTC"
    always_open: bool = False
    hours: dict[str, str] = Field(default_factory=_default_hours)
    holidays: tuple[date, ...] = ()
    _calendar: BusinessCalendar = PrivateAttr()

    @model_validator(mode="after")
    def _valid(self) -> CalendarPolicy:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        unknown = set(self.hours) - set(WEEKDAYS)
        if unknown:
            raise ValueError(f"unknown weekdays {sorted(unknown)}; use {', '.join(WEEKDAYS)}")
        week = [parse_hours(self.hours.get(d, "")) for d in WEEKDAYS]
        if not self.always_open and not any(week):
            raise ValueError("the calendar has no opening hours: set some or always_open")
        return self

    def model_post_init(self, context: Any) -> None:
        # built once: every SLA clock and due date counts in it (the policy is frozen)
        self._calendar = (
            BusinessCalendar.twenty_four_seven()
            if self.always_open
            else BusinessCalendar(
                ZoneInfo(self.timezone),
                tuple(parse_hours(self.hours.get(d, "")) for d in WEEKDAYS),
                frozenset(self.holidays),
            )
        )

    def business_calendar(self) -> BusinessCalendar:
        return self._calendar


class FollowupPolicy(_Section):
    satisfaction_check_delay: timedelta = timedelta(days=3)
    response_period: timedelta = timedelta(days=14)
    reminder_after: timedelta = Field(
        timedelta(days=7), description="after sending; must be within the period"
    )
    delivery_max_attempts: int = Field(8, ge=1, le=50)
    delivery_retry: timedelta = Field(timedelta(seconds=30), description="first retry delay")
    delivery_retry_max: timedelta = timedelta(hours=1)
    timer_poll: timedelta = Field(
        timedelta(seconds=1),
        description="how often due checks, reminders, expiry and retries are looked at"
        " (a newly queued message is handed over at once)",
    )

    @model_validator(mode="after")
    def _reminder_before_expiry(self) -> FollowupPolicy:
        if self.reminder_after >= self.response_period:
            raise ValueError("reminder_after must be shorter than response_period")
        return self


class LearningPolicy(_Section):
    recurrence_window: timedelta = timedelta(days=90)
    verification_window: timedelta = timedelta(days=60)


class CompensationPolicy(_Section):
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    agent_limit: Decimal = Field(Decimal("50"), ge=0)
    supervisor_limit: Decimal = Field(Decimal("500"), ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> CompensationPolicy:
        if self.supervisor_limit < self.agent_limit:
            raise ValueError("supervisor_limit must not be below agent_limit")
        return self

    def authority_for(self, amount: Decimal) -> Literal["none", "supervisor", "manager"]:
        """Who must approve a compensation of ``amount``: nobody within the agent's limit."""
        if amount <= self.agent_limit:
            return "none"
        return "supervisor" if amount <= self.supervisor_limit else "manager"

    def may_grant(self, role: str | None, amount: Decimal) -> bool:
        """Whether ``role`` may grant ``amount`` on their own, with nobody's approval (an agent
        up to the agent's limit, a supervisor up to theirs, a manager any amount)."""
        rank = {"agent": 0, "supervisor": 1, "manager": 2}
        needed = {"none": 0, "supervisor": 1, "manager": 2}[self.authority_for(amount)]
        return rank.get(role or "", -1) >= needed

    def may_approve(self, role: str, amount: Decimal) -> bool:
        """Whether ``role`` has the authority for ``amount`` (the four-eyes rule is separate)."""
        rank = {"agent": 0, "supervisor": 1, "manager": 2}
        needed = {"none": 0, "supervisor": 1, "manager": 2}[self.authority_for(amount)]
        return rank.get(role, -1) >= max(needed, 1)


class ResolutionPolicy(_Section):
    root_causes: tuple[str, ...] = (
        "process",
        "product_defect",
        "staff_behaviour",
        "policy",
        "supplier",
        "communication",
        "pricing_system",
        "capacity",
        "customer_error",
        "unknown",
    )
    warning_ratio: float = Field(0.8, gt=0, lt=1, description="warn when this share is used")
    manager_after: timedelta = Field(
        timedelta(hours=8), description="business time after a breach: to the manager"
    )
    timer_poll: timedelta = Field(timedelta(seconds=1), description="how often timers are checked")


class RetentionPolicy(_Section):
    """How long operational copies are kept; the events themselves are kept for good (their
    personal fields are sealed, and erasure destroys the key)."""

    outbox_sent: timedelta = Field(timedelta(days=7), description="outbox rows after publishing")
    inbox: timedelta = Field(
        timedelta(days=30),
        description="inbox rows: longer than any redelivery (a consumer group reset) may reach",
    )
    idempotency_keys: timedelta = Field(timedelta(days=7), description="Idempotency-Key answers")
    deliveries: timedelta = Field(
        timedelta(days=30), description="customer messages sent, cancelled or given up"
    )
    prune_every: timedelta = Field(timedelta(hours=1), description="how often pruning runs")
    prune_batch: int = Field(1000, ge=1, le=100_000, description="rows a statement deletes")


class Policy(_Section):
    retention: RetentionPolicy = RetentionPolicy()
    sla: dict[str, SlaTarget] = Field(default_factory=_default_sla)
    intake: IntakePolicy = IntakePolicy()
    calendar: CalendarPolicy = CalendarPolicy()
    followup: FollowupPolicy = FollowupPolicy()
    learning: LearningPolicy = LearningPolicy()
    compensation: CompensationPolicy = CompensationPolicy()
    resolution: ResolutionPolicy = ResolutionPolicy()

    def first_response_due(self, received_at: datetime, severity: str) -> datetime:
        """When the first response is due, counted in business time."""
        return self.calendar.business_calendar().add(received_at, self.sla[severity].first_response)

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
    intake = raw.get("intake")
    if isinstance(intake, dict) and str(intake.get("taxonomy", "")).endswith(".toml"):
        # a taxonomy file is named relative to the policy file
        intake["taxonomy"] = str(path.parent / intake["taxonomy"])
    sla = raw.get("sla")
    if isinstance(sla, dict):
        # a file may change some severities only: the others keep their defaults
        raw["sla"] = {**{k: v.model_dump() for k, v in _default_sla().items()}, **sla}
    return Policy.model_validate(raw)
