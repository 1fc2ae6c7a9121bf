"""What resolution does with other services' events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import asyncpg
from opentelemetry.context import attach, detach

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
from complaints_shared.consumer import Handler, Subscription, defer, on
from complaints_shared.envelope import Event
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.events.intake import (
    ComplaintDetailsAdded,
    ComplaintReceived,
    ComplaintWithdrawn,
)
from complaints_shared.eventstore import current_trace_context
from complaints_shared.service import Runtime
from complaints_shared.telemetry import extract_context


def subscriptions(rt: Runtime) -> list[Subscription]:
    res: ResolutionResources = rt.resources
    repository = cases(rt)

    def deciding(
        decide: Callable[[Case | None, Any], Sequence[DomainEvent]], event: Event[Any]
    ) -> Callable[[Case | None], list[DomainEvent]]:
        return telling(lambda case: decide(case, event), res.messages, rt.policy.calendar.timezone)

    def handler(decide: Callable[[Case | None, Any], Sequence[DomainEvent]]) -> Handler:
        async def handle(conn: asyncpg.Connection, event: Event[Any]) -> None:
            await repository.execute(conn, event.stream_id, deciding(decide, event))

        return handle

    async def open_cases(
        conn: asyncpg.Connection, received: list[tuple[Event[ComplaintReceived], dict[str, str]]]
    ) -> None:
        """Open the cases of complaints received one after another in a batch, their streams
        started in one statement, each case's events in its complaint's trace.  A case that
        exists (a replay), or whose opening decides nothing on an empty case, is decided on its
        stream's state instead, as any event is."""
        empty = repository.fold([])
        streams: dict[UUID, list[DomainEvent]] = {}
        contexts: dict[UUID, dict[str, str]] = {}
        for event, context in received:
            opened = deciding(open_case, event)(empty)
            if not opened or event.stream_id in streams:
                break  # not the usual case: each on its own, in order
            streams[event.stream_id], contexts[event.stream_id] = opened, context
        else:
            try:
                await repository.create_many(conn, streams, contexts)
                return
            except ConcurrencyConflict:
                pass  # nothing of it was written
        for event, context in received:
            token = attach(extract_context(context))
            try:
                await repository.execute(
                    conn, event.stream_id, deciding(open_case, event), likely_new=True
                )
            finally:
                detach(token)

    async def open(conn: asyncpg.Connection, event: Event[ComplaintReceived]) -> None:
        await defer(conn, open_cases, (event, current_trace_context()))

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-resolution",
            topics=(t.intake, t.followup),
            handlers=dict(
                [
                    on(ComplaintReceived, open),
                    on(ComplaintWithdrawn, handler(close_withdrawn)),
                    on(ComplaintDetailsAdded, handler(details_as_clarification)),
                    on(ReopenRequested, handler(reopen_requested)),
                ]
            ),
            appends_to_their_streams=True,  # each event's case is its complaint's stream
        )
    ]
