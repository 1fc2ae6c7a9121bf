"""Followup's streams, read models and the delivery queue (adapters over PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from complaints_followup.domain import Followup, fold
from complaints_shared.envelope import Event, NewEvent
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.service import Runtime


async def project(conn: asyncpg.Connection, rt: Runtime, events: Sequence[Event]) -> None:
    for e in events:
        d = e.data
        match e.type:
            case "SatisfactionCheckScheduled":
                await conn.execute(
                    "INSERT INTO satisfaction_checks (check_id, complaint_id, status, channel,"
                    " language, due_at, expires_at, scheduled_at, category)"
                    " VALUES ($1, $2, 'scheduled', $3, $4, $5, $6, $7,"
                    " (SELECT category FROM contact_preferences WHERE complaint_id = $2))",
                    UUID(d["check_id"]),
                    e.stream_id,
                    d["channel"],
                    d["language"],
                    datetime.fromisoformat(d["due_at"]),
                    datetime.fromisoformat(d["expires_at"]),
                    e.occurred_at,
                )
            case "SatisfactionCheckSent" if d.get("reminder"):
                await conn.execute(
                    "UPDATE satisfaction_checks SET reminded_at = $2 WHERE check_id = $1",
                    UUID(d["check_id"]),
                    e.occurred_at,
                )
            case "SatisfactionCheckSent":
                await conn.execute(
                    "UPDATE satisfaction_checks SET status = 'sent', sent_at = $2,"
                    " reminder_at = $3 WHERE check_id = $1",
                    UUID(d["check_id"]),
                    e.occurred_at,
                    e.occurred_at + rt.policy.followup.reminder_after,
                )
            case "SatisfactionRecorded":
                await conn.execute(
                    "UPDATE satisfaction_checks SET status = 'answered',"
                    " answered_at = $2 WHERE check_id = $1",
                    UUID(d["check_id"]),
                    e.occurred_at,
                )
                await record_answer_row(conn, e)
            case "SatisfactionCheckExpired" | "SatisfactionCheckCancelled":
                status = "expired" if e.type == "SatisfactionCheckExpired" else "cancelled"
                await conn.execute(
                    "UPDATE satisfaction_checks SET status = $2 WHERE check_id = $1",
                    UUID(d["check_id"]),
                    status,
                )


async def record_answer_row(conn: asyncpg.Connection, e: Event) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO satisfaction_answers (check_id, complaint_id, score, solved, nps,"
        " category, channel, answered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (check_id) DO NOTHING",
        UUID(d["check_id"]),
        e.stream_id,
        d["score"],
        d["solved"],
        d.get("nps"),
        d.get("category"),
        d.get("channel"),
        e.occurred_at,
    )


async def change(
    conn: asyncpg.Connection,
    rt: Runtime,
    complaint_id: UUID,
    decide: Callable[[Followup], list[NewEvent]],
    attempts: int = 5,
) -> list[Event]:
    """Load the complaint's followup stream, decide, append and project, in a savepoint of the
    caller's transaction.  When another writer appended first, decide again on the new state
    (the decision sees what happened meanwhile: this is no blind retry)."""
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                events = await rt.store.load(conn, complaint_id)
                new = decide(fold(events))
                if not new:
                    return []
                recorded = await rt.store.append(conn, complaint_id, len(events), new)
                await project(conn, rt, recorded)
                return recorded
        except ConcurrencyConflict:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


ADDRESS = {"email": "email", "phone": "phone", "letter": "postal_address"}


async def enqueue(
    conn: asyncpg.Connection,
    rt: Runtime,
    *,
    complaint_id: UUID,
    kind: str,
    ref: str,
    source_type: str,
    channel: str,
    language: str,
    subject: str,
    body: str,
) -> None:
    """Queue a message for the customer (once per kind and ref)."""
    await conn.execute(
        "INSERT INTO deliveries (id, complaint_id, kind, ref, source_type, channel, language,"
        " subject, body, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (kind, ref) DO NOTHING",
        uuid4(),
        complaint_id,
        kind,
        ref,
        source_type,
        channel,
        language,
        subject,
        body,
        rt.clock(),
    )


async def address(
    conn: asyncpg.Connection | asyncpg.Pool, complaint_id: UUID, channel: str
) -> tuple[str, str] | None:
    """Where to reach the customer on ``channel`` (or on e-mail, if they consented)."""
    c = await conn.fetchrow(
        "SELECT * FROM contact_preferences WHERE complaint_id = $1", complaint_id
    )
    if c is None:
        return None
    field = ADDRESS.get(channel)
    if field is None:  # chat, social, web, in person: the gateway knows the customer by reference
        return channel, str(c["reference"] or complaint_id)
    if c[field]:
        return channel, str(c[field])
    if c["consent_to_other_channel"] and c["email"]:
        return "email", str(c["email"])
    return None


def contact_row(event: Event) -> dict[str, Any]:
    d = event.data
    customer = d.get("customer") or {}
    return {
        "complaint_id": event.stream_id,
        "channel": d.get("reply_channel") or customer.get("preferred_channel") or d.get("channel"),
        "language": d.get("language") or customer.get("language"),
        "reference": d.get("reference"),
        "name": customer.get("name"),
        "email": customer.get("email"),
        "phone": customer.get("phone"),
        "postal_address": customer.get("postal_address"),
        "consent": bool(customer.get("consent_to_other_channel")),
        "category": d.get("category"),
        "received_channel": d.get("channel"),
    }
