"""The learning service."""

from __future__ import annotations

from complaints_learning.api import router
from complaints_learning.handlers import subscriptions
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="learning",
    title="Complaint learning",
    description="Turns recurring root causes into problems with corrective actions; insights.",
    default_port=8004,
    package="complaints_learning",
    own_topic=lambda t: t.learning,
    routers=[router],
    subscriptions=subscriptions,
)
