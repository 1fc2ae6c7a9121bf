"""The resolution service."""

from __future__ import annotations

from functools import partial

from complaints_resolution.api import ROUTERS
from complaints_resolution.handlers import subscriptions
from complaints_resolution.resources import prepare
from complaints_resolution.worker import run_timers
from complaints_shared.customers import by_complaint
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="resolution",
    title="Complaint resolution",
    description="Runs each complaint's case: a named owner, clarification, cause, solutions the"
    " customer approves, actions with deadlines, SLA clocks in business hours, escalation and"
    " compensation authority.",
    default_port=8002,
    package="complaints_resolution",
    own_topic=lambda t: t.resolution,
    routers=ROUTERS,
    subscriptions=subscriptions,
    prepare=prepare,
    background=lambda rt: [partial(run_timers, rt)],
    subject_records=by_complaint("cases", "timers"),  # no personal data outside its events
)
