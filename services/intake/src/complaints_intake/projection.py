"""The complaints read model and the timeline, kept in the appending transaction."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from complaints_intake.domain import Complaint, customer_key, fold
from complaints_intake.timeline import summarise
from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.events import intake as ev
from complaints_shared.repository import Repository
from complaints_shared.service import Runtime


def complaints(rt: Runtime) -> Repository[Complaint | None]:
    async def project_all(
        conn: asyncpg.Connection, _: Complaint | None, recorded: Sequence[Event[DomainEvent]]
    ) -> None:
        await project(conn, recorded)

    return Repository(rt.store, fold, project_all)


async def record_timeline(
    conn: asyncpg.Connection, complaint_id: UUID, event: Event[DomainEvent]
) -> None:
    await conn.execute(
        "INSERT INTO timeline (event_id, complaint_id, service, type, occurred_at, version,"
        " summary) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
        event.event_id,
        complaint_id,
        event.service,
        event.type,
        event.occurred_at,
        event.version,
        summarise(event.payload),
    )


async def project(conn: asyncpg.Connection, events: Sequence[Event[DomainEvent]]) -> None:
    """Apply intake's own new events to the read model and the timeline."""
    for e in events:
        p = e.payload
        match p:
            case ev.ComplaintReceived():
                await conn.execute(
                    "INSERT INTO complaints (id, reference, status, channel, category, severity,"
                    " language, customer_key, customer_id, subject, description,"
                    " possible_duplicate_of, received, received_at, updated_at, version)"
                    " VALUES ($1, $2, 'received', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
                    " $13, $13, $14)",
                    e.stream_id,
                    p.reference,
                    p.channel.value,
                    p.category,
                    p.severity.value,
                    p.language,
                    customer_key(p.customer),
                    p.customer.id,
                    p.subject,
                    p.description,
                    p.possible_duplicate_of,
                    p.to_json(),
                    e.occurred_at,
                    e.version,
                )
            case ev.ComplaintAcknowledged():
                await conn.execute(
                    "UPDATE complaints SET acknowledgement = $2, version = $3, updated_at = $4"
                    " WHERE id = $1",
                    e.stream_id,
                    p.to_json(),
                    e.version,
                    e.occurred_at,
                )
            case ev.ComplaintAlertRaised():
                await conn.execute(
                    "UPDATE complaints SET alerts = $2, version = $3, updated_at = $4"
                    " WHERE id = $1",
                    e.stream_id,
                    list(p.reasons),
                    e.version,
                    e.occurred_at,
                )
            case ev.ComplaintDetailsAdded():
                entry = {
                    **p.model_dump(mode="json", exclude_none=True),
                    "added_at": e.occurred_at.isoformat(),
                }
                await conn.execute(
                    "UPDATE complaints SET details = details || jsonb_build_array($2::jsonb),"
                    " version = $3, updated_at = $4 WHERE id = $1",
                    e.stream_id,
                    entry,
                    e.version,
                    e.occurred_at,
                )
            case ev.ComplaintWithdrawn():
                await conn.execute(
                    "UPDATE complaints SET status = 'withdrawn', withdrawal = $2, version = $3,"
                    " updated_at = $4 WHERE id = $1",
                    e.stream_id,
                    {
                        **p.model_dump(mode="json", exclude_none=True),
                        "withdrawn_at": e.occurred_at.isoformat(),
                    },
                    e.version,
                    e.occurred_at,
                )
        await record_timeline(conn, e.stream_id, e)
