"""The followup service."""

from __future__ import annotations

from complaints_followup.api import router
from complaints_followup.handlers import subscriptions
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="followup",
    title="Complaint follow-up",
    description="Schedules satisfaction checks after resolution; reopens unhappy customers' cases.",
    default_port=8003,
    package="complaints_followup",
    own_topic=lambda t: t.followup,
    routers=[router],
    subscriptions=subscriptions,
)
