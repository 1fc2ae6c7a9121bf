"""What learning does with the other services' events."""

from __future__ import annotations

import asyncpg

from complaints_shared.consumer import Subscription
from complaints_shared.envelope import Event
from complaints_shared.service import Runtime


def subscriptions(rt: Runtime) -> list[Subscription]:
    async def on_complaint_received(conn: asyncpg.Connection, event: Event) -> None:
        await conn.execute(
            "INSERT INTO complaint_facts (complaint_id, category, channel, severity, received_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (complaint_id) DO NOTHING",
            event.stream_id,
            event.data.get("category", "other"),
            event.data.get("channel"),
            event.data.get("severity"),
            event.occurred_at,
        )

    return [
        Subscription(
            name=f"{rt.topics.prefix}complaints-learning",
            topics=(rt.topics.intake,),
            handlers={"ComplaintReceived": on_complaint_received},
        )
    ]
