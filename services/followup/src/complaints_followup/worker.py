"""The follow-up worker: sends due checks and reminders, expires unanswered checks, and hands
queued messages to the notifier with retries and backoff.  All state is in PostgreSQL, time
comes from the service clock, so it survives restarts and tests control it."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal
from uuid import UUID

import asyncpg

from complaints_followup.domain import Followup, expire, sent
from complaints_followup.messages import render
from complaints_followup.notify import DeliveryFailed, Outbound, Undeliverable
from complaints_followup.projection import (
    CONTACT_COLUMNS,
    Delivery,
    address,
    checks,
    enqueue,
)
from complaints_followup.resources import FollowupResources
from complaints_followup.tokens import sign
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as ev
from complaints_shared.events.intake import ComplaintAcknowledged
from complaints_shared.events.resolution import SolutionAgreed
from complaints_shared.faults import database_unavailable, is_transient
from complaints_shared.outbox import woken
from complaints_shared.repository import Repository
from complaints_shared.service import Runtime
from complaints_shared.vocabulary import Channel, format_when

log = logging.getLogger(__name__)

Work = Literal["check", "reminder", "message", "expiry"]


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
        "   AND NOT EXISTS (SELECT 1 FROM work_failures f WHERE f.work = 'check'"
        "   AND f.ref = c.check_id::text AND (f.parked_at IS NOT NULL OR f.next_attempt_at > $1))"
        " UNION ALL"
        " SELECT c.*, p.name, p.reference, 'reminder' AS kind FROM satisfaction_checks c"
        " LEFT JOIN contact_preferences p USING (complaint_id)"
        " WHERE c.status = 'sent' AND c.reminder_at <= $1 AND c.reminded_at IS NULL"
        "   AND c.expires_at > $1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
        "   WHERE d.kind = 'reminder' AND d.ref = c.check_id::text)"
        "   AND NOT EXISTS (SELECT 1 FROM work_failures f WHERE f.work = 'reminder'"
        "   AND f.ref = c.check_id::text AND (f.parked_at IS NOT NULL OR f.next_attempt_at > $1))",
        now,
    )
    secret = await res.secret(rt.pool) if rows else b""
    for r in rows:
        try:
            texts = res.texts.get(r["language"]) or res.texts[rt.policy.intake.default_language]
            token = sign(r["check_id"], r["expires_at"], secret)
            subject, body = render(
                texts,
                r["kind"],
                name=r["name"],
                reference=r["reference"] or "",
                link=survey_link(rt, token),
                expires=format_when(
                    r["expires_at"], r["language"], rt.policy.calendar.timezone, zone_name=True
                ),
                # the check falls due the policy's delay after the resolution
                resolved_ago=now - (r["due_at"] - rt.policy.followup.satisfaction_check_delay),
            )
            async with rt.transaction() as conn:
                delivery = Delivery(
                    complaint_id=r["complaint_id"],
                    kind=r["kind"],
                    ref=str(r["check_id"]),
                    source_type="SatisfactionCheck",
                    channel=r["channel"],
                    language=r["language"],
                    subject=subject,
                    body=body,
                )
                await enqueue(conn, rt, [delivery])
        except Exception as exc:
            if is_transient(exc):
                raise  # the database: the whole round waits
            await _failed(rt, r["kind"], str(r["check_id"]), r["complaint_id"], exc)


async def expire_checks(rt: Runtime) -> None:
    now = rt.clock()
    rows = await rt.pool.fetch(
        "SELECT check_id, complaint_id FROM satisfaction_checks"
        " WHERE status IN ('scheduled', 'sent') AND expires_at <= $1"
        "   AND NOT EXISTS (SELECT 1 FROM work_failures f WHERE f.work = 'expiry'"
        "   AND f.ref = check_id::text AND (f.parked_at IS NOT NULL OR f.next_attempt_at > $1))",
        now,
    )
    for r in rows:
        try:
            async with rt.transaction() as conn:
                await checks(rt).execute(
                    conn, r["complaint_id"], partial(_expire, check_id=r["check_id"], now=now)
                )
        except ConcurrencyConflict:
            continue  # an answer came in meanwhile; the next round decides again
        except Exception as exc:
            if is_transient(exc):
                raise
            await _failed(rt, "expiry", str(r["check_id"]), r["complaint_id"], exc)


async def _failed(
    rt: Runtime, work: Work, ref: str, complaint_id: UUID, exc: BaseException
) -> None:
    """Count a failed attempt at one row's work: retried after a backoff, parked (with a
    ``FollowupParked`` event) after the policy's attempts.  The other rows go on."""
    now = rt.clock()
    reason = type(exc).__name__
    async with rt.transaction() as conn:
        attempts = await conn.fetchval(
            "INSERT INTO work_failures AS f (work, ref, complaint_id, attempts, next_attempt_at,"
            " last_error) VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (work, ref) DO UPDATE"
            " SET attempts = f.attempts + 1, last_error = $5 RETURNING attempts",
            work,
            ref,
            complaint_id,
            now,
            reason,
        )
        final = attempts >= rt.policy.followup.delivery_max_attempts
        log.warning(
            "followup %s %s: attempt %d failed (%s)%s",
            work,
            ref,
            attempts,
            reason,
            "; parked" if final else "",
        )
        await conn.execute(
            "UPDATE work_failures SET next_attempt_at = $3, parked_at = $4"
            " WHERE work = $1 AND ref = $2",
            work,
            ref,
            now + _backoff(rt, attempts),
            now if final else None,
        )
        if final:
            await _park(
                conn, rt, complaint_id, work=work, ref=ref, attempts=attempts, reason=reason
            )


async def _park(conn: asyncpg.Connection, rt: Runtime, complaint_id: UUID, **parked: Any) -> None:
    await checks(rt).execute(conn, complaint_id, lambda _: [ev.FollowupParked(**parked)])


def _backoff(rt: Runtime, attempts: int) -> timedelta:
    fp = rt.policy.followup
    delay: timedelta = fp.delivery_retry * (2 ** max(attempts - 1, 0))
    return min(delay, fp.delivery_retry_max)


# complaints whose messages are handed over at the same time: a hand-over waits on the mail
# server far more than it computes.  Measured in the pipeline bench at 300/s offered (two
# alternating pairs, both with the worker woken at once): 32 against 16, receipt →
# acknowledgement sent p50 0.6 and 3.1 s against 9.6 and 8.2 s (an overloaded phase)
HAND_OVERS_AT_ONCE = 32
# claimed at once: small enough that a batch is handed over well within the first retry delay
# (a claimed row that fell due again could be claimed by another replica meanwhile)
_DUE_BATCH = 4 * HAND_OVERS_AT_ONCE

# A batch of due deliveries claimed in one statement: each attempt counted and the next one
# moved out by its backoff (``$3``: :func:`_backoff` of attempt 1, 2, ..., the last one
# standing for any later attempt), committed before any hand-over.  Rows another worker holds
# are skipped; ``due_at`` (when each fell due) and ``seq`` (the order they were queued in)
# order one complaint's messages.  Each comes with its customer's contact details, read in the
# same statement (the message itself is read here too).
_CLAIM_DUE = f"""
WITH due AS (
    SELECT id, complaint_id, next_attempt_at AS due_at FROM deliveries
     WHERE status = 'pending' AND next_attempt_at <= $1
     ORDER BY next_attempt_at, seq LIMIT $2
       FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
   SET attempts = d.attempts + 1,
       next_attempt_at = $1 + ($3::interval[])[least(d.attempts + 1, cardinality($3))]
  FROM due LEFT JOIN contact_preferences c ON c.complaint_id = due.complaint_id
 WHERE d.id = due.id
RETURNING d.*, due.due_at, {CONTACT_COLUMNS}
"""


async def deliver_due(rt: Runtime) -> int:
    """Attempt every delivery that is due; return how many were attempted.

    Each attempt is recorded (``attempts`` + 1, the next attempt moved out by the backoff)
    and committed before the hand-over (a batch of due deliveries claimed in one statement),
    and no transaction or row lock is held across the network call.  A crash after the
    hand-over and before it is marked sent therefore sends that delivery again only after the
    backoff, with the same ``Message-ID`` (receivers de-duplicate), and at most
    ``delivery_max_attempts`` times in all.

    The messages of several complaints go out at the same time (at most
    :data:`HAND_OVERS_AT_ONCE` at the channel at once); one complaint's messages go out one
    after another, in the order they fell due, each once the one before is recorded as sent.
    The hand-overs that end while others are being recorded are recorded together
    (:class:`SentRecords`).  The round takes batches until nothing due is left (an attempted
    row is due again only after its backoff), so a burst is not spread over many rounds.
    The connections to the channels are kept for the next round (see :func:`run_followup`)."""
    now = rt.clock()
    max_attempts = rt.policy.followup.delivery_max_attempts
    gate = asyncio.Semaphore(HAND_OVERS_AT_ONCE)
    records = SentRecords(rt)

    async def one_complaint(rows: list[asyncpg.Record]) -> int:
        handed = 0
        for row in rows:
            handed += await _deliver_one(rt, gate, records, row, max_attempts)
        return handed

    backoffs = [_backoff(rt, n) for n in range(1, max_attempts + 2)]
    attempted = 0
    while True:
        due = await rt.pool.fetch(_CLAIM_DUE, now, _DUE_BATCH, backoffs)
        attempted += len(due)
        by_complaint: dict[UUID, list[asyncpg.Record]] = {}
        for row in sorted(due, key=lambda r: (r["due_at"], r["seq"])):
            by_complaint.setdefault(row["complaint_id"], []).append(row)
        results = await asyncio.gather(
            *(one_complaint(rows) for rows in by_complaint.values()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the database: the attempts are recorded, the round waits
        if len(due) < _DUE_BATCH:
            return attempted


async def _deliver_one(
    rt: Runtime, gate: asyncio.Semaphore, records: SentRecords, d: asyncpg.Record, max_attempts: int
) -> int:
    """Hand over one claimed delivery (its attempt is recorded already)."""
    if d["attempts"] > max_attempts:  # the copies are bounded, even across crashes
        await _delivery_failed(rt, d, "AttemptsExhausted", None, final=True)
        return 0
    try:
        return await _hand_over(rt, gate, records, d)
    except Exception as exc:
        if is_transient(exc) and not isinstance(exc, DeliveryFailed):
            raise  # the database: the attempt is recorded, the round waits
        final = isinstance(exc, Undeliverable) or d["attempts"] >= max_attempts
        detail = str(exc)[:500] if isinstance(exc, DeliveryFailed) else type(exc).__name__
        await _delivery_failed(rt, d, type(exc).__name__, detail, final=final)
        return 0


async def _hand_over(
    rt: Runtime, gate: asyncio.Semaphore, records: SentRecords, d: asyncpg.Record
) -> int:
    """Hand one claimed delivery to its channel (``gate``: one of the hand-overs at once),
    then record it as sent (1) — unless it was cancelled while it was on its way (0)."""
    res: FollowupResources = rt.resources
    async with gate:  # the record does not hold a place: the next complaint's goes on
        if records.unavailable is not None:
            # a record found the database gone: what goes out now could not be recorded as
            # sent, and would go out again after its backoff; the round stops instead
            raise ConnectionError("the database became unavailable during the round")
        target = address(d)
        if target is None:
            raise Undeliverable(f"no contact for the {d['channel']} channel")
        channel, to = target
        await res.notifier.send(
            Outbound(str(d["id"]), channel, to, d["subject"], d["body"], d["language"])
        )
    return await records.record(d, channel)


class SentRecords:
    """Hand-overs recorded as sent, in groups: those that end while a group is being written
    wait and go into the next one together, one transaction for the group (each delivery's
    mark and the event that records it) instead of one each.  A hand-over waits for nothing
    else: when none is being written, its group starts at once.

    A group that fails is written again one delivery at a time, so that an error reaches only
    the delivery it belongs to; a database that is unavailable fails the whole group (each
    delivery is sent again after its backoff, as alone)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._waiting: list[tuple[asyncpg.Record, str, asyncio.Future[int]]] = []
        self._writing: asyncio.Task[None] | None = None
        # set once a record found the database unavailable: no more hand-overs this round
        self.unavailable: BaseException | None = None

    async def record(self, d: asyncpg.Record, channel: str) -> int:
        """Record the delivery ``d``, handed over on ``channel``, as sent: 1, or 0 when it was
        cancelled meanwhile."""
        recorded: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((d, channel, recorded))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_waiting())
        return await recorded

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                await self._write(group)
        finally:
            self._writing = None
            for *_, recorded in self._waiting:  # stopped (cancelled): none of these written
                recorded.cancel()
            self._waiting = []

    async def _write(self, group: list[tuple[asyncpg.Record, str, asyncio.Future[int]]]) -> None:
        try:
            async with self.rt.transaction() as conn:
                marked = await _mark_sent(conn, self.rt, [(d, channel) for d, channel, _ in group])
        except Exception as exc:
            if len(group) > 1 and not database_unavailable(exc):
                for one in group:  # which one fails, if one does, learns it alone
                    await self._write([one])
                return
            if database_unavailable(exc):
                self.unavailable = exc
            for *_, recorded in group:
                if not recorded.done():
                    recorded.set_exception(exc)
            return
        except BaseException:
            for *_, recorded in group:
                recorded.cancel()
            raise
        for (*_, recorded), n in zip(group, marked, strict=True):
            if not recorded.done():
                recorded.set_result(n)


# Each delivery is found by its key.  Its status is tested with ``IS NOT DISTINCT FROM``
# (the same as ``=`` on this NOT NULL column) so that the planner cannot use the index of
# pending deliveries (``deliveries_due``, whose predicate ``status = 'pending'`` would be
# implied): between two vacuums that index holds an entry for every version of every delivery
# claimed or sent since, and the planner, counting only the live ones, took it for a few rows
# and scanned it whole with the table pages behind it on every call (the pipeline bench:
# 1.4 ms and 420-440 buffers a call, the statement followup spent the most time in).
_MARK_SENT = """
WITH marked AS (
    UPDATE deliveries d SET status = 'sent', sent_at = $2
      FROM unnest($1::uuid[]) AS x(id)
     WHERE d.id = x.id AND d.status IS NOT DISTINCT FROM 'pending'
    RETURNING d.id
)
SELECT coalesce(array_agg(id), '{}') FROM marked
"""


async def _mark_sent(
    conn: asyncpg.Connection, rt: Runtime, handed: list[tuple[asyncpg.Record, str]]
) -> list[int]:
    """Mark the handed-over deliveries sent and record each one's event (none for one that was
    cancelled meanwhile); 1 or 0 for each."""
    marked = set(await conn.fetchval(_MARK_SENT, [d["id"] for d, _ in handed], rt.clock()))
    repository = checks(rt)
    done = [(d, channel) for d, channel in handed if d["id"] in marked]
    written = await _start_streams(conn, repository, done)
    for d, channel in done:
        if d["id"] not in written:
            await repository.execute(
                conn,
                d["complaint_id"],
                partial(_delivered, d=d, channel=channel),
                likely_new=d["source_type"] == _FIRST_MESSAGE,  # it starts the complaint's stream
            )
    return [int(d["id"] in marked) for d, _ in handed]


async def _start_streams(
    conn: asyncpg.Connection, repository: Repository[Followup], done: list[tuple[Any, str]]
) -> set[UUID]:
    """Record the first messages of several complaints (each starts its complaint's stream)
    in one statement; the deliveries so recorded.  When a complaint has more than one
    delivery in the group, or a stream exists after all, none is: each is recorded on its own,
    in order, by the caller."""
    first = [(d, channel) for d, channel in done if d["source_type"] == _FIRST_MESSAGE]
    if len(first) < 2 or len({d["complaint_id"] for d, _ in done}) < len(done):
        return set()
    empty = repository.fold([])
    try:
        await repository.create_many(
            conn, {d["complaint_id"]: _delivered(empty, d=d, channel=ch) for d, ch in first}
        )
    except ConcurrencyConflict:
        return set()  # nothing of it was written
    return {d["id"] for d, _ in first}


# what followup records first of nearly every complaint: its acknowledgement sent
_FIRST_MESSAGE = ComplaintAcknowledged.event_name()


async def _delivery_failed(
    rt: Runtime, d: asyncpg.Record, reason: str, detail: str | None, *, final: bool
) -> None:
    log.warning(
        "delivery %s (%s) attempt %d failed: %s%s",
        d["id"],
        d["kind"],
        d["attempts"],
        reason,
        "; parked" if final else "",
    )
    async with rt.transaction() as conn:
        still = await conn.fetchval(
            "UPDATE deliveries SET last_error = $2, status = $3 WHERE id = $1"
            " AND status = 'pending' RETURNING true",
            d["id"],
            detail or reason,
            "failed" if final else "pending",
        )
        if still and final:
            await _park(
                conn,
                rt,
                d["complaint_id"],
                work=d["kind"],
                ref=d["ref"],
                attempts=d["attempts"],
                reason=reason,
                channel=Channel(d["channel"]),
                delivery_id=d["id"],
            )


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
    """Forever: every ``timer_poll``, queue due checks and reminders and expire; deliver what
    is due then, and again at once whenever a consumer's transaction that queued messages has
    committed (an acknowledgement goes out as soon as it is queued) and after every round that
    attempted some (under load, what was queued meanwhile: no round waits for the poll).
    The connections to the channels are closed once nothing was due for
    :data:`KEEP_CONNECTIONS` (or until the timers).  A row's own failure is isolated
    (retried, then parked); the database's ends the round, retried after ``timer_poll``; a
    defect ends the task, and its supervisor starts it again."""
    res: FollowupResources = rt.resources
    interval = rt.policy.followup.timer_poll.total_seconds()
    loop = asyncio.get_running_loop()
    timers_at = loop.time()  # when checks, reminders and expiry are looked at next
    try:
        while True:
            attempted = 0
            try:
                if loop.time() >= timers_at:
                    timers_at = loop.time() + interval
                    await queue_checks_and_reminders(rt)
                    await expire_checks(rt)
                res.queued.clear()  # a commit from now on wakes the wait below
                attempted = await deliver_due(rt)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("followup worker: database unavailable (%s)", type(exc).__name__)
                await res.notifier.close_idle()
                await asyncio.sleep(interval)
                continue
            if attempted:
                continue  # attempted rows are due again only after their backoff: this ends
            # nothing due: wait to be woken, or for the timers; the connections are kept for
            # what is queued within KEEP_CONNECTIONS (not one connection per wake-up)
            await woken(res.queued, min(KEEP_CONNECTIONS, timers_at - loop.time()))
            if not res.queued.is_set():
                await res.notifier.close_idle()
                await woken(res.queued, timers_at - loop.time())
    finally:
        await res.notifier.close_idle()


# seconds the channels' connections are kept open with nothing to send (well within the
# idle time after which SMTP servers drop a client: five minutes, RFC 5321 4.5.3.2.7)
KEEP_CONNECTIONS = 5.0
