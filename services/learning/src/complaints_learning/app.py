"""The learning service."""

from __future__ import annotations

from functools import partial

from complaints_learning.api import ROUTERS
from complaints_learning.handlers import subscriptions
from complaints_learning.resources import LearningResources
from complaints_learning.search import keep_index
from complaints_learning.worker import run_verification
from complaints_shared.customers import by_complaint
from complaints_shared.service import ServiceSpec

SPEC = ServiceSpec(
    name="learning",
    title="Complaint learning",
    description="Turns recurring root causes into problems with corrective actions, catches a"
    " recurrence after a fix, suggests similar complaints across languages, and reports"
    " insights — so that each complaint happens only once.",
    default_port=8004,
    package="complaints_learning",
    own_topic=lambda t: t.learning,
    routers=ROUTERS,
    subscriptions=subscriptions,
    prepare=lambda settings, policy: LearningResources(),
    background=lambda rt: [
        partial(run_verification, rt),
        partial(keep_index, rt.resources.search, rt.pool),
    ],
    subject_records=by_complaint("complaint_facts", "occurrences"),
    # its work is batches of up to 2,000 events, whose objects live until the batch commits:
    # collected after 20,000 net allocations, the youngest generation was walked again and
    # again in mid-batch (the figures: docs/capacity.md, "Learning's rebuild")
    young_collections_after=100_000,
)
