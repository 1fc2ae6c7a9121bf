"""The complaints read model and the timeline, kept in the appending transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from complaints_intake.timeline import summarise
from complaints_shared.envelope import Event


async def record_timeline(
    conn: asyncpg.Connection, service: str, complaint_id: object, event: Event
) -> None:
    await conn.execute(
        "INSERT INTO timeline (event_id, complaint_id, service, type, occurred_at, version,"
        " summary) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
        event.event_id,
        complaint_id,
        service,
        event.type,
        event.occurred_at,
        event.version,
        summarise(event),
    )


async def project(
    conn: asyncpg.Connection, events: Sequence[Event], customer_key: str = ""
) -> None:
    """Apply intake's own new events to the read model and the timeline."""
    for e in events:
        d = e.data
        match e.type:
            case "ComplaintReceived":
                await conn.execute(
                    "INSERT INTO complaints (id, reference, status, channel, category, severity,"
                    " language, customer_key, customer_id, subject, description,"
                    " possible_duplicate_of, received, received_at, updated_at, version)"
                    " VALUES ($1, $2, 'received', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
                    " $13, $13, $14)",
                    e.stream_id,
                    d["reference"],
                    d["channel"],
                    d["category"],
                    d["severity"],
                    d["language"],
                    customer_key,
                    d["customer"].get("id"),
                    d["subject"],
                    d["description"],
                    d.get("possible_duplicate_of"),
                    d,
                    e.occurred_at,
                    e.version,
                )
            case "ComplaintAcknowledged":
                await conn.execute(
                    "UPDATE complaints SET acknowledgement = $2, version = $3, updated_at = $4"
                    " WHERE id = $1",
                    e.stream_id,
                    d,
                    e.version,
                    e.occurred_at,
                )
            case "ComplaintAlertRaised":
                await conn.execute(
                    "UPDATE complaints SET alerts = $2, version = $3, updated_at = $4"
                    " WHERE id = $1",
                    e.stream_id,
                    d["reasons"],
                    e.version,
                    e.occurred_at,
                )
            case "ComplaintDetailsAdded":
                entry = {**d, "added_at": e.occurred_at.isoformat()}
                await conn.execute(
                    "UPDATE complaints SET details = details || jsonb_build_array($2::jsonb),"
                    " version = $3, updated_at = $4 WHERE id = $1",
                    e.stream_id,
                    entry,
                    e.version,
                    e.occurred_at,
                )
            case "ComplaintWithdrawn":
                await conn.execute(
                    "UPDATE complaints SET status = 'withdrawn', withdrawal = $2, version = $3,"
                    " updated_at = $4 WHERE id = $1",
                    e.stream_id,
                    {**d, "withdrawn_at": e.occurred_at.isoformat()},
                    e.version,
                    e.occurred_at,
                )
        await record_timeline(conn, "intake", e.stream_id, e)
