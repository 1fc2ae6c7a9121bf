"""The complaints read model and the timeline, kept in the appending transaction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import orjson

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
    ) -> dict[UUID, asyncpg.Record]:
        return await project(conn, recorded, rt.keyring.pseudonym_secret)

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


# New complaints' rows, in the order given, as stored (the JSON values travel as text; alerts
# as a JSON array each: an array of arrays cannot be unnested row by row)
_NEW_COMPLAINTS = """
INSERT INTO complaints (id, reference, status, channel, category, severity, language,
                        customer_key, customer_id, subject, description, possible_duplicate_of,
                        received, received_at, updated_at, version, acknowledgement, alerts)
SELECT x.id, x.reference, 'received', x.channel, x.category, x.severity, x.language,
       x.customer_key, x.customer_id, x.subject, x.description, x.possible_duplicate_of,
       x.received::jsonb, x.received_at, x.updated_at, x.version, x.acknowledgement::jsonb,
       ARRAY(SELECT jsonb_array_elements_text(x.alerts::jsonb))
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[], $9::text[], $10::text[], $11::uuid[], $12::text[],
              $13::timestamptz[], $14::timestamptz[], $15::int[], $16::text[], $17::text[])
       WITH ORDINALITY AS x(id, reference, channel, category, severity, language, customer_key,
                            customer_id, subject, description, possible_duplicate_of, received,
                            received_at, updated_at, version, acknowledgement, alerts, n)
 ORDER BY x.n
RETURNING *
"""


def timeline_entries(where: str = "true") -> str:
    """The statement inserting the timeline entries of several complaints (its parameters $1-$7:
    event ids, complaints, services, types, times, versions, summaries), each complaint's in
    their order (the entries of one instant keep it by their position); ``where``: which of
    them, as a condition on ``x``."""
    return f"""
INSERT INTO timeline (event_id, complaint_id, service, type, occurred_at, version, summary)
SELECT x.event_id, x.complaint_id, x.service, x.type, x.occurred_at, x.version, x.summary
  FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::int[],
              $7::text[])
       WITH ORDINALITY AS x(event_id, complaint_id, service, type, occurred_at, version,
                            summary, n)
 WHERE {where}
 ORDER BY x.n
ON CONFLICT (event_id) DO NOTHING
"""


_TIMELINE = timeline_entries()


_PARAMETER = re.compile(r"\$(\d+)")


def _after(sql: str, first: str) -> str:
    """``sql`` with its parameters numbered on after those of ``first``."""
    taken = max(int(n) for n in _PARAMETER.findall(first))
    return _PARAMETER.sub(lambda m: f"${int(m[1]) + taken}", sql)


# The new complaints' rows and the timeline entries in one statement: what a batch of new
# complaints alone (a submission group) writes to the read models, in one round trip
_NEW_COMPLAINTS_AND_TIMELINE = (
    f"WITH timeline_ AS ({_after(_TIMELINE, _NEW_COMPLAINTS)}) {_NEW_COMPLAINTS}"
)


async def project(
    conn: asyncpg.Connection, events: Sequence[Event[DomainEvent]], pseudonyms: bytes
) -> dict[UUID, asyncpg.Record]:
    """Apply intake's own new events to the read model and the timeline.  A new complaint's
    acknowledgement and alert (appended with it) go into its first row.  The new rows of the
    complaints received among ``events`` are written in one statement before any other, and
    the timeline entries of every stream in one statement at the end (the same statement when
    no other write came between: new complaints alone).  Returns the rows of the complaints it
    created, as stored."""
    timeline: dict[UUID, list[Event[DomainEvent]]] = {}
    new_rows: list[tuple[Any, ...]] = []

    created: dict[UUID, asyncpg.Record] = {}

    async def insert_new() -> None:  # before anything else may read or change them
        if new_rows:
            columns = [list(c) for c in zip(*new_rows, strict=True)]
            created.update((r["id"], r) for r in await conn.fetch(_NEW_COMPLAINTS, *columns))
            new_rows.clear()

    i = 0
    while i < len(events):
        e = events[i]
        p = e.payload
        i += 1
        match p:
            case ev.ComplaintReceived():
                acknowledgement: dict[str, Any] | None = None
                alerts: list[str] = []
                group = [e]
                while i < len(events) and events[i].stream_id == e.stream_id:
                    q = events[i].payload
                    if isinstance(q, ev.ComplaintAcknowledged):
                        acknowledgement = q.to_json()
                    elif isinstance(q, ev.ComplaintAlertRaised):
                        alerts = list(q.reasons)
                    else:
                        break
                    group.append(events[i])
                    i += 1
                last = group[-1]
                new_rows.append(
                    (
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
                        orjson.dumps(p.to_json()).decode(),
                        e.occurred_at,
                        last.occurred_at,
                        last.version,
                        None if acknowledgement is None else orjson.dumps(acknowledgement).decode(),
                        orjson.dumps(alerts).decode(),
                    )
                )
                timeline.setdefault(e.stream_id, []).extend(group)
                continue
        await insert_new()
        match p:
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
        timeline.setdefault(e.stream_id, []).append(e)
    entries = [(c, e) for c, events in timeline.items() for e in events]
    columns = (
        [
            [e.event_id for _, e in entries],
            [c for c, _ in entries],
            [e.service for _, e in entries],
            [e.type for _, e in entries],
            [e.occurred_at for _, e in entries],
            [e.version for _, e in entries],
            [summarise(e.payload) for _, e in entries],
        ]
        if entries
        else []
    )
    if new_rows and entries:  # nothing else written since: both in one round trip
        rows = [list(c) for c in zip(*new_rows, strict=True)]
        created.update(
            (r["id"], r) for r in await conn.fetch(_NEW_COMPLAINTS_AND_TIMELINE, *rows, *columns)
        )
        return created
    await insert_new()
    if entries:
        await conn.execute(_TIMELINE, *columns)
    return created
