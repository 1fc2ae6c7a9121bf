"""The intake service."""

from __future__ import annotations

from complaints_intake.api import ROUTERS
from complaints_intake.api.customers import subject_records
from complaints_intake.handlers import subscriptions
from complaints_intake.resources import prepare
from complaints_shared.retention import Prune
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="intake",
    title="Complaint intake",
    description="Records complaints from every channel and acknowledges them at once: thanks,"
    " apology, reference number, what happens next and by when, in the customer's language.",
    default_port=8001,
    package="complaints_intake",
    own_topic=lambda t: t.intake,
    routers=ROUTERS,
    subscriptions=subscriptions,
    prepare=prepare,
    subject_records=subject_records,
    retention=[
        Prune(
            "idempotency_keys",
            "response IS NOT NULL AND created_at < $1",
            lambda r: r.idempotency_keys,
        )
    ],
)
