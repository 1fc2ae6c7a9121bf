"""What followup does with intake's and resolution's events."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from complaints_followup.domain import cancel_open_checks, schedule_check
from complaints_followup.projection import Delivery, checks, enqueue, record_contacts, scrub
from complaints_followup.resources import FollowupResources
from complaints_shared.consumer import Subscription, defer, on
from complaints_shared.db import one_at_a_time
from complaints_shared.envelope import Event
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs
from complaints_shared.eventstore import after_commit
from complaints_shared.service import Runtime


async def cancel_deliveries(
    conn: asyncpg.Connection, complaint_id: UUID, kinds: tuple[str, ...] | None = None
) -> None:
    """Messages not yet handed over are not sent any more (a delivery already on its way is
    not marked sent: see the worker)."""
    await conn.execute(
        "UPDATE deliveries SET status = 'cancelled' WHERE complaint_id = $1"
        " AND status = 'pending' AND ($2::text[] IS NULL OR kind = ANY($2::text[]))",
        complaint_id,
        list(kinds) if kinds else None,
    )


def subscriptions(rt: Runtime) -> list[Subscription]:
    repository = checks(rt)
    res: FollowupResources = rt.resources

    async def record(
        conn: asyncpg.Connection, items: list[Event[it.ComplaintReceived] | Delivery]
    ) -> None:
        """What events handled one after another leave: the received complaints' contact
        details, then the messages to queue, each kind in one statement.  (Keeping contact
        details first changes no delivery's check for an erased customer: receiving a
        complaint erases no one.)"""
        received = [i for i in items if isinstance(i, Event)]
        deliveries = [i for i in items if isinstance(i, Delivery)]
        if received:
            await record_contacts(conn, received)
        if deliveries:
            await enqueue(conn, rt, deliveries)
            after_commit(res.queued.set)  # the worker hands them over without waiting to poll

    async def on_complaint_received(
        conn: asyncpg.Connection, event: Event[it.ComplaintReceived]
    ) -> None:
        await defer(conn, record, event)

    async def deliver(
        conn: asyncpg.Connection, event: Event[Any], message: rs.CustomerMessage
    ) -> None:
        delivery = Delivery(
            complaint_id=event.stream_id,
            kind="message",
            ref=str(event.event_id),
            source_type=event.type,
            channel=message.channel.value,
            language=message.language,
            subject=message.subject,
            body=message.body,
        )
        await defer(conn, record, delivery)

    async def on_acknowledged(
        conn: asyncpg.Connection, event: Event[it.ComplaintAcknowledged]
    ) -> None:
        p = event.payload
        message = rs.CustomerMessage(
            channel=p.channel, language=p.language, subject=p.message.subject, body=p.message.body
        )
        await deliver(conn, event, message)

    async def on_customer_message(conn: asyncpg.Connection, event: Event[Any]) -> None:
        p = event.payload
        if isinstance(p, rs.CustomerVisible) and p.customer_message is not None:
            await deliver(conn, event, p.customer_message)

    async def on_case_resolved(conn: asyncpg.Connection, event: Event[rs.CaseResolved]) -> None:
        await one_at_a_time(conn, f"followup:{event.stream_id}")
        await on_customer_message(conn, event)
        contact = await conn.fetchrow(
            "SELECT channel, language, withdrawn, erased FROM contact_preferences"
            " WHERE complaint_id = $1",
            event.stream_id,
        )
        if contact is not None and (contact["withdrawn"] or contact["erased"]):
            return  # no survey for a withdrawn complaint, or a customer erased
        await repository.execute(
            conn,
            event.stream_id,
            lambda s: schedule_check(
                s,
                event,
                contact["channel"] if contact else None,
                contact["language"] if contact else None,
                rt.policy,
            ),
        )

    async def on_case_reopened(conn: asyncpg.Connection, event: Event[rs.CaseReopened]) -> None:
        await one_at_a_time(conn, f"followup:{event.stream_id}")
        await repository.execute(conn, event.stream_id, lambda s: cancel_open_checks(s, "reopened"))
        await cancel_deliveries(conn, event.stream_id, kinds=("check", "reminder"))

    async def on_complaint_withdrawn(
        conn: asyncpg.Connection, event: Event[it.ComplaintWithdrawn]
    ) -> None:
        await one_at_a_time(conn, f"followup:{event.stream_id}")
        await cancel_deliveries(conn, event.stream_id)
        await conn.execute(
            "INSERT INTO contact_preferences (complaint_id, withdrawn) VALUES ($1, true)"
            " ON CONFLICT (complaint_id) DO UPDATE SET withdrawn = true",
            event.stream_id,
        )
        await repository.execute(
            conn, event.stream_id, lambda s: cancel_open_checks(s, "withdrawn")
        )

    async def on_personal_data_erased(
        conn: asyncpg.Connection, event: Event[it.PersonalDataErased]
    ) -> None:
        ids = event.payload.complaint_ids
        await scrub(conn, ids, rt.settings.mail_spool, rt.settings.message_spool)
        for cid in ids:  # no survey for someone erased
            await repository.execute(conn, cid, lambda s: cancel_open_checks(s, "erased"))

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-followup",
            topics=(t.intake, t.resolution),
            handlers=dict(
                [
                    on(it.ComplaintReceived, on_complaint_received),
                    on(it.ComplaintAcknowledged, on_acknowledged),
                    on(it.ComplaintWithdrawn, on_complaint_withdrawn),
                    on(rs.CaseResolved, on_case_resolved),
                    on(rs.CaseReopened, on_case_reopened),
                    on(it.PersonalDataErased, on_personal_data_erased),
                ]
            ),
            fallback=on_customer_message,  # CaseAssigned, ClarificationRequested, Solution…
        )
    ]
