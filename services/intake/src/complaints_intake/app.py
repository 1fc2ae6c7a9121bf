"""The intake service."""

from __future__ import annotations

from complaints_shared.service import ServiceSpec

from complaints_intake.api import router

SPEC = ServiceSpec(
    name="intake",
    title="Complaint intake",
    description="Records complaints from every channel and acknowledges them at once.",
    default_port=8001,
    package="complaints_intake",
    own_topic=lambda t: t.intake,
    routers=[router],
)
