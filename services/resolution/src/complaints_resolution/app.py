"""The resolution service."""

from __future__ import annotations

from complaints_resolution.api import router
from complaints_resolution.handlers import subscriptions
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="resolution",
    title="Complaint resolution",
    description="Runs each complaint's case: owner, cause, agreed solution, actions, SLA clocks.",
    default_port=8002,
    package="complaints_resolution",
    own_topic=lambda t: t.resolution,
    routers=[router],
    subscriptions=subscriptions,
)
