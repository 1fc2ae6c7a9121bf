"""What resolution does with other services' events."""

from __future__ import annotations

import asyncpg

from complaints_resolution.domain import close_withdrawn, fold, open_case
from complaints_shared.consumer import Subscription
from complaints_shared.envelope import Event
from complaints_shared.service import Runtime


def subscriptions(rt: Runtime) -> list[Subscription]:
    async def on_complaint_received(conn: asyncpg.Connection, event: Event) -> None:
        if await rt.store.version(conn, event.stream_id) > 0:
            return  # the case exists already
        await rt.store.append(conn, event.stream_id, 0, open_case(event))

    async def on_complaint_withdrawn(conn: asyncpg.Connection, event: Event) -> None:
        events = await rt.store.load(conn, event.stream_id)
        case = fold(events)
        new = close_withdrawn(case, event)
        if new:
            await rt.store.append(conn, event.stream_id, len(events), new)

    return [
        Subscription(
            name=f"{rt.topics.prefix}complaints-resolution",
            topics=(rt.topics.intake,),
            handlers={
                "ComplaintReceived": on_complaint_received,
                "ComplaintWithdrawn": on_complaint_withdrawn,
            },
        )
    ]
