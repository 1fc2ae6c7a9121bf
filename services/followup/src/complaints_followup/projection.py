"""Followup's streams, read models and the delivery queue (adapters over PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from complaints_followup.domain import Followup, fold
from complaints_followup.notify import NotYetKnown, message_id
from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as ev
from complaints_shared.events.intake import ComplaintReceived
from complaints_shared.privacy import ERASED
from complaints_shared.repository import Repository
from complaints_shared.service import Runtime
from complaints_shared.vocabulary import CONTACT_FIELD


def checks(rt: Runtime) -> Repository[Followup]:
    """The repository of each complaint's satisfaction checks."""

    async def project_checks(
        conn: asyncpg.Connection, _: Followup, recorded: Sequence[Event[DomainEvent]]
    ) -> None:
        await project(conn, rt, recorded)

    return Repository(rt.store, fold, project_checks)


async def project(
    conn: asyncpg.Connection, rt: Runtime, events: Sequence[Event[DomainEvent]]
) -> None:
    for e in events:
        p = e.payload
        match p:
            case ev.SatisfactionCheckScheduled():
                await conn.execute(
                    "INSERT INTO satisfaction_checks (check_id, complaint_id, status, channel,"
                    " language, due_at, expires_at, scheduled_at, category)"
                    " VALUES ($1, $2, 'scheduled', $3, $4, $5, $6, $7,"
                    " (SELECT category FROM contact_preferences WHERE complaint_id = $2))",
                    p.check_id,
                    e.stream_id,
                    p.channel.value,
                    p.language,
                    p.due_at,
                    p.expires_at,
                    e.occurred_at,
                )
            case ev.SatisfactionCheckSent() if p.reminder:
                await conn.execute(
                    "UPDATE satisfaction_checks SET reminded_at = $2 WHERE check_id = $1",
                    p.check_id,
                    e.occurred_at,
                )
            case ev.SatisfactionCheckSent():
                await conn.execute(
                    "UPDATE satisfaction_checks SET status = 'sent', sent_at = $2,"
                    " reminder_at = $3 WHERE check_id = $1",
                    p.check_id,
                    e.occurred_at,
                    e.occurred_at + rt.policy.followup.reminder_after,
                )
            case ev.SatisfactionRecorded():
                await conn.execute(
                    "UPDATE satisfaction_checks SET status = 'answered',"
                    " answered_at = $2 WHERE check_id = $1",
                    p.check_id,
                    e.occurred_at,
                )
                await record_answer_row(conn, e.stream_id, e.occurred_at, p)
            case ev.SatisfactionCheckExpired() | ev.SatisfactionCheckCancelled():
                status = "expired" if isinstance(p, ev.SatisfactionCheckExpired) else "cancelled"
                await conn.execute(
                    "UPDATE satisfaction_checks SET status = $2 WHERE check_id = $1",
                    p.check_id,
                    status,
                )


async def record_answer_row(
    conn: asyncpg.Connection, complaint_id: UUID, at: datetime, p: ev.SatisfactionRecorded
) -> None:
    await conn.execute(
        "INSERT INTO satisfaction_answers (check_id, complaint_id, score, solved, nps,"
        " category, channel, answered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (check_id) DO NOTHING",
        p.check_id,
        complaint_id,
        p.score,
        p.solved,
        p.nps,
        p.category,
        p.channel.value if p.channel else None,
        at,
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message to queue for a customer: ``kind`` (check, reminder, message) and ``ref``
    (the check, or the event whose message it is) make it once."""

    complaint_id: UUID
    kind: str
    ref: str
    source_type: str
    channel: str
    language: str
    subject: str
    body: str


_ENQUEUE = """
INSERT INTO deliveries (id, complaint_id, kind, ref, source_type, channel, language, subject,
                        body, next_attempt_at)
SELECT x.id, x.complaint_id, x.kind, x.ref, x.source_type, x.channel, x.language, x.subject,
       x.body, $10
  FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[], $9::text[]) WITH ORDINALITY
       AS x(id, complaint_id, kind, ref, source_type, channel, language, subject, body, n)
 WHERE NOT EXISTS (SELECT 1 FROM contact_preferences c
                    WHERE c.complaint_id = x.complaint_id AND c.erased)
 ORDER BY x.n
ON CONFLICT (kind, ref) DO NOTHING
"""


async def enqueue(conn: asyncpg.Connection, rt: Runtime, deliveries: Sequence[Delivery]) -> None:
    """Queue messages for customers in one statement, in order (each once per kind and ref;
    never for an erased customer)."""
    await conn.execute(
        _ENQUEUE,
        [uuid4() for _ in deliveries],
        *([getattr(d, f.name) for d in deliveries] for f in fields(Delivery)),
        rt.clock(),
    )


_CONTACTS = """
INSERT INTO contact_preferences (complaint_id, channel, language, reference, name, email, phone,
                                 postal_address, consent_to_other_channel, category,
                                 received_channel)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::boolean[], $10::text[], $11::text[])
ON CONFLICT (complaint_id) DO UPDATE SET channel = excluded.channel,
    language = excluded.language, reference = excluded.reference, name = excluded.name,
    email = excluded.email, phone = excluded.phone, postal_address = excluded.postal_address,
    consent_to_other_channel = excluded.consent_to_other_channel,
    category = excluded.category, received_channel = excluded.received_channel
"""

_CONTACT_FIELDS = (
    "complaint_id",
    "channel",
    "language",
    "reference",
    "name",
    "email",
    "phone",
    "postal_address",
    "consent",
    "category",
    "received_channel",
)


async def record_contacts(
    conn: asyncpg.Connection, received: Sequence[Event[ComplaintReceived]]
) -> None:
    """Keep each received complaint's contact details and preferences (:func:`contact_row`),
    in one statement; of several for one complaint, the last."""
    rows = list({r["complaint_id"]: r for r in map(contact_row, received)}.values())
    await conn.execute(_CONTACTS, *([r[f] for r in rows] for f in _CONTACT_FIELDS))


# The contact details a delivery goes to, read with the delivery (``c``: its complaint's row of
# ``contact_preferences``, outer-joined), as :func:`address` takes them.
CONTACT_COLUMNS = """
c.complaint_id IS NOT NULL AS contact_known, c.channel AS contact_channel,
c.erased AS contact_erased, c.reference AS contact_reference, c.email AS contact_email,
c.phone AS contact_phone, c.postal_address AS contact_postal_address,
c.consent_to_other_channel AS contact_consent
"""


def address(d: Mapping[str, Any]) -> tuple[str, str] | None:
    """Where to reach the customer of the delivery ``d`` (its ``complaint_id`` and ``channel``,
    and the ``contact_*`` columns of :data:`CONTACT_COLUMNS`) on its channel, or on e-mail if
    they consented; None if they cannot be reached there.  Raises :class:`NotYetKnown` while
    the complaint's contact details have not arrived (resolution's message came before
    intake's ComplaintReceived)."""
    if not d["contact_known"] or (d["contact_channel"] is None and not d["contact_erased"]):
        raise NotYetKnown("the complaint's contact details have not arrived yet")
    channel = d["channel"]
    field = CONTACT_FIELD.get(channel)
    if field is None:  # chat, social, web, in person: the gateway knows the customer by reference
        return channel, str(d["contact_reference"] or d["complaint_id"])
    if d[f"contact_{field}"]:
        return channel, str(d[f"contact_{field}"])
    if d["contact_consent"] and d["contact_email"]:
        return "email", str(d["contact_email"])
    return None


def contact_row(event: Event[ComplaintReceived]) -> dict[str, Any]:
    d = event.payload
    c = d.customer
    return {
        "complaint_id": event.stream_id,
        "channel": d.reply_channel.value,
        "language": d.language,
        "reference": d.reference,
        "name": c.name,
        "email": c.email,
        "phone": c.phone,
        "postal_address": c.postal_address,
        "consent": c.consent_to_other_channel,
        "category": d.category,
        "received_channel": d.channel.value,
    }


async def scrub(
    conn: asyncpg.Connection,
    complaint_ids: Sequence[UUID],
    mail_spool: Path | None,
    message_spool: Path | None,
) -> None:
    """Erase what followup keeps of these complaints' customer outside its events: contact
    details, the messages (pending ones are not sent), and their copies in the local spools
    of e-mail and of the other channels' messages."""
    ids = list(complaint_ids)
    await conn.execute(
        "INSERT INTO contact_preferences (complaint_id, erased)"
        " SELECT unnest($1::uuid[]), true ON CONFLICT (complaint_id) DO UPDATE SET erased = true,"
        " name = NULL, email = NULL, phone = NULL, postal_address = NULL",
        ids,
    )
    deliveries = await conn.fetch(
        "UPDATE deliveries SET subject = $2, body = $2, last_error = NULL,"
        " status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END"
        " WHERE complaint_id = ANY($1::uuid[]) RETURNING id",
        ids,
        ERASED,
    )
    if mail_spool is not None and deliveries:
        await asyncio.to_thread(remove_from_spool, mail_spool, {d["id"] for d in deliveries})
    if message_spool is not None and deliveries:
        await asyncio.to_thread(remove_messages, message_spool, {d["id"] for d in deliveries})


def remove_messages(spool: Path, delivery_ids: set[UUID]) -> int:
    """Delete the kept copies (``<delivery id>.json``, a local gateway's) of these deliveries;
    return how many."""
    removed = 0
    for delivery_id in delivery_ids:
        try:
            (spool / f"{delivery_id}.json").unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def remove_from_spool(maildir: Path, delivery_ids: set[UUID]) -> int:
    """Delete the spooled copies (a local Maildir) of these deliveries; return how many."""
    wanted = {message_id(d) for d in delivery_ids}
    removed = 0
    for folder in ("new", "cur", "tmp"):
        for path in (maildir / folder).glob("*") if (maildir / folder).is_dir() else ():
            try:
                with path.open("rb") as f:
                    headers = BytesHeaderParser().parse(f)
            except OSError:
                continue
            if (headers.get("Message-ID") or "").strip() in wanted:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
