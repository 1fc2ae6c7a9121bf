"""Topic names of the public contract, and their creation."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

RETENTION = {"retention.ms": "-1", "retention.bytes": "-1"}
"""Every topic keeps its records for good: a rebuild from offset 0 replays all history (lawful:
personal fields are sealed per customer, and erasure destroys the key)."""


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def intake(self) -> str:
        return self._name("complaints.intake.v2")

    @property
    def resolution(self) -> str:
        return self._name("complaints.resolution.v2")

    @property
    def followup(self) -> str:
        return self._name("complaints.followup.v2")

    @property
    def learning(self) -> str:
        return self._name("complaints.learning.v1")

    @property
    def dlq(self) -> str:
        return self._name("complaints.dlq.v1")

    def all(self) -> list[str]:
        return [self.intake, self.resolution, self.followup, self.learning, self.dlq]


async def ensure_topics(
    bootstrap: str, names: list[str], partitions: int, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created.  Returns once the
    leader of every partition of ``names`` serves it, also of the topics that another service
    has just created (found here, so not created)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        existing = {  # each topic's partitions
            t["topic"]: [p["partition"] for p in t["partitions"]]
            for t in await admin.describe_topics()
        }
        missing = [n for n in names if n not in existing]
        if missing:
            # another service may create them in the meantime
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(n, partitions, replication_factor, topic_configs=RETENTION)
                        for n in missing
                    ]
                )
            log.info("created topics %s", ", ".join(missing))
        await _served(
            bootstrap,
            [TopicPartition(n, p) for n in names for p in existing.get(n, range(partitions))],
            # found: served already, or in a moment (another service has just created them);
            # not waited for long: a partition whose leader is away (a cluster short of a
            # broker) would hold the relay and the consumers back
            within=NEW_TOPICS_SERVED_WITHIN if missing else TOPICS_SERVED_WITHIN,
        )
        return missing
    finally:
        await admin.close()


NEW_TOPICS_SERVED_WITHIN = 30.0  # seconds a start waits for the topics it has created
TOPICS_SERVED_WITHIN = 5.0  # ... for topics that were there


async def _served(bootstrap: str, partitions: list[TopicPartition], within: float) -> None:
    """Until the leader of each partition answers for it.  A broker names a new partition's
    leader a moment before that leader serves it: a consumer asking for its offsets meanwhile
    is refused (the Kafka client logs an ERROR and retries), so the services starting on a
    fresh platform would each log one.  Partitions served already answer at once (about
    50 ms for a service's topics)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=int(within * 1000),
        retry_backoff_ms=25,  # it first asks for the topics' metadata: not 100 ms a try
    )
    try:  # the client retries a refused request quietly until it is answered
        await reader.start()
        await reader.beginning_offsets(partitions)
    except KafkaTimeoutError:  # the services' consumers retry as well: only noisier
        topics = sorted({tp.topic for tp in partitions})
        log.warning("topics not served within %.0f s: %s", within, ", ".join(topics))
    finally:
        await reader.stop()


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a test's, a benchmark's or the
    fault suite's own), so a long-lived broker does not collect partitions; return them."""
    if not prefix:
        raise ValueError("a prefix is required: this never deletes a platform's own topics")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
        return mine
    finally:
        await admin.close()
