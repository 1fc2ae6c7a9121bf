"""Follow-up on the real broker, database and SMTP server, with a controlled clock."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import httpx
import pytest

from complaints_followup.projection import checks
from complaints_followup.worker import HAND_OVERS_AT_ONCE
from complaints_shared.events.followup import CustomerMessageSent
from tests.integration.conftest import Platform, StartPlatform
from tests.support import (
    Inbox,
    ManualClock,
    await_case,
    eventually,
    read_topic,
    resolve_case,
)

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
DAY = timedelta(days=1)


@pytest.fixture
async def loop(start_platform: StartPlatform, smtp, followup_policy):  # type: ignore[no-untyped-def]
    return await start_loop(start_platform, smtp, followup_policy)


async def start_loop(  # type: ignore[no-untyped-def]
    start_platform: StartPlatform,
    smtp,
    policy: Path,
    public_url: str = "https://care.example/s",
    **settings: object,
):
    """Intake, resolution and followup on a manual clock, mailing to ``smtp``."""
    clock = ManualClock(START)
    inbox, port = smtp
    p = await start_platform(
        "intake",
        "resolution",
        "followup",
        policy=policy,
        clock=clock,
        smtp_host="127.0.0.1",
        smtp_port=port,
        public_url=public_url,
        **settings,
    )
    return p, clock, inbox


async def mail(inbox: Inbox, address: str, subject_part: str) -> EmailMessage:
    async def arrived() -> EmailMessage | None:
        return next((m for m in inbox.to(address) if subject_part in m["Subject"]), None)

    return await eventually(arrived, what=f"an e-mail about {subject_part!r}")


def token_of(message: EmailMessage) -> str:
    body = message.get_content()
    match = re.search(r"https://care\.example/s/surveys/(\S+)", body)
    assert match, body
    return match.group(1)


async def submit(p: Platform, http: httpx.AsyncClient, email: str, language: str = "pt") -> str:
    r = await http.post(
        f"{p.url('intake')}/complaints",
        json={
            "channel": "web",
            "subject": "Produto avariado",
            "description": "A torradeira deixou de funcionar ao fim de dois dias.",
            "customer": {
                "name": "Ana",
                "email": email,
                "preferred_channel": "email",
                "language": language,
            },
            "category": "product_defect",
            "severity": "medium",
        },
    )
    assert r.status_code == 201, r.text
    cid = r.json()["complaint_id"]

    await await_case(http, p.url("resolution"), cid)
    return cid


async def followup_events(p: Platform, count: int) -> list:
    return await p.topic_events("complaints.followup.v2", count)


async def test_resolve_mail_survey_low_score_reopens_the_case(loop, http):
    p, clock, inbox = loop
    cid = await submit(p, http, "ana@example.pt")
    ack = await mail(inbox, "ana@example.pt", "Recebemos a sua reclamação")
    assert "Obrigado" in ack.get_content()
    assert ack["Content-Language"] == "pt"  # the message's language, as its text is written
    assert ack["Content-Transfer-Encoding"] == "8bit"
    await resolve_case(http, p.url("resolution"), cid, "Enviámos uma torradeira nova")
    for subject in (
        "vai resolver a situação",
        "o que lhe podemos oferecer",
        "o que ficou acordado",
        "foi resolvida",
    ):
        await mail(inbox, "ana@example.pt", subject)
    checks = f"{p.url('followup')}/satisfaction-checks"

    async def scheduled() -> dict | None:
        items = (await http.get(checks, params={"complaint_id": cid})).json()["items"]
        return items[0] if items else None

    check = await scheduled() or await eventually(scheduled, what="the check")
    assert check["status"] == "scheduled"
    assert check["due_at"] == "2026-11-26T09:00:00Z"
    await asyncio.sleep(0.3)
    assert not [m for m in inbox.messages if "Como correu" in m["Subject"]]  # not before

    clock.advance(3 * DAY + timedelta(minutes=1))
    survey_mail = await mail(inbox, "ana@example.pt", "Como correu?")
    token = token_of(survey_mail)
    survey = (await http.get(f"{p.url('followup')}/surveys/{token}")).json()
    assert survey["language"] == "pt" and survey["reference"].startswith("CMP-")
    assert [q["id"] for q in survey["questions"]] == ["score", "solved", "comment", "nps"]
    assert "grau de satisfação" in survey["questions"][0]["text"]

    bad = await http.post(f"{p.url('followup')}/surveys/{token}", json={"score": 9, "solved": True})
    assert bad.status_code == 422
    r = await http.post(
        f"{p.url('followup')}/surveys/{token}",
        json={"score": 2, "solved": False, "comment": "Continua avariada", "nps": 3},
    )
    assert r.status_code == 201 and r.json() == {"status": "recorded", "reopen_requested": True}
    again = await http.post(
        f"{p.url('followup')}/surveys/{token}", json={"score": 5, "solved": True}
    )
    assert again.status_code == 409
    assert (await http.get(f"{p.url('followup')}/surveys/{token}")).status_code == 409

    async def reopened() -> dict | None:
        case = (await http.get(f"{p.url('resolution')}/cases/{cid}")).json()
        return case if case["reopen_count"] == 1 else None

    case = await eventually(reopened, what="resolution to reopen the case")
    assert case["state"] == "investigating"

    css = (await http.get(f"{p.url('followup')}/satisfaction")).json()
    assert (css["answers"], css["checks_sent"], css["css"], css["average_score"]) == (
        1,
        1,
        0.0,
        2.0,
    )
    assert css["nps"] == -100.0 and css["scores"]["2"] == 1 and css["response_rate"] == 100.0
    rebuilt = (await http.post(f"{p.url('followup')}/satisfaction/rebuild")).json()
    assert rebuilt == {"answers": 1}
    assert (await http.get(f"{p.url('followup')}/satisfaction")).json() == css

    types = [e.type for e in await followup_events(p, 9)]
    assert types.count("NextStepsConfirmed") == 1
    assert {
        "SatisfactionCheckScheduled",
        "SatisfactionCheckSent",
        "SatisfactionRecorded",
        "ReopenRequested",
        "CustomerMessageSent",
    } <= set(types)


async def test_reminder_then_expiry_then_gone(loop, http):
    p, clock, inbox = loop
    cid = await submit(p, http, "eva@example.hu", language="hu")
    await resolve_case(http, p.url("resolution"), cid)
    await mail(inbox, "eva@example.hu", "panaszát rendeztük")
    clock.advance(3 * DAY + timedelta(minutes=1))
    token = token_of(await mail(inbox, "eva@example.hu", "Elégedett volt?"))
    checks_url = f"{p.url('followup')}/satisfaction-checks"

    async def sent() -> bool:
        items = (await http.get(checks_url, params={"complaint_id": cid})).json()["items"]
        return bool(items) and items[0]["status"] == "sent"

    # the e-mail can arrive before followup records the hand-over, and the reminder falls due
    # a week after that record: the clock moves on only once it is there
    await eventually(sent, what="the survey recorded as sent")
    clock.advance(7 * DAY)
    reminder = await mail(inbox, "eva@example.hu", "Emlékeztető")
    assert token_of(reminder) == token
    assert len([m for m in inbox.to("eva@example.hu") if "Emlékeztető" in m["Subject"]]) == 1
    clock.advance(7 * DAY)

    async def expired() -> bool:
        items = (await http.get(checks_url, params={"complaint_id": cid})).json()["items"]
        return items[0]["status"] == "expired"

    await eventually(expired, what="the check to expire")
    gone = await http.get(f"{p.url('followup')}/surveys/{token}")
    assert gone.status_code == 410 and gone.headers["content-type"] == "application/problem+json"
    late = await http.post(
        f"{p.url('followup')}/surveys/{token}", json={"score": 5, "solved": True}
    )
    assert late.status_code == 410
    # a browser gets a page that says so, in the customer's language
    page = await http.get(f"{p.url('followup')}/surveys/{token}", headers=BROWSER)
    assert page.status_code == 410 and page.headers["content-type"].startswith("text/html")
    assert '<html lang="hu">' in page.text and "Ez a link lejárt" in page.text
    form = await http.post(
        f"{p.url('followup')}/surveys/{token}",
        content="score=5&solved=true",
        headers={**BROWSER, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 410 and "Ez a link lejárt" in form.text


async def test_tampered_or_unknown_tokens_are_404(loop, http):
    p, clock, inbox = loop
    cid = await submit(p, http, "luis@example.es", language="es")
    await resolve_case(http, p.url("resolution"), cid)
    clock.advance(3 * DAY + timedelta(minutes=1))
    token = token_of(await mail(inbox, "luis@example.es", "¿Qué tal lo hicimos?"))
    head, sig = token.split(".")
    flipped = head[:-2] + ("A" if head[-2] != "A" else "B") + head[-1]
    for bad in (f"{flipped}.{sig}", f"{head}.{sig[:-3]}abc", "nonsense", f"{head}."):
        r = await http.get(f"{p.url('followup')}/surveys/{bad}")
        assert r.status_code == 404, bad
        assert r.headers["content-type"] == "application/problem+json"
    assert (await http.get(f"{p.url('followup')}/surveys/{token}")).status_code == 200


async def test_a_reopened_case_cancels_its_check_and_a_new_resolution_gets_a_new_one(loop, http):
    p, clock, inbox = loop
    cid = await submit(p, http, "rui@example.pt")
    await resolve_case(http, p.url("resolution"), cid)
    checks = f"{p.url('followup')}/satisfaction-checks"

    async def statuses(n: int) -> list[str] | None:
        items = (await http.get(checks, params={"complaint_id": cid})).json()["items"]
        return [i["status"] for i in items] if len(items) == n else None

    await eventually(lambda: statuses(1), what="the first check")
    await http.post(
        f"{p.url('resolution')}/cases/{cid}/reopen",
        json={"reason": "it broke again"},
    )

    async def cancelled() -> bool:
        return await statuses(1) == ["cancelled"]

    await eventually(cancelled, what="the check to be cancelled")
    clock.advance(3 * DAY + timedelta(minutes=1))
    await asyncio.sleep(0.5)
    assert not [m for m in inbox.to("rui@example.pt") if "Como correu" in m["Subject"]]
    base = f"{p.url('resolution')}/cases/{cid}"
    for path, body in (
        (
            "cause",
            {
                "what_happened": "a",
                "what_should_have_happened": "b",
                "what_went_wrong": "c",
                "root_cause": "product_defect",
                "responsible": "us",
            },
        ),
        (
            "proposals",
            {
                "options": [{"remedy": "replacement", "description": "new one"}],
            },
        ),
        (
            "agreement",
            {
                "option_id": 1,
                "agreed_outcome": "a new toaster",
                "indicators": ["delivered"],
                "deadline": "2099-01-01T00:00:00Z",
            },
        ),
        ("resolve", {"summary": "replaced"}),
    ):
        r = await http.post(f"{base}/{path}", json=body)
        assert r.status_code == 200, (path, r.text)
    await eventually(lambda: statuses(2), what="a second check for the second resolution")
    assert await statuses(2) == ["cancelled", "scheduled"]


async def _contact(
    conn: asyncpg.Connection,
    complaint_id: uuid.UUID,
    reference: str,
    address: str,
    channel: str = "email",
) -> None:
    """A complaint's contact details as followup keeps them: replies on ``channel`` (e-mail or
    phone) to ``address``."""
    column = {"email": "email", "phone": "phone"}[channel]
    await conn.execute(
        "INSERT INTO contact_preferences (complaint_id, channel, language, reference,"
        f" {column}) VALUES ($1, $4, 'en', $2, $3) ON CONFLICT (complaint_id) DO NOTHING",
        complaint_id,
        reference,
        address,
        channel,
    )


async def _queue_email(
    conn: asyncpg.Connection,
    complaint_id: uuid.UUID,
    subject: str,
    due: datetime,
    *,
    kind: str = "message",
    source_type: str = "CaseAssigned",
    channel: str = "email",
) -> uuid.UUID:
    """An e-mail (or a message on another ``channel``) to the complaint's customer, due at
    ``due``: a message about the case (its ``source_type``: the event it tells of), or
    (``kind="check"``) a check whose reference is no check id, so its record cannot be
    written.  Its delivery id."""
    check = kind == "check"
    delivery_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO deliveries (id, complaint_id, kind, ref, source_type, channel, language,"
        " subject, body, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $8, 'en', $6,"
        " 'Hello', $7)",
        delivery_id,
        complaint_id,
        kind,
        "no-check-id" if check else str(uuid.uuid4()),
        "SatisfactionCheck" if check else source_type,
        subject,
        due,
        channel,
    )
    return delivery_id


async def test_a_queued_message_goes_out_at_once_not_at_the_workers_next_poll(
    start_platform: StartPlatform, smtp, tmp_path: Path, http
):
    """The worker polls for due work only once an hour here: an acknowledgement still goes
    out as soon as the transaction that queued it has committed (the consumer wakes the
    worker), for each complaint in turn, not an hour later."""
    policy = tmp_path / "hourly.toml"
    policy.write_text(
        '[calendar]\nalways_open = true\n[followup]\ntimer_poll = "PT1H"\n'
        '[resolution]\ntimer_poll = "PT0.05S"\n'
    )
    p, _, inbox = await start_loop(start_platform, smtp, policy)
    await asyncio.sleep(0.5)  # the worker's first round (at its start) is over: it now waits
    for address in ("soon1@example.pt", "soon2@example.pt"):
        await submit(p, http, address)
        ack = await mail(inbox, address, "Recebemos a sua reclamação")
        assert "Obrigado" in ack.get_content()


async def test_a_backlog_of_complaints_gets_each_acknowledgement_once_at_its_own_address(
    start_platform: StartPlatform, smtp, followup_policy, http
):
    """Complaints received while followup was down: when it comes up, their contact details
    and acknowledgements are recorded together (each kind in one statement), and each
    customer gets their own acknowledgement once."""
    inbox, port = smtp
    received = 10
    intake = await start_platform("intake", policy=followup_policy)
    references = {}
    for i in range(received):
        r = await http.post(
            f"{intake.url('intake')}/complaints",
            json={
                "channel": "web",
                "subject": "Produto avariado",
                "description": "A torradeira deixou de funcionar ao fim de dois dias.",
                "customer": {
                    "name": f"Ana {i}",
                    "email": f"backlog{i}@example.pt",
                    "preferred_channel": "email",
                    "language": "pt",
                },
                "category": "product_defect",
                "severity": "medium",
            },
        )
        assert r.status_code == 201, r.text
        references[f"backlog{i}@example.pt"] = r.json()["reference"]
    bootstrap = intake.servers["intake"].app.state.runtime.settings.kafka_bootstrap
    await read_topic(bootstrap, f"{intake.prefix}complaints.intake.v2", count=2 * received)

    p = await start_platform(
        "followup",
        policy=followup_policy,
        smtp_host="127.0.0.1",
        smtp_port=port,
        **intake.keyring,
    )

    def acknowledged() -> bool:
        return all(inbox.to(address) for address in references)

    await eventually(lambda: asyncio.sleep(0, acknowledged()), what="every acknowledgement")
    await asyncio.sleep(0.5)  # a second copy would be on its way by now
    for address, reference in references.items():
        (ack,) = inbox.to(address)
        assert reference in ack["Subject"] and f"Ana {address[7:-11]}" in ack.get_content()
    pool = p.pool("followup")
    assert await pool.fetchval("SELECT count(*) FROM contact_preferences") == received


async def test_a_burst_of_messages_goes_out_over_a_few_kept_connections_in_each_complaints_order(
    loop,
):
    """Many messages due at once are handed over several complaints at a time, over SMTP
    connections kept for the round (not one connection per message), and each complaint's
    messages still go out in the order they fell due, and those due at the same instant in
    the order they were queued."""
    p, clock, inbox = loop
    pool = p.pool("followup")
    complaints = [uuid.uuid4() for _ in range(15)]
    now = clock()
    async with pool.acquire() as conn, conn.transaction():  # all due in the same instant
        for i, complaint_id in enumerate(complaints):
            await _contact(conn, complaint_id, f"CMP-BURST-{i}", f"burst{i}@example.com")
            for order, due in (
                ("first", now - timedelta(seconds=1)),
                ("second", now),
                ("third", now),  # queued after the second, due at the same instant
            ):
                await _queue_email(conn, complaint_id, f"{order} {i}", due)

    def burst() -> list[int]:
        return [n for n, m in enumerate(inbox.messages) if m["To"].startswith("burst")]

    await eventually(lambda: asyncio.sleep(0, len(burst()) == 45), what="all 45 messages")
    for i in range(15):
        assert [m["Subject"] for m in inbox.to(f"burst{i}@example.com")] == [
            f"first {i}",
            f"second {i}",
            f"third {i}",
        ]
    sessions = {inbox.sessions[n] for n in burst()}
    assert len(sessions) <= HAND_OVERS_AT_ONCE, sessions
    await _all_sent(pool, complaints, 45)  # each recorded just after its hand-over


async def test_a_burst_of_messages_to_the_gateway_goes_out_over_a_few_kept_connections(
    start_platform: StartPlatform, smtp, followup_policy, gateway
):
    """Messages on the other channels (here phone) go to the webhook gateway as its contract
    says (the delivery's id, also as the ``Idempotency-Key``; channel, address, subject, body,
    language), each complaint's in the order they fell due, over HTTP connections kept for the
    round, as SMTP's are: not one connection (and, over TLS, one handshake) per message."""
    g, url = gateway
    p, clock, _ = await start_loop(start_platform, smtp, followup_policy, webhook_url=url)
    pool = p.pool("followup")
    complaints = [uuid.uuid4() for _ in range(15)]
    now = clock()
    queued: dict[uuid.UUID, list[uuid.UUID]] = {}
    async with pool.acquire() as conn, conn.transaction():  # all due in the same instant
        for i, complaint_id in enumerate(complaints):
            await _contact(conn, complaint_id, f"CMP-PHONE-{i}", f"+3519100000{i:02}", "phone")
            queued[complaint_id] = [
                await _queue_email(conn, complaint_id, f"{order} {i}", due, channel="phone")
                for order, due in (
                    ("first", now - timedelta(seconds=1)),
                    ("second", now),
                    ("third", now),  # queued after the second, due at the same instant
                )
            ]

    await eventually(lambda: asyncio.sleep(0, len(g.posted) == 45), what="all 45 messages")
    for i, complaint_id in enumerate(complaints):
        posted = g.to(f"+3519100000{i:02}")
        assert [m.json for m in posted] == [
            {
                "id": str(delivery_id),
                "channel": "phone",
                "to": f"+3519100000{i:02}",
                "subject": f"{order} {i}",
                "body": "Hello",
                "language": "en",
            }
            for order, delivery_id in zip(
                ("first", "second", "third"), queued[complaint_id], strict=True
            )
        ]
        assert [m.headers["idempotency-key"] for m in posted] == [
            str(d) for d in queued[complaint_id]
        ]
    connections = {m.connection for m in g.posted}
    assert len(connections) <= HAND_OVERS_AT_ONCE, connections
    await _all_sent(pool, complaints, 45)


async def test_the_gateways_answer_decides_between_sent_retried_and_failed(
    start_platform: StartPlatform, smtp, followup_policy, gateway
):
    """2xx: sent. 5xx, 429 or a redirect: retried after the backoff, with the same
    ``Idempotency-Key`` (and on a new connection: the round's connections are closed at its
    end). Another 4xx: the gateway cannot reach that customer, so the delivery fails at once
    (parked)."""
    g, url = gateway
    p, clock, _ = await start_loop(start_platform, smtp, followup_policy, webhook_url=url)
    pool = p.pool("followup")
    first = {503: "pending", 429: "pending", 307: "pending", 404: "failed"}
    phones = {status: f"+35191000{status}" for status in first}
    g.answers = {phone: [status] for status, phone in phones.items()}
    ids = {}
    async with pool.acquire() as conn, conn.transaction():
        for status, phone in phones.items():
            complaint_id = uuid.uuid4()
            await _contact(conn, complaint_id, f"CMP-ANS-{status}", phone, "phone")
            ids[status] = await _queue_email(
                conn, complaint_id, f"news {status}", clock(), channel="phone"
            )

    def rows_are(expected: dict[int, tuple[str, int]]):  # type: ignore[no-untyped-def]
        async def probe() -> bool:
            found = await pool.fetch(
                "SELECT id, status, attempts FROM deliveries WHERE id = ANY($1::uuid[])",
                list(ids.values()),
            )
            by_id = {r["id"]: (r["status"], r["attempts"]) for r in found}
            return {status: by_id.get(i) for status, i in ids.items()} == expected

        return probe

    await eventually(
        rows_are({status: (state, 1) for status, state in first.items()}),
        what="the first answers",
    )
    await asyncio.sleep(0.3)
    assert len(g.posted) == len(first)  # no retry before the backoff has passed
    errors = await pool.fetch(
        "SELECT id, last_error FROM deliveries WHERE id = ANY($1::uuid[])", list(ids.values())
    )
    assert {r["id"]: r["last_error"] for r in errors} == {
        ids[503]: "gateway answered 503",
        ids[429]: "gateway answered 429",
        ids[307]: "gateway answered 307",
        ids[404]: "gateway refused: 404",
    }
    clock.advance(timedelta(seconds=11))  # the first retry after 10 s
    await eventually(
        rows_are({503: ("sent", 2), 429: ("sent", 2), 307: ("sent", 2), 404: ("failed", 1)}),
        what="the retried ones sent",
    )
    for status, phone in phones.items():
        posted = g.to(phone)
        assert [m.status for m in posted] == ([404] if status == 404 else [status, 200])
        if status != 404:
            before, after = posted
            assert before.headers["idempotency-key"] == after.headers["idempotency-key"]
            assert before.connection != after.connection  # the round's connection was closed
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'FollowupParked'") == 1


async def test_messages_go_to_a_gateway_over_tls_only_when_its_certificate_is_trusted(
    start_platform: StartPlatform, smtp, followup_policy, gateway_tls, monkeypatch
):
    """An ``https://`` gateway's certificate is verified against the trusted authorities (here
    one of its own, named by ``SSL_CERT_FILE``): untrusted, nothing is posted and the delivery
    waits for its retry, its error saying why; trusted (after a restart with the operator's
    setting), the message goes out."""
    g, url, cert = gateway_tls
    p, clock, _ = await start_loop(start_platform, smtp, followup_policy, webhook_url=url)
    pool = p.pool("followup")
    await _queue_phone_message(pool, "CMP-TLS-1", "+351910000777", clock())
    await _refused_for_their_certificate(pool)
    assert g.posted == []
    # the trust is read once a notifier: a new start (as after the operator's change) takes it
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    p2, clock2, _ = await start_loop(start_platform, smtp, followup_policy, webhook_url=url)
    pool2 = p2.pool("followup")
    complaint_id = await _queue_phone_message(pool2, "CMP-TLS-2", "+351910000778", clock2())
    await eventually(
        lambda: asyncio.sleep(0, [m.json["to"] for m in g.posted] == ["+351910000778"]),
        what="the message posted over TLS",
    )
    await _all_sent(pool2, [complaint_id], 1)


async def _queue_phone_message(
    pool: asyncpg.Pool, reference: str, phone: str, due: datetime
) -> uuid.UUID:
    """A new complaint whose customer is reached by phone, and one message to them due at
    ``due``; the complaint's id."""
    complaint_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await _contact(conn, complaint_id, reference, phone, "phone")
        await _queue_email(conn, complaint_id, "news", due, channel="phone")
    return complaint_id


async def _refused_for_their_certificate(pool: asyncpg.Pool) -> None:
    """Wait until every delivery has been tried, then check each was refused for its server's
    certificate and waits for its retry."""

    async def tried() -> list[asyncpg.Record] | None:
        rows = await pool.fetch("SELECT status, attempts, last_error FROM deliveries")
        return rows if rows and all(r["last_error"] for r in rows) else None

    for row in await eventually(tried, what="each delivery tried"):
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"], row["last_error"]


async def _queue_burst(pool: asyncpg.Pool, due: datetime, prefix: str, complaints: int) -> None:
    """Two e-mails for each of ``complaints`` complaints, due at ``due``."""
    async with pool.acquire() as conn, conn.transaction():
        for i in range(complaints):
            complaint_id = uuid.uuid4()
            await _contact(conn, complaint_id, f"CMP-{prefix}-{i}", f"{prefix}{i}@example.com")
            for order in ("first", "second"):
                await _queue_email(conn, complaint_id, f"{order} {i}", due)


async def test_e_mail_goes_over_starttls_to_a_server_whose_certificate_is_trusted(
    start_platform: StartPlatform, smtp_tls, followup_policy, monkeypatch
):
    """With ``smtp_starttls``, every connection is upgraded to TLS before any mail goes, and
    the server's certificate is verified against the trusted authorities (here one of its
    own, named by ``SSL_CERT_FILE``, as an operator names a private one)."""
    inbox, port, cert = smtp_tls
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    p, clock, _ = await start_loop(
        start_platform, (inbox, port), followup_policy, smtp_starttls=True
    )
    await _queue_burst(p.pool("followup"), clock(), "tls", 10)
    await eventually(lambda: asyncio.sleep(0, len(inbox.messages) == 20), what="all 20 e-mails")
    assert all(inbox.secured) and len(inbox.secured) == 20
    for i in range(10):
        assert [m["Subject"] for m in inbox.to(f"tls{i}@example.com")] == [
            f"first {i}",
            f"second {i}",
        ]


async def test_e_mail_is_not_sent_to_a_server_whose_certificate_is_not_trusted(
    start_platform: StartPlatform, smtp_tls, followup_policy
):
    """A certificate no trusted authority signed: nothing is sent, and each delivery is left
    to be tried again after its backoff (the operator may fix the trust), its error saying
    why."""
    inbox, port, _ = smtp_tls
    p, clock, _ = await start_loop(
        start_platform, (inbox, port), followup_policy, smtp_starttls=True
    )
    pool = p.pool("followup")
    await _queue_burst(pool, clock(), "untrusted", 2)

    await _refused_for_their_certificate(pool)
    assert inbox.messages == []


async def _all_sent(pool: asyncpg.Pool, complaints: list[uuid.UUID], count: int) -> None:
    """Wait until the ``count`` deliveries of ``complaints`` are recorded as sent."""
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) = $2 FROM deliveries"
            " WHERE complaint_id = ANY($1::uuid[]) AND status = 'sent'",
            complaints,
            count,
        ),
        what=f"all {count} recorded as sent",
    )


def _subjects_from(inbox: Inbox, prefix: str) -> list[str]:
    """The subjects of the messages handed over whose subjects start with ``prefix``."""
    return [str(m["Subject"]) for m in inbox.messages if str(m["Subject"]).startswith(prefix)]


async def _hand_overs_meeting_a_locked_record(
    p: Platform,
    clock: ManualClock,
    inbox: Inbox,
    name: str,
    broken: int | None = None,
    source_type: str = "CaseAssigned",
    complaints: list[uuid.UUID] | None = None,
) -> list[uuid.UUID]:
    """Twelve complaints (new ones, or ``complaints``) with a message each (telling of
    ``source_type``), due at once; the ``broken`` one is a check whose reference is no check
    id (its record cannot be written).  Their rows are locked while they are handed over, so
    the first record waits and the other hand-overs end meanwhile.  Returns the complaints
    once the lock is let go."""
    pool = p.pool("followup")
    complaints = complaints or [uuid.uuid4() for _ in range(12)]
    inbox.hold()
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, complaint_id in enumerate(complaints):
                await _contact(conn, complaint_id, f"CMP-{name}-{i}", f"{name}{i}@example.com")
                due = clock() - timedelta(seconds=1)
                kind = "check" if i == broken else "message"
                await _queue_email(
                    conn, complaint_id, f"{name} {i}", due, kind=kind, source_type=source_type
                )
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) = 12 FROM deliveries WHERE complaint_id = ANY($1::uuid[])"
                " AND attempts = 1 AND subject LIKE $2",
                complaints,
                f"{name} %",
            ),
            what="all twelve claimed",
        )
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT 1 FROM deliveries WHERE complaint_id = ANY($1::uuid[])"
                " AND subject LIKE $2 FOR UPDATE",
                complaints,
                f"{name} %",
            )
            inbox.release()
            await eventually(
                lambda: asyncio.sleep(0, len(_subjects_from(inbox, f"{name} ")) == 12),
                what="all twelve handed over",
            )
            await eventually(
                lambda: pool.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ),
                what="the first record to wait for the lock",
            )
            await asyncio.sleep(0.5)  # the other hand-overs' answers come back meanwhile
    finally:
        inbox.release()
    return complaints


async def test_a_delivery_cancelled_while_on_its_way_is_not_recorded_as_sent(loop):
    """Of two messages handed over together, one is cancelled (its complaint withdrawn) while
    the mail server still holds them: the other is recorded as sent, the cancelled one stays
    cancelled and no event records it as sent."""
    p, clock, inbox = loop
    pool = p.pool("followup")
    complaints = [uuid.uuid4(), uuid.uuid4()]
    inbox.hold()
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, complaint_id in enumerate(complaints):
                await _contact(conn, complaint_id, f"CMP-WAY-{i}", f"way{i}@example.com")
                await _queue_email(conn, complaint_id, f"on its way {i}", clock())
        await eventually(
            lambda: asyncio.sleep(0, inbox.holding.is_set()), what="the mail server to hold one"
        )
        await pool.execute(
            "UPDATE deliveries SET status = 'cancelled' WHERE complaint_id = $1", complaints[0]
        )
    finally:
        inbox.release()
    await eventually(
        lambda: pool.fetchval(
            "SELECT status = 'sent' FROM deliveries WHERE complaint_id = $1", complaints[1]
        ),
        what="the other message recorded as sent",
    )
    statuses = await pool.fetch(
        "SELECT complaint_id, status FROM deliveries WHERE complaint_id = ANY($1::uuid[])",
        complaints,
    )
    assert {r["complaint_id"]: r["status"] for r in statuses} == {
        complaints[0]: "cancelled",
        complaints[1]: "sent",
    }
    sent = await pool.fetch(
        "SELECT stream_id FROM events WHERE type = 'CustomerMessageSent'"
        " AND stream_id = ANY($1::uuid[])",
        complaints,
    )
    assert [r["stream_id"] for r in sent] == [complaints[1]]


async def test_hand_overs_that_end_while_one_is_recorded_are_recorded_together(loop):
    """The hand-overs that end while another is being recorded as sent wait and are recorded
    in one transaction, not one each."""
    p, clock, inbox = loop
    pool = p.pool("followup")
    complaints = await _hand_overs_meeting_a_locked_record(p, clock, inbox, "together")
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) = 12 FROM events WHERE type = 'CustomerMessageSent'"
            " AND stream_id = ANY($1::uuid[])",
            complaints,
        ),
        what="every message recorded as sent",
    )
    transactions = await pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM deliveries"
        " WHERE complaint_id = ANY($1::uuid[]) AND status = 'sent'",
        complaints,
    )
    # the first, then the ones that ended while it waited (one late answer may start a third)
    assert transactions <= 3


async def _sent_versions(pool: asyncpg.Pool, complaints: list[uuid.UUID]) -> list[list[int]]:
    """Each complaint's versions of ``CustomerMessageSent`` in its stream."""
    rows = await pool.fetch(
        "SELECT stream_id, array_agg(version ORDER BY version) AS versions FROM events"
        " WHERE type = 'CustomerMessageSent' AND stream_id = ANY($1::uuid[]) GROUP BY stream_id",
        complaints,
    )
    by_stream = {r["stream_id"]: list(r["versions"]) for r in rows}
    return [by_stream.get(c, []) for c in complaints]


async def test_acknowledgements_recorded_together_start_their_complaints_streams(loop):
    """The acknowledgements of several complaints, recorded together, each start their
    complaint's stream (written at once); where the streams exist already (a message was
    recorded before), each is recorded after what is there."""
    p, clock, inbox = loop
    pool = p.pool("followup")
    first = await _hand_overs_meeting_a_locked_record(
        p, clock, inbox, "acknowledged", source_type="ComplaintAcknowledged"
    )

    async def recorded(complaints: list[uuid.UUID], versions: list[int]) -> bool:
        return await _sent_versions(pool, complaints) == [versions] * len(complaints)

    await eventually(lambda: recorded(first, [1]), what="each stream started by its message")
    assert await pool.fetchval(
        "SELECT count(*) = 12 FROM outbox o JOIN events e USING (event_id)"
        " WHERE e.stream_id = ANY($1::uuid[])",
        first,
    )

    told = await _hand_overs_meeting_a_locked_record(p, clock, inbox, "assigned")
    await eventually(lambda: recorded(told, [1]), what="the streams started")
    again = await _hand_overs_meeting_a_locked_record(
        p, clock, inbox, "late", source_type="ComplaintAcknowledged", complaints=told
    )
    await eventually(lambda: recorded(again, [1, 2]), what="each recorded after the first")


async def test_a_hand_over_whose_record_fails_fails_alone(loop):
    """Of hand-overs recorded together, one whose record cannot be written stays pending with
    its error (to be sent again); the others are recorded as sent."""
    p, clock, inbox = loop
    pool = p.pool("followup")
    complaints = await _hand_overs_meeting_a_locked_record(p, clock, inbox, "alone", broken=5)
    others = complaints[:5] + complaints[6:]
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) = 11 FROM events WHERE type = 'CustomerMessageSent'"
            " AND stream_id = ANY($1::uuid[])",
            others,
        ),
        what="every other message recorded as sent",
    )

    async def failed_alone() -> bool:
        row = await pool.fetchrow(
            "SELECT status, last_error FROM deliveries WHERE complaint_id = $1", complaints[5]
        )
        return (row["status"], row["last_error"]) == ("pending", "ValueError")

    await eventually(failed_alone, what="the broken delivery pending with its error")
    assert not await pool.fetchval(
        "SELECT count(*) FROM events WHERE stream_id = $1", complaints[5]
    )


async def test_delivery_failures_are_retried_and_sent_is_recorded_only_after_hand_over(loop, http):
    p, clock, inbox = loop
    cid = await submit(p, http, "joana@example.pt")
    await mail(inbox, "joana@example.pt", "Recebemos")
    await resolve_case(http, p.url("resolution"), cid)
    await mail(inbox, "joana@example.pt", "foi resolvida")
    inbox.fail = 2
    clock.advance(3 * DAY + timedelta(minutes=1))

    def refused(n: int):  # type: ignore[no-untyped-def]
        async def probe() -> bool:
            return inbox.refused == n

        return probe

    await eventually(refused(1), what="the first refused attempt")
    await asyncio.sleep(0.3)
    assert inbox.refused == 1  # no retry before the backoff has passed
    clock.advance(timedelta(seconds=11))  # first retry after 10 s
    await eventually(refused(2), what="the second refused attempt")
    pool = p.pool("followup")
    row = await pool.fetchrow(
        "SELECT status, attempts, last_error FROM deliveries WHERE kind = 'check'"
    )
    assert row["status"] == "pending" and row["attempts"] >= 1 and "451" in row["last_error"]
    assert (
        await pool.fetchval("SELECT count(*) FROM events WHERE type = 'SatisfactionCheckSent'") == 0
    )
    clock.advance(timedelta(seconds=21))  # second retry after 20 s
    await mail(inbox, "joana@example.pt", "Como correu?")

    async def sent_recorded() -> bool:
        return (
            await pool.fetchval("SELECT count(*) FROM events WHERE type = 'SatisfactionCheckSent'")
            == 1
        )

    await eventually(sent_recorded, what="SatisfactionCheckSent after the hand-over")
    row = await pool.fetchrow("SELECT status, attempts FROM deliveries WHERE kind = 'check'")
    assert (row["status"], row["attempts"]) == ("sent", 3)


async def test_an_answer_meeting_a_concurrent_append_to_its_stream_is_recorded(loop, http):
    """The survey's e-mail can arrive before followup has recorded it as sent, so an answer
    given at once can meet that append to the same stream.  The answer is decided again on
    the fresh state (the survey is still open) and recorded, not refused with a 409."""
    p, clock, inbox = loop
    cid = await submit(p, http, "eva@example.pt")
    await resolve_case(http, p.url("resolution"), cid)
    clock.advance(3 * DAY + timedelta(minutes=1))
    token = token_of(await mail(inbox, "eva@example.pt", "Como correu?"))
    checks_url = f"{p.url('followup')}/satisfaction-checks"

    async def sent() -> bool:
        items = (await http.get(checks_url, params={"complaint_id": cid})).json()["items"]
        return bool(items) and items[0]["status"] == "sent"

    await eventually(sent, what="the survey recorded as sent")
    rt = p.servers["followup"].app.state.runtime
    async with rt.pool.acquire() as conn:
        append = conn.transaction()
        await append.start()  # another writer's append to the stream, not yet committed
        await checks(rt).execute(
            conn,
            uuid.UUID(cid),
            lambda _: [
                CustomerMessageSent(
                    source_event_id=str(uuid.uuid4()),
                    source_type="CaseUpdated",
                    channel="email",
                    delivery_id=uuid.uuid4(),
                )
            ],
        )
        answer = asyncio.create_task(
            http.post(f"{p.url('followup')}/surveys/{token}", json={"score": 5, "solved": True})
        )

        async def waits_for_the_append() -> bool:  # the answer's append found it: same version
            return await rt.pool.fetchval(
                "SELECT count(*) > 0 FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )

        await eventually(waits_for_the_append, what="the answer to wait for the other append")
        await append.commit()
    r = await answer
    assert r.status_code == 201, r.text
    assert r.json() == {"status": "recorded", "reopen_requested": False}
    (check,) = (await http.get(checks_url, params={"complaint_id": cid})).json()["items"]
    assert check["status"] == "answered"
