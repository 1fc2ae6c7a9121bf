"""What followup does with intake's and resolution's events."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from complaints_followup.domain import cancel_checks, schedule_check
from complaints_shared.consumer import Subscription
from complaints_shared.envelope import Event
from complaints_shared.service import Runtime


def subscriptions(rt: Runtime) -> list[Subscription]:
    async def on_complaint_received(conn: asyncpg.Connection, event: Event) -> None:
        customer = event.data.get("customer") or {}
        await conn.execute(
            "INSERT INTO contact_preferences (complaint_id, channel, language)"
            " VALUES ($1, $2, $3) ON CONFLICT (complaint_id) DO NOTHING",
            event.stream_id,
            customer.get("preferred_channel") or event.data.get("channel"),
            customer.get("language"),
        )

    async def on_complaint_withdrawn(conn: asyncpg.Connection, event: Event) -> None:
        await conn.execute(
            "INSERT INTO contact_preferences (complaint_id, withdrawn) VALUES ($1, true)"
            " ON CONFLICT (complaint_id) DO UPDATE SET withdrawn = true",
            event.stream_id,
        )
        pending = await conn.fetch(
            "SELECT check_id FROM satisfaction_checks WHERE complaint_id = $1"
            " AND status = 'scheduled' ORDER BY scheduled_at",
            event.stream_id,
        )
        if not pending:
            return
        version = await rt.store.version(conn, event.stream_id)
        new = cancel_checks([r["check_id"] for r in pending], "withdrawn")
        for e in await rt.store.append(conn, event.stream_id, version, new):
            await conn.execute(
                "UPDATE satisfaction_checks SET status = 'cancelled' WHERE check_id = $1",
                e.data["check_id"],
            )

    async def on_case_resolved(conn: asyncpg.Connection, event: Event) -> None:
        contact = await conn.fetchrow(
            "SELECT channel, language, withdrawn FROM contact_preferences WHERE complaint_id = $1",
            event.stream_id,
        )
        if contact is not None and contact["withdrawn"]:
            return  # no survey for a withdrawn complaint
        version = await rt.store.version(conn, event.stream_id)
        new = schedule_check(
            event.stream_id,
            event.version,
            event.occurred_at,
            contact["channel"] if contact else None,
            contact["language"] if contact else None,
            rt.policy,
        )
        for e in await rt.store.append(conn, event.stream_id, version, new):
            await conn.execute(
                "INSERT INTO satisfaction_checks (check_id, complaint_id, status, channel,"
                " language, due_at, expires_at, scheduled_at)"
                " VALUES ($1, $2, 'scheduled', $3, $4, $5, $6, $7)",
                e.data["check_id"],
                e.stream_id,
                e.data["channel"],
                e.data["language"],
                datetime.fromisoformat(e.data["due_at"]),
                datetime.fromisoformat(e.data["expires_at"]),
                e.occurred_at,
            )

    return [
        Subscription(
            name=f"{rt.topics.prefix}complaints-followup",
            topics=(rt.topics.intake, rt.topics.resolution),
            handlers={
                "ComplaintReceived": on_complaint_received,
                "CaseResolved": on_case_resolved,
                "ComplaintWithdrawn": on_complaint_withdrawn,
            },
        )
    ]
