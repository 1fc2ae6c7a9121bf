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
    # its work is batches of up to 2,000 events, whose objects live until the batch commits
    # (and the next one's, read meanwhile).  Learning consuming 70,000 events, then replaying
    # them: at 20,000 net allocations its youngest generation was collected 135 times (729 ms
    # in all), at 100,000 30 times (47 ms), as a batch's objects mostly go before the count
    # reaches it; the longest pause was 25 ms either way.  The replay: 18,800 events a second
    # on average against 16,100 (six alternating pairs, higher in each); of 140,000 events,
    # alike (15,900 against 16,300, five runs each)
    young_collections_after=100_000,
)
