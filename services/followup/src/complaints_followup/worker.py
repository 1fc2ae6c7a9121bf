"""The follow-up worker: sends due checks and reminders, expires unanswered checks, and hands
queued messages to the notifier with retries and backoff.  All state is in PostgreSQL, time
comes from the service clock, so it survives restarts and tests control it."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import asyncpg

from complaints_followup.domain import Followup, expire, sent
from complaints_followup.messages import render
from complaints_followup.notify import DeliveryFailed, Outbound, Undeliverable
from complaints_followup.projection import address, checks, enqueue
from complaints_followup.resources import FollowupResources
from complaints_followup.tokens import sign
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as ev
from complaints_shared.events.resolution import SolutionAgreed
from complaints_shared.service import Runtime
from complaints_shared.vocabulary import Channel, format_when

log = logging.getLogger(__name__)


def survey_link(rt: Runtime, token: str) -> str:
    return f"{rt.settings.public_url.rstrip('/')}/surveys/{token}"


async def queue_checks_and_reminders(rt: Runtime) -> None:
    res: FollowupResources = rt.resources
    now = rt.clock()
    rows = await rt.pool.fetch(
        "SELECT c.*, p.name, p.reference, 'check' AS kind FROM satisfaction_checks c"
        " LEFT JOIN contact_preferences p USING (complaint_id)"
        " WHERE c.status = 'scheduled' AND c.due_at <= $1 AND NOT EXISTS (SELECT 1 FROM"
        "   deliveries d WHERE d.kind = 'check' AND d.ref = c.check_id::text)"
        " UNION ALL"
        " SELECT c.*, p.name, p.reference, 'reminder' AS kind FROM satisfaction_checks c"
        " LEFT JOIN contact_preferences p USING (complaint_id)"
        " WHERE c.status = 'sent' AND c.reminder_at <= $1 AND c.reminded_at IS NULL"
        "   AND c.expires_at > $1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
        "   WHERE d.kind = 'reminder' AND d.ref = c.check_id::text)",
        now,
    )
    secret = await res.secret(rt.pool) if rows else b""
    for r in rows:
        texts = res.texts.get(r["language"]) or res.texts[rt.policy.intake.default_language]
        token = sign(r["check_id"], r["expires_at"], secret)
        subject, body = render(
            texts,
            r["kind"],
            name=r["name"],
            reference=r["reference"] or "",
            link=survey_link(rt, token),
            expires=format_when(r["expires_at"], r["language"], rt.policy.calendar.timezone),
        )
        async with rt.pool.acquire() as conn, conn.transaction():
            await enqueue(
                conn,
                rt,
                complaint_id=r["complaint_id"],
                kind=r["kind"],
                ref=str(r["check_id"]),
                source_type="SatisfactionCheck",
                channel=r["channel"],
                language=r["language"],
                subject=subject,
                body=body,
            )


async def expire_checks(rt: Runtime) -> None:
    now = rt.clock()
    rows = await rt.pool.fetch(
        "SELECT check_id, complaint_id FROM satisfaction_checks"
        " WHERE status IN ('scheduled', 'sent') AND expires_at <= $1",
        now,
    )
    for r in rows:
        try:
            async with rt.pool.acquire() as conn, conn.transaction():
                await checks(rt).execute(
                    conn, r["complaint_id"], partial(_expire, check_id=r["check_id"], now=now)
                )
        except ConcurrencyConflict:
            continue  # an answer came in meanwhile; the next round decides again


def _backoff(rt: Runtime, attempts: int) -> timedelta:
    fp = rt.policy.followup
    delay: timedelta = fp.delivery_retry * (2 ** max(attempts - 1, 0))
    return min(delay, fp.delivery_retry_max)


async def deliver_due(rt: Runtime) -> int:
    """Attempt every delivery that is due; return how many were handed over."""
    res: FollowupResources = rt.resources
    now = rt.clock()
    due = await rt.pool.fetch(
        "SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1"
        " ORDER BY next_attempt_at LIMIT 100",
        now,
    )
    handed = 0
    for row in due:
        async with rt.pool.acquire() as conn, conn.transaction():
            d = await conn.fetchrow(
                "SELECT * FROM deliveries WHERE id = $1 AND status ="
                " 'pending' FOR UPDATE SKIP LOCKED",
                row["id"],
            )
            if d is None:
                continue
            target = await address(conn, d["complaint_id"], d["channel"])
            try:
                if target is None:
                    raise Undeliverable(f"no contact for the {d['channel']} channel")
                channel, to = target
                await res.notifier.send(
                    Outbound(str(d["id"]), channel, to, d["subject"], d["body"], d["language"])
                )
            except DeliveryFailed as exc:
                attempts = d["attempts"] + 1
                final = isinstance(exc, Undeliverable) or (
                    attempts >= rt.policy.followup.delivery_max_attempts
                )
                log.warning(
                    "delivery %s (%s) attempt %d failed: %s",
                    d["id"],
                    d["kind"],
                    attempts,
                    type(exc).__name__,
                )
                await conn.execute(
                    "UPDATE deliveries SET attempts = $2, last_error = $3, status = $4,"
                    " next_attempt_at = $5 WHERE id = $1",
                    d["id"],
                    attempts,
                    str(exc)[:500],
                    "failed" if final else "pending",
                    now + _backoff(rt, attempts),
                )
                continue
            await conn.execute(
                "UPDATE deliveries SET status = 'sent', sent_at = $2,"
                " attempts = attempts + 1 WHERE id = $1",
                d["id"],
                now,
            )
            await checks(rt).execute(
                conn, d["complaint_id"], partial(_delivered, d=d, channel=channel)
            )
            handed += 1
    return handed


def _expire(state: Followup, *, check_id: UUID, now: datetime) -> list[DomainEvent]:
    return expire(state, check_id, now)


def _delivered(state: Followup, *, d: asyncpg.Record, channel: str) -> list[DomainEvent]:
    """The event that records a successful hand-over."""
    if d["kind"] in ("check", "reminder"):
        return sent(state, UUID(d["ref"]), d["kind"] == "reminder", channel)
    common: dict[str, Any] = {
        "source_event_id": d["ref"],
        "source_type": d["source_type"],
        "channel": Channel(channel),
        "delivery_id": d["id"],
    }
    if d["source_type"] == SolutionAgreed.event_name():
        return [ev.NextStepsConfirmed(**common, subject=d["subject"])]
    return [ev.CustomerMessageSent(**common)]


async def run_followup(rt: Runtime) -> None:
    """Forever: queue due checks and reminders, expire, deliver."""
    interval = rt.policy.followup.timer_poll.total_seconds()
    while True:
        try:
            await queue_checks_and_reminders(rt)
            await expire_checks(rt)
            await deliver_due(rt)
        except asyncio.CancelledError:
            raise
        except (OSError, ConnectionError, asyncpg.PostgresConnectionError) as exc:
            log.warning("followup worker: database unavailable (%s)", type(exc).__name__)
        except Exception:  # keep the worker alive: the same work is retried next round
            log.exception("followup worker: round failed; retrying")
        await asyncio.sleep(interval)
