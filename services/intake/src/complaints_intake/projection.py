"""The complaints read model and the timeline, kept in the appending transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from complaints_intake.domain import Complaint, customer_key, erased_complaints, fold
from complaints_intake.timeline import erased_summary, summarise
from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.events import intake as ev
from complaints_shared.privacy import erase_fields, personal_fields
from complaints_shared.repository import Repository
from complaints_shared.service import Runtime


def _projection(rt: Runtime) -> Any:
    """The read models of every intake stream, whatever its state (the projection reads the
    recorded events)."""

    async def project_all(
        conn: asyncpg.Connection, _: object, recorded: Sequence[Event[DomainEvent]]
    ) -> None:
        await project(conn, recorded, rt.keyring.pseudonym_secret)

    return project_all


def complaints(rt: Runtime) -> Repository[Complaint | None]:
    return Repository(rt.store, fold, _projection(rt))


def erasures(rt: Runtime) -> Repository[frozenset[UUID]]:
    """A customer's stream (as a data subject): the complaints erased so far."""
    return Repository(rt.store, erased_complaints, _projection(rt))


def erase_complaint_json(data: dict[str, Any]) -> dict[str, Any]:
    """A complaint as the API shows it (and as the idempotency cache keeps it), its personal
    values erased."""
    erase_fields(data, personal_fields(ev.ComplaintReceived))
    if isinstance(data.get("acknowledgement"), dict):
        erase_fields(data["acknowledgement"], personal_fields(ev.ComplaintAcknowledged))
    for d in data.get("details") or ():
        erase_fields(d, personal_fields(ev.ComplaintDetailsAdded))
    if isinstance(data.get("withdrawal"), dict):
        erase_fields(data["withdrawal"], personal_fields(ev.ComplaintWithdrawn))
    return data


async def scrub(conn: asyncpg.Connection, complaint_ids: Iterable[UUID]) -> None:
    """Erase the personal data intake keeps outside its events: the complaints read model,
    the timeline's summaries and the idempotency cache's answers."""
    ids = list(complaint_ids)
    rows = await conn.fetch(
        "SELECT id, received, acknowledgement, details, withdrawal FROM complaints"
        " WHERE id = ANY($1::uuid[]) FOR UPDATE",
        ids,
    )
    for r in rows:
        kept = erase_complaint_json(
            {
                **r["received"],
                "acknowledgement": r["acknowledgement"],
                "details": r["details"],
                "withdrawal": r["withdrawal"],
            }
        )
        received = {k: v for k, v in kept.items() if k in r["received"]}
        await conn.execute(
            "UPDATE complaints SET subject = $2, description = $3, customer_id = NULL,"
            " received = $4, acknowledgement = $5, details = $6, withdrawal = $7 WHERE id = $1",
            r["id"],
            received["subject"],
            received["description"],
            received,
            kept["acknowledgement"],
            kept["details"],
            kept["withdrawal"],
        )
    entries = await conn.fetch(
        "SELECT event_id, type FROM timeline WHERE complaint_id = ANY($1::uuid[])", ids
    )
    await conn.executemany(
        "UPDATE timeline SET summary = $2 WHERE event_id = $1",
        [(e["event_id"], erased_summary(e["type"])) for e in entries],
    )
    cached = await conn.fetch(
        "SELECT key, response FROM idempotency_keys WHERE response IS NOT NULL"
        " AND coalesce(response->>'complaint_id', response->>'id')::uuid = ANY($1::uuid[])"
        " FOR UPDATE",
        ids,
    )
    await conn.executemany(
        "UPDATE idempotency_keys SET response = $2 WHERE key = $1",
        [(c["key"], erase_complaint_json(c["response"])) for c in cached],
    )


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


async def project(
    conn: asyncpg.Connection, events: Sequence[Event[DomainEvent]], pseudonyms: bytes
) -> None:
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
                    customer_key(p.customer, pseudonyms),
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
            case ev.PersonalDataErased():
                await scrub(conn, p.complaint_ids)
                continue  # about a customer, not one complaint: no timeline entry
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
