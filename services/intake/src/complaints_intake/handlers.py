"""Intake keeps each complaint's timeline from the other services' events."""

from __future__ import annotations

from typing import Any

import asyncpg

from complaints_intake.domain import case_progress
from complaints_intake.projection import record_timeline
from complaints_intake.timeline import complaint_of
from complaints_shared.consumer import Subscription
from complaints_shared.envelope import Event
from complaints_shared.events import resolution as rs
from complaints_shared.service import Runtime


def subscriptions(rt: Runtime) -> list[Subscription]:
    async def on_any(conn: asyncpg.Connection, event: Event[Any]) -> None:
        complaint_id = complaint_of(event)
        if await conn.fetchval("SELECT true FROM complaints WHERE id = $1", complaint_id):
            await record_timeline(conn, complaint_id, event)
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
            status = case_progress(event.payload)
            if status is not None:  # resolution's events come in order per complaint
                await conn.execute(
                    "UPDATE complaints SET status = $2 WHERE id = $1 AND status <> 'withdrawn'",
                    complaint_id,
                    status.value,
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
