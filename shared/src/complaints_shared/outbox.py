"""The outbox relay: publishes committed events to Kafka in commit order, then marks them sent.

One relay per database is active at a time (a session advisory lock elects it).  It wakes on
``LISTEN complaints_outbox`` (the store notifies in the appending transaction), publishes the
unsent rows in ``position`` order with an idempotent ``acks=all`` producer, and marks them sent
only after every record of the batch was acknowledged.  A crash between the two republishes
the batch: consumers' inboxes keep the effect single.  Per stream, order holds: version n+1
can only be appended after version n committed, so it always has the higher position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from complaints_shared.envelope import Event, to_kafka_record
from complaints_shared.events import DomainEvent
from complaints_shared.eventstore import OUTBOX_CHANNEL, row_to_event
from complaints_shared.metrics import ServiceMetrics
from complaints_shared.telemetry import (
    PRODUCER,
    Telemetry,
    extract_context,
    inject_context,
    record_error,
)
from complaints_shared.telemetry import messaging_attributes as attrs

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x6F7574626F78  # "outbox"


@dataclass(frozen=True, slots=True)
class PendingRow:
    position: int
    topic: str
    trace_context: dict[str, str]
    event: Event[DomainEvent]


class OutboxRelay:
    def __init__(
        self,
        *,
        dsn: str,
        password: str | None = None,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        source: str,
        telemetry: Telemetry,
        metrics: ServiceMetrics | None = None,
        batch_size: int = 500,
        idle_poll_seconds: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._password = password
        self._pool = pool
        self._producer = producer
        self._source = source
        self._telemetry = telemetry
        self._metrics = metrics
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._wake = asyncio.Event()
        self.is_leader = False

    async def run(self) -> None:
        """Relay forever; reconnects with backoff after database or broker failures."""
        backoff = 0.2
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay: database unavailable (%s); retrying", type(exc).__name__)
            except Exception as exc:  # a broker error: nothing was marked sent, so retry
                log.warning(
                    "outbox relay: publish failed (%s: %s); retrying", type(exc).__name__, exc
                )
            self.is_leader = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _run_once(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self._dsn, password=self._password)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _LEADER_LOCK)
            self.is_leader = True
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            while True:
                self._wake.clear()
                published = await self.publish_pending()
                if published >= self._batch_size:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_poll)
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=2))

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows and mark it sent; return how many were sent."""
        rows = await self.fetch_pending()
        if not rows:
            return 0
        await self.publish(rows)
        await self.mark_sent([r.position for r in rows])
        return len(rows)

    async def fetch_pending(self) -> list[PendingRow]:
        async with self._pool.acquire() as conn:
            records = await conn.fetch(
                "SELECT o.position, o.topic, o.trace_context,"
                "       e.stream_id, e.version, e.event_id, e.type, e.occurred_at, e.data"
                "  FROM outbox o JOIN events e USING (event_id)"
                " WHERE o.sent_at IS NULL ORDER BY o.position LIMIT $1",
                self._batch_size,
            )
            if self._metrics is not None:
                # a short batch holds every unsent row: count only when there may be more
                pending = len(records)
                if pending >= self._batch_size:
                    pending = await conn.fetchval(
                        "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
                    )
                self._metrics.outbox_pending.set(pending)
        return [
            PendingRow(
                r["position"],
                r["topic"],
                dict(r["trace_context"] or {}),
                row_to_event(r, self._source),
            )
            for r in records
        ]

    async def publish(self, rows: list[PendingRow]) -> None:
        """Send every row (in order) and wait until the broker acknowledged all of them."""
        tracer = self._telemetry.tracer
        spans = []
        acks = []
        try:
            for row in rows:
                span = tracer.start_span(
                    f"{row.topic} publish",
                    context=extract_context(row.trace_context),
                    kind=PRODUCER,
                    attributes=attrs("publish", row.topic, row.event),
                )
                spans.append(span)
                record = to_kafka_record(row.event, inject_context(span))
                acks.append(
                    await self._producer.send(
                        row.topic, record.value, key=record.key, headers=record.headers
                    )
                )
            await asyncio.gather(*acks)
        except BaseException as exc:
            for span in spans:
                record_error(span, exc)
            raise
        finally:
            for span in spans:
                span.end()
        if self._metrics is not None:
            for row in rows:
                self._metrics.outbox_published.labels(row.topic).inc()

    async def mark_sent(self, positions: list[int]) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE position = ANY($1::bigint[])", positions
            )
