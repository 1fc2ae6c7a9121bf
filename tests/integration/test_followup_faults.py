"""Follow-up under faults: one bad row never stops the other customers' messages, a hand-over is
recorded before it happens and never inside a transaction, and messages nobody should get any
more are not sent."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from complaints_followup.handlers import subscriptions as followup_subscriptions
from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs
from complaints_shared.events.followup import FollowupParked
from tests.integration.conftest import StartPlatform
from tests.integration.test_faults import password_file
from tests.integration.test_followup import (
    DAY,
    START,
    _contact,
    _queue_email,
    followup_events,
    mail,
    start_loop,
    submit,
)
from tests.integration.test_learning import ev
from tests.support import ManualClock, TcpProxy, behind, eventually, resolve_case

pytestmark = pytest.mark.integration


@pytest.fixture
def three_attempts(followup_policy: Path) -> Path:
    """The tests' follow-up policy, giving up after three attempts."""
    text = followup_policy.read_text().replace(
        "[followup]\n", "[followup]\ndelivery_max_attempts = 3\n"
    )
    followup_policy.write_text(text)
    return followup_policy


@pytest.fixture
async def loop(start_platform: StartPlatform, smtp, three_attempts):  # type: ignore[no-untyped-def]
    return await start_loop(start_platform, smtp, three_attempts)


async def test_a_row_that_always_fails_is_retried_then_parked_and_the_others_go_on(loop, http):
    p, clock, inbox = loop
    pool = p.pool("followup")
    # rows as an earlier version stored them: an unknown language, a line break in a subject
    bad_check = await submit(p, http, "ilse@example.de", language="en")
    await resolve_case(http, p.url("resolution"), bad_check)
    await mail(inbox, "ilse@example.de", "has been resolved")
    await pool.execute(
        "UPDATE satisfaction_checks SET language = 'xx' WHERE complaint_id = $1",
        uuid.UUID(bad_check),
    )
    bad_message = uuid.uuid4()
    await pool.execute(
        "INSERT INTO deliveries (id, complaint_id, kind, ref, source_type, channel, language,"
        " subject, body, next_attempt_at) VALUES ($1, $2, 'message', $3, 'CaseAssigned',"
        " 'email', 'de', 'Ihr Ansprechpartner: Max\nBcc: x@example.org', 'Hallo', $4)",
        bad_message,
        uuid.UUID(bad_check),
        str(uuid.uuid4()),
        START,
    )
    clock.advance(3 * DAY + timedelta(minutes=1))  # the bad check is due

    # meanwhile other customers' messages go out
    good = await submit(p, http, "joao@example.pt")
    await mail(inbox, "joao@example.pt", "Recebemos")
    for _ in range(4):  # the backoffs pass: 10 s, 20 s, ...
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.5)

    await eventually(
        lambda: pool.fetchval("SELECT count(*) = 2 FROM events WHERE type = 'FollowupParked'"),
        what="both rows parked",
    )
    published = await followup_events(p, await pool.fetchval("SELECT count(*) FROM events"))
    events = sorted(
        (e for e in published if isinstance(e.payload, FollowupParked)),
        key=lambda e: e.payload.work,
    )
    assert [(e.payload.work, e.payload.reason, e.payload.attempts) for e in events] == [
        ("check", "UnknownLocaleError", 3),
        ("message", "ValueError", 3),
    ]
    assert all(str(e.stream_id) == bad_check for e in events)
    assert events[1].payload.delivery_id == bad_message
    row = await pool.fetchrow("SELECT status, attempts FROM deliveries WHERE id = $1", bad_message)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    # parked rows are not tried again (an hour is many backoffs)
    clock.advance(timedelta(hours=1))
    good_case = await resolve_case(http, p.url("resolution"), good)
    assert good_case["state"] == "resolved"
    await mail(inbox, "joao@example.pt", "foi resolvida")
    assert await pool.fetchval("SELECT attempts FROM deliveries WHERE id = $1", bad_message) == 3
    assert not [m for m in inbox.to("ilse@example.de") if "Bcc" in str(m["Subject"])]


async def test_the_hand_over_is_recorded_first_and_holds_no_transaction(loop, http):
    """A slow mail server: while it holds the message, the attempt is already committed and
    no transaction (nor row lock) is open in followup's database."""
    p, _clock, inbox = loop
    pool = p.pool("followup")
    inbox.hold()
    try:
        cid = await submit(p, http, "marta@example.pt")
        await eventually(
            lambda: asyncio.sleep(0, inbox.holding.is_set()),
            what="the mail server to hold the acknowledgement",
        )
        row = await pool.fetchrow(
            "SELECT status, attempts FROM deliveries WHERE complaint_id = $1", uuid.UUID(cid)
        )
        assert (row["status"], row["attempts"]) == ("pending", 1)
        async with pool.acquire() as conn, conn.transaction():  # no row lock held on it
            await conn.execute(
                "SELECT 1 FROM deliveries WHERE complaint_id = $1 FOR UPDATE NOWAIT",
                uuid.UUID(cid),
            )

        async def none_open() -> bool:
            return await pool.fetchval(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
            )

        # a consumer's batch may be in its transaction at any one moment (the other services'
        # events keep arriving); a transaction held over the hand-over would never end
        await eventually(none_open, timeout=5, what="a moment with no transaction open")
        assert inbox.holding.is_set()  # still held by the mail server meanwhile
    finally:
        inbox.release()
    message = await mail(inbox, "marta@example.pt", "Recebemos")
    row = await pool.fetchrow(
        "SELECT id, status, attempts FROM deliveries WHERE complaint_id = $1", uuid.UUID(cid)
    )
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert message["Message-ID"] == f"<{row['id']}@complaints.local>"


async def test_a_withdrawn_complaint_gets_no_pending_message(loop, http):
    p, clock, inbox = loop
    pool = p.pool("followup")
    cid = await submit(p, http, "rui@example.pt")
    await mail(inbox, "rui@example.pt", "Recebemos")
    await resolve_case(http, p.url("resolution"), cid)
    await mail(inbox, "rui@example.pt", "foi resolvida")
    inbox.fail = 1  # the survey's first attempt is refused: it waits for its retry
    clock.advance(3 * DAY + timedelta(minutes=1))
    await eventually(
        lambda: pool.fetchval(
            "SELECT attempts = 1 FROM deliveries WHERE complaint_id = $1 AND kind = 'check'",
            uuid.UUID(cid),
        ),
        what="the refused survey e-mail",
    )
    withdrawn = await http.post(
        f"{p.url('intake')}/complaints/{cid}/withdraw", json={"reason": "sorted out"}
    )
    assert withdrawn.status_code == 200, withdrawn.text
    await eventually(
        lambda: pool.fetchval(
            "SELECT status = 'cancelled' FROM deliveries WHERE complaint_id = $1"
            " AND kind = 'check'",
            uuid.UUID(cid),
        ),
        what="the pending survey e-mail to be cancelled",
    )
    clock.advance(DAY)
    await asyncio.sleep(0.5)
    assert not [m for m in inbox.to("rui@example.pt") if "Como correu" in m["Subject"]]


async def test_a_message_before_the_contact_details_waits_for_them(loop, http):
    """Resolution's message can arrive before intake's ComplaintReceived (other topic): it is
    retried, not given up as undeliverable."""
    p, clock, inbox = loop
    pool = p.pool("followup")
    early, cid = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO deliveries (id, complaint_id, kind, ref, source_type, channel, language,"
        " subject, body, next_attempt_at) VALUES ($1, $2, 'message', $3, 'CaseAssigned',"
        " 'email', 'pt', 'Atribuído', 'Olá', $4)",
        early,
        cid,
        str(uuid.uuid4()),
        START,
    )
    await eventually(  # counted when claimed, its error recorded just after
        lambda: pool.fetchval(
            "SELECT attempts = 1 AND last_error IS NOT NULL FROM deliveries WHERE id = $1", early
        ),
        what="the first attempt, failed",
    )
    row = await pool.fetchrow("SELECT status, last_error FROM deliveries WHERE id = $1", early)
    assert row["status"] == "pending" and "not arrived" in row["last_error"]
    await pool.execute(
        "INSERT INTO contact_preferences (complaint_id, channel, language, email)"
        " VALUES ($1, 'email', 'pt', 'tiago@example.pt')",
        cid,
    )
    clock.advance(timedelta(seconds=11))
    await mail(inbox, "tiago@example.pt", "Atribuído")


async def test_a_withdrawal_and_a_resolution_at_the_same_moment_schedule_no_survey(
    start_platform: StartPlatform, followup_policy
):
    """The two events come on two topics, so two consumers (or replicas) may handle them at
    once, each in its own READ COMMITTED transaction: the later must see the earlier."""
    p = await start_platform("followup", policy=followup_policy)
    rt = p.servers["followup"].app.state.runtime
    (subscription,) = followup_subscriptions(rt)
    pool = p.pool("followup")
    cid = uuid.uuid4()

    def event(payload: DomainEvent, source: str) -> Event[DomainEvent]:
        return ev(payload, cid, START, source)

    withdrawn = event(it.ComplaintWithdrawn(reason=None), "intake")
    resolved = event(
        rs.CaseResolved(
            complaint_id=cid,
            summary="Refunded",
            resolved_by="a1",
            category="billing",
            severity="medium",
        ),
        "resolution",
    )
    async with pool.acquire() as one, pool.acquire() as two:
        tx_one = one.transaction()
        await tx_one.start()
        await subscription.handlers["ComplaintWithdrawn"](one, withdrawn)
        tx_two = two.transaction()
        await tx_two.start()
        racing = asyncio.create_task(subscription.handlers["CaseResolved"](two, resolved))
        await asyncio.sleep(0.5)  # the resolution is being handled, the withdrawal uncommitted
        await tx_one.commit()
        await racing
        await tx_two.commit()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM satisfaction_checks WHERE complaint_id = $1 AND status ="
            " 'scheduled'",
            cid,
        )
        == 0
    )


async def test_a_round_stops_handing_over_once_the_database_is_gone(
    start_platform: StartPlatform, smtp, followup_policy, new_database, tmp_path
):
    """The database goes away while a round's messages are with the mail server: their records
    of "sent" fail, and the round hands over none of its other messages (each would go out
    again after its backoff, recorded or not). Once the database is back, every message goes
    out and is recorded, none more than twice."""
    inbox, port = smtp
    dsn = await new_database()
    proxy = await TcpProxy("127.0.0.1", urllib.parse.urlsplit(dsn).port or 5432).restore()
    clock = ManualClock(START)
    await start_platform(
        "followup",
        policy=followup_policy,
        clock=clock,
        smtp_host="127.0.0.1",
        smtp_port=port,
        followup_database_url=behind(proxy, dsn),
        **password_file(tmp_path),
    )
    direct = await asyncpg.connect(dsn)
    complaints = [uuid.uuid4() for _ in range(40)]
    try:
        inbox.hold()
        async with direct.transaction():
            for i, complaint_id in enumerate(complaints):
                await _contact(direct, complaint_id, f"CMP-GONE-{i}", f"gone{i}@example.com")
                await _queue_email(direct, complaint_id, f"gone {i}", clock())
        await eventually(
            lambda: asyncio.sleep(0, inbox.holding.is_set()), what="the mail server to hold"
        )
        await asyncio.sleep(0.3)  # the round's first hand-overs all reach the mail server
        await proxy.cut()
        inbox.release()
        await asyncio.sleep(1.5)
        during = len([m for m in inbox.messages if m["To"].startswith("gone")])
        # the first hand-overs, and those that took their places before a record failed
        assert during < len(complaints), during
        await proxy.restore()
        clock.advance(timedelta(hours=1))  # past every retry's backoff

        async def all_sent() -> bool:
            return bool(
                await direct.fetchval(
                    "SELECT count(*) = $2 FROM deliveries"
                    " WHERE complaint_id = ANY($1::uuid[]) AND status = 'sent'",
                    complaints,
                    len(complaints),
                )
            )

        await eventually(all_sent, what="every message recorded as sent", timeout=60)
        copies = Counter(m["To"] for m in inbox.messages if m["To"].startswith("gone"))
        assert len(copies) == len(complaints) and max(copies.values()) <= 2
    finally:
        inbox.release()
        await proxy.restore() if proxy._server is None else None
        await direct.close()
