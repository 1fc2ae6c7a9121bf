"""Intake keeps each complaint's timeline from the other services' events."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from complaints_intake.domain import case_progress
from complaints_intake.projection import timeline_entries
from complaints_intake.timeline import complaint_of, summarise
from complaints_shared.consumer import Subscription, defer
from complaints_shared.envelope import Event
from complaints_shared.events import resolution as rs
from complaints_shared.service import Runtime

# The timeline entries of a run of the batch's events, and each complaint's status after them
# (its last one: resolution's events come in order per complaint, so the status follows them),
# for the complaints intake knows; a withdrawn complaint stays withdrawn.  A status the complaint
# has already (most of a case's steps are "in progress") leaves its row alone: rewriting it
# would copy the wide row and add an entry to each of its indexes for nothing.
_TIMELINE_AND_STATUS = f"""
WITH entry AS ({timeline_entries("EXISTS (SELECT FROM complaints c WHERE c.id = x.complaint_id)")})
UPDATE complaints c SET status = s.status
  FROM unnest($8::uuid[], $9::text[]) AS s(id, status)
 WHERE c.id = s.id AND c.status <> 'withdrawn' AND c.status <> s.status
"""

# an entry: event id, complaint, service, type, when, version, summary; and the status after
Entry = tuple[UUID, UUID, str, str, datetime, int, str, str | None]


async def record_timeline(conn: asyncpg.Connection, entries: list[Entry]) -> None:
    """The entries of consecutive events, in one statement (see :data:`_TIMELINE_AND_STATUS`)."""
    statuses: dict[UUID, str] = {}
    for entry in entries:
        if (status := entry[7]) is not None:
            statuses[entry[1]] = status
    columns = [list(column) for column in zip(*(e[:7] for e in entries), strict=True)]
    await conn.execute(_TIMELINE_AND_STATUS, *columns, list(statuses), list(statuses.values()))


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
        # the timeline entry and the status, for a complaint intake knows: deferred with the
        # batch's others, written together (nothing later in the batch reads them)
        entry: Entry = (
            event.event_id,
            complaint_id,
            event.service,
            event.type,
            event.occurred_at,
            event.version,
            summarise(event.payload),
            status.value if status is not None else None,
        )
        await defer(conn, record_timeline, entry)

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-intake-timeline",
            topics=(t.resolution, t.followup, t.learning),
            handlers={},
            fallback=on_any,
        )
    ]
