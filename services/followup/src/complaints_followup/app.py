"""The followup service."""

from __future__ import annotations

from functools import partial

from complaints_followup.api import ROUTERS
from complaints_followup.handlers import subscriptions
from complaints_followup.resources import prepare
from complaints_followup.worker import run_followup
from complaints_shared.customers import by_complaint
from complaints_shared.retention import Prune
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="followup",
    title="Complaint follow-up",
    description="Delivers every message to the customer, checks a few days after resolution"
    " that they are happy (a signed survey link, no login), measures CSS and reopens the case"
    " when they are not.",
    default_port=8003,
    package="complaints_followup",
    own_topic=lambda t: t.followup,
    routers=ROUTERS,
    subscriptions=subscriptions,
    prepare=prepare,
    background=lambda rt: [partial(run_followup, rt)],
    subject_records=by_complaint(
        "contact_preferences", "satisfaction_checks", "satisfaction_answers", "deliveries"
    ),
    retention=[
        Prune(
            "deliveries",
            "status <> 'pending' AND coalesce(sent_at, next_attempt_at) < $1",
            lambda r: r.deliveries,
        )
    ],
)
