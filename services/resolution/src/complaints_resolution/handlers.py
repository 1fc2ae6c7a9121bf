"""What resolution does with other services' events."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from complaints_resolution.domain import (
    Case,
    close_withdrawn,
    details_as_clarification,
    open_case,
    reopen_requested,
)
from complaints_resolution.store import change
from complaints_shared.consumer import Handler, Subscription
from complaints_shared.envelope import Event, NewEvent
from complaints_shared.service import Runtime


def subscriptions(rt: Runtime) -> list[Subscription]:
    def handler(decide: Callable[[Case | None, Event], list[NewEvent]]) -> Handler:
        async def handle(conn: asyncpg.Connection, event: Event) -> None:
            await change(conn, rt, event.stream_id, lambda case, _now: decide(case, event))

        return handle

    def opening(case: Case | None, event: Event) -> list[NewEvent]:
        return open_case(event) if case is None else []

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-resolution",
            topics=(t.intake, t.followup),
            handlers={
                "ComplaintReceived": handler(opening),
                "ComplaintWithdrawn": handler(close_withdrawn),
                "ComplaintDetailsAdded": handler(details_as_clarification),
                "ReopenRequested": handler(reopen_requested),
            },
        )
    ]
