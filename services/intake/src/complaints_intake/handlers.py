"""Intake keeps each complaint's timeline from the other services' events."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from complaints_intake.projection import record_timeline
from complaints_shared.consumer import Subscription
from complaints_shared.envelope import Event
from complaints_shared.service import Runtime


def _complaint_id(event: Event) -> UUID:
    ref = event.data.get("complaint_id")
    try:
        return UUID(str(ref)) if ref else event.stream_id
    except ValueError:
        return event.stream_id


def subscriptions(rt: Runtime) -> list[Subscription]:
    async def on_any(conn: asyncpg.Connection, event: Event) -> None:
        complaint_id = _complaint_id(event)
        if await conn.fetchval("SELECT true FROM complaints WHERE id = $1", complaint_id):
            service = event.source.rstrip("/").rsplit("/", 1)[-1]
            await record_timeline(conn, service, complaint_id, event)

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-intake-timeline",
            topics=(t.resolution, t.followup, t.learning),
            handlers={},
            fallback=on_any,
        )
    ]
