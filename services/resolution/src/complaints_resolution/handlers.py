"""What resolution does with other services' events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from complaints_resolution.domain import (
    Case,
    close_withdrawn,
    details_as_clarification,
    open_case,
    reopen_requested,
)
from complaints_resolution.messages import telling
from complaints_resolution.projection import cases
from complaints_resolution.resources import ResolutionResources
from complaints_shared.consumer import Handler, Subscription, on
from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.events.intake import (
    ComplaintDetailsAdded,
    ComplaintReceived,
    ComplaintWithdrawn,
)
from complaints_shared.service import Runtime


def subscriptions(rt: Runtime) -> list[Subscription]:
    res: ResolutionResources = rt.resources
    repository = cases(rt)

    def handler(
        decide: Callable[[Case | None, Any], Sequence[DomainEvent]], *, opens: bool = False
    ) -> Handler:
        """``opens``: the event starts its case (no stream to read first, but for a replay)."""

        async def handle(conn: asyncpg.Connection, event: Event[Any]) -> None:
            await repository.execute(
                conn,
                event.stream_id,
                telling(
                    lambda case: decide(case, event),
                    res.messages,
                    rt.policy.calendar.timezone,
                ),
                likely_new=opens,
            )

        return handle

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-resolution",
            topics=(t.intake, t.followup),
            handlers=dict(
                [
                    on(ComplaintReceived, handler(open_case, opens=True)),
                    on(ComplaintWithdrawn, handler(close_withdrawn)),
                    on(ComplaintDetailsAdded, handler(details_as_clarification)),
                    on(ReopenRequested, handler(reopen_requested)),
                ]
            ),
            appends_to_their_streams=True,  # each event's case is its complaint's stream
        )
    ]
