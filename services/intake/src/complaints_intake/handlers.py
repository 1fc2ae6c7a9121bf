"""Intake keeps each complaint's timeline from the other services' events."""

from __future__ import annotations

from typing import Any

import asyncpg

from complaints_intake.domain import case_progress
from complaints_intake.timeline import complaint_of, summarise
from complaints_shared.consumer import Subscription, write
from complaints_shared.envelope import Event
from complaints_shared.events import resolution as rs
from complaints_shared.service import Runtime

# Resolution's events come in order per complaint, so the status follows them; a withdrawn
# complaint stays withdrawn.
_TIMELINE_AND_STATUS = """
WITH known AS (
    SELECT id FROM complaints WHERE id = $2
), entry AS (
    INSERT INTO timeline (event_id, complaint_id, service, type, occurred_at, version, summary)
    SELECT $1, id, $3, $4, $5, $6, $7 FROM known
    ON CONFLICT (event_id) DO NOTHING
), progress AS (
    UPDATE complaints SET status = $8
     WHERE id = (SELECT id FROM known) AND $8::text IS NOT NULL AND status <> 'withdrawn'
)
SELECT 1
"""


def subscriptions(rt: Runtime) -> list[Subscription]:
    async def on_any(conn: asyncpg.Connection, event: Event[Any]) -> None:
        complaint_id = complaint_of(event)
        status = case_progress(event.payload)
        if isinstance(event.payload, rs.CaseClassified):  # an agent confirmed or corrected
            c = event.payload
            await conn.execute(
                "UPDATE complaints SET category = $2, severity = $3, received = received"
                " || jsonb_build_object('category', $2::text, 'severity', $3::text,"
                " 'product', $4::text, 'category_suggested', false,"
                " 'severity_suggested', false) WHERE id = $1",
                complaint_id,
                c.category,
                c.severity.value,
                c.product,
            )
        # the timeline entry and the status, for a complaint intake knows: queued with the
        # batch's others (nothing later in the batch reads them)
        await write(
            conn,
            _TIMELINE_AND_STATUS,
            event.event_id,
            complaint_id,
            event.service,
            event.type,
            event.occurred_at,
            event.version,
            summarise(event.payload),
            status.value if status is not None else None,
        )

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-intake-timeline",
            topics=(t.resolution, t.followup, t.learning),
            handlers={},
            fallback=on_any,
        )
    ]
