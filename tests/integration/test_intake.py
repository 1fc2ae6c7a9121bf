"""Intake through HTTP and the real broker: channels, acknowledgement, alerts, idempotency."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from complaints_shared.envelope import Event, to_kafka_record
from complaints_shared.events import DomainEvent
from complaints_shared.events import resolution as rs
from complaints_shared.events.intake import ComplaintAcknowledged, ComplaintAlertRaised
from tests.integration.conftest import Platform, StartPlatform
from tests.support import eventually, resolve_case, topic_size

pytestmark = pytest.mark.integration

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seeds"  # excerpts of the seeds


def complaint(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "web",
        "customer": {
            "id": "c-1",
            "name": "Ana Souza",
            "email": "ana@example.org",
            "language": "en",
        },
        "subject": "Shelf price differs",
        "description": "The shelf said 2.99 but I paid 3.49 at the till.",
        "category": "pricing_error",
        "severity": "low",
    }
    for k, v in over.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


@pytest.fixture
async def intake(start_platform: StartPlatform) -> Platform:
    return await start_platform("intake")


async def intake_events(p: Platform, count: int) -> list:
    return await p.topic_events("complaints.intake.v2", count)


CONTACT = {
    "in_person": {},
    "web": {},
    "chat": {},
    "social": {},
    "phone": {"phone": "+351 912 345 678"},
    "email": {"email": "eva@example.hu"},
    "letter": {"postal_address": "Rua Augusta 10, 1100-053 Lisboa"},
}


@pytest.mark.parametrize("channel", list(CONTACT))
async def test_every_channel_is_recorded_and_acknowledged_on_it(intake, http, channel):
    body = complaint(
        channel=channel, customer={"name": "Eva", "language": "en", **CONTACT[channel]}
    )
    r = await http.post(f"{intake.url('intake')}/complaints", json=body)
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["channel"] == channel and c["reply_channel"] == channel
    assert c["acknowledgement"]["channel"] == channel
    assert c["reference"].startswith("CMP-") and c["status"] == "received"
    assert (await http.get(f"{intake.url('intake')}{r.headers['location']}")).json() == c


async def test_the_reply_goes_to_the_preferred_channel(intake, http):
    body = complaint(
        channel="phone",
        customer={
            "name": "Eva",
            "phone": "+36 30 123 4567",
            "email": "eva@example.hu",
            "preferred_channel": "email",
            "language": "hu",
        },
    )
    c = (await http.post(f"{intake.url('intake')}/complaints", json=body)).json()
    assert c["reply_channel"] == "email" and c["acknowledgement"]["channel"] == "email"
    assert "e-mailben" in c["acknowledgement"]["message"]["body"]


ACK_PHRASES = {
    "en": ("We have received your complaint", "Thank you", "We are sorry", "by e-mail"),
    "pt": ("Recebemos a sua reclamação", "Obrigado", "Pedimos desculpa", "por e-mail"),
    "es": ("Hemos recibido su reclamación", "Gracias", "Lamentamos", "por correo electrónico"),
    "hu": ("Megkaptuk panaszát", "Köszönjük", "Elnézést kérünk", "e-mailben"),
}


@pytest.mark.parametrize("language", list(ACK_PHRASES))
async def test_acknowledgement_follows_tactics_in_the_customers_language(intake, http, language):
    body = complaint(
        customer={
            "name": "Ana",
            "email": "ana@example.org",
            "preferred_channel": "email",
            "language": language,
        },
        severity="high",
    )
    c = (await http.post(f"{intake.url('intake')}/complaints", json=body)).json()
    ack = c["acknowledgement"]
    subject_phrase, thanks, sorry, channel_phrase = ACK_PHRASES[language]
    assert ack["language"] == language and not c["language_detected"]
    assert ack["message"]["subject"].startswith(subject_phrase)
    assert c["reference"] in ack["message"]["subject"]
    text = ack["message"]["body"]
    assert thanks in text and sorry in text and channel_phrase in text and c["reference"] in text
    assert "Ana" in text
    # by when: the high-severity first-response target in business time (built-in: 8 h)
    assert ack["first_response_due"] > c["received_at"]
    assert ack["first_response_due"][:4] in text  # the year of the due date is spelled out
    events = await intake_events(intake, 2)
    assert [e.type for e in events] == ["ComplaintReceived", "ComplaintAcknowledged"]
    assert isinstance(events[1].payload, ComplaintAcknowledged)
    assert events[1].payload.message.model_dump() == ack["message"]


@pytest.mark.parametrize(
    ("seed", "expected"),
    [("000", "pt"), ("001", "hu"), ("002", "pt"), ("003", "es"), ("004", "pt")],
)
async def test_language_is_detected_from_the_text(intake, http, seed, expected):
    path = SEEDS / f"{seed}.txt"
    text = " ".join(path.read_text(encoding="utf-8").split())
    body = complaint(
        customer={"name": "Ana", "email": "ana@example.org"},
        subject=text[:120],
        description=text[:4000],
    )
    c = (await http.post(f"{intake.url('intake')}/complaints", json=body)).json()
    assert c["language"] == expected and c["language_detected"] is True
    assert c["acknowledgement"]["language"] == expected


async def test_category_and_severity_are_suggested_and_marked(intake, http):
    r = await http.post(
        f"{intake.url('intake')}/complaints",
        json=complaint(
            category=None,
            severity=None,
            subject="Máquina avariada",
            description="A máquina de café chegou partida e não funciona.",
        ),
    )
    c = r.json()
    assert (c["category"], c["category_suggested"]) == ("product_defect", True)
    assert (c["severity"], c["severity_suggested"]) == ("medium", True)
    c = (
        await http.post(
            f"{intake.url('intake')}/complaints",
            json=complaint(
                category=None,
                severity=None,
                safety_incident=True,
                subject="Chão molhado",
                description="Escorreguei num chão molhado sem aviso.",
            ),
        )
    ).json()
    assert (c["severity"], c["severity_suggested"]) == ("critical", True)
    c = (await http.post(f"{intake.url('intake')}/complaints", json=complaint())).json()
    assert (c["category_suggested"], c["severity_suggested"]) == (False, False)


async def test_every_alert_reason(intake, http):
    url = f"{intake.url('intake')}/complaints"
    calm = (await http.post(url, json=complaint())).json()
    assert calm["alerts"] == []
    cases = {
        "critical_severity": complaint(severity="critical", customer={"id": "c-2", "name": "B"}),
        "safety_incident": complaint(safety_incident=True, customer={"id": "c-3", "name": "C"}),
        "public_post": complaint(
            public_post={
                "url": "https://social.example/p/1",
                "platform": "x",
                "audience_size": 12000,
            },
            customer={"id": "c-4", "name": "D"},
        ),
        "negative_wording": complaint(
            description="Péssimo serviço, uma vergonha! Nunca mais.",
            customer={"id": "c-5", "name": "E"},
        ),
    }
    for reason, body in cases.items():
        c = (await http.post(url, json=body)).json()
        assert reason in c["alerts"], (reason, c["alerts"])
    # the third complaint of one customer within the window (policy: 3 in P30D)
    for i in range(2):
        c = (
            await http.post(
                url,
                json=complaint(
                    subject=f"Another thing {i}",
                    description=f"Different matter number {i}",
                    customer={"id": "c-9", "name": "R"},
                ),
            )
        ).json()
        assert "repeat_complainant" not in c["alerts"]
    c = (
        await http.post(
            url,
            json=complaint(
                subject="Third", description="Yet another one", customer={"id": "c-9", "name": "R"}
            ),
        )
    ).json()
    assert "repeat_complainant" in c["alerts"]
    events = await intake_events(intake, 2 * 8 + 5)
    raised = [e for e in events if e.type == "ComplaintAlertRaised"]
    alerts = [e.payload for e in raised if isinstance(e.payload, ComplaintAlertRaised)]
    assert {r for a in alerts for r in a.reasons} == {
        "critical_severity",
        "safety_incident",
        "public_post",
        "negative_wording",
        "repeat_complainant",
    }
    assert next(a for a in alerts if "public_post" in a.reasons).details.audience_size == 12000


async def test_ten_parallel_retries_with_one_key_create_one_complaint(intake, http):
    url = f"{intake.url('intake')}/complaints"
    headers = {"Idempotency-Key": "retry-7f3a"}
    answers = await asyncio.gather(
        *(http.post(url, json=complaint(), headers=headers) for _ in range(10))
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["complaint_id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
    assert await intake.pool("intake").fetchval("SELECT count(*) FROM complaints") == 1
    assert await data_subjects(intake) == 1  # the nine answered from the key left none
    assert (
        await intake.pool("intake").fetchval(
            "SELECT count(*) FROM events WHERE type = 'ComplaintReceived'"
        )
        == 1
    )
    await asyncio.sleep(1)
    bootstrap = intake.servers["intake"].app.state.runtime.settings.kafka_bootstrap
    assert await topic_size(bootstrap, f"{intake.prefix}complaints.intake.v2") == 2
    reused = await http.post(url, json=complaint(subject="Other"), headers=headers)
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "header.Idempotency-Key"


async def test_a_probable_duplicate_is_accepted_and_marked(intake, http):
    url = f"{intake.url('intake')}/complaints"
    first = (await http.post(url, json=complaint())).json()
    again = (
        await http.post(
            url, json=complaint(description="The shelf said 2.99 but I paid 3.49 at the till!!")
        )
    ).json()
    other_customer = (
        await http.post(url, json=complaint(customer={"id": "c-77", "name": "Zé"}))
    ).json()
    different = (
        await http.post(
            url, json=complaint(subject="Rude cashier", description="The cashier shouted at me.")
        )
    ).json()
    assert again["possible_duplicate_of"] == first["complaint_id"] and again["status"] == "received"
    assert other_customer["possible_duplicate_of"] is None
    assert different["possible_duplicate_of"] is None


async def test_submissions_arriving_together_are_written_together_each_as_alone(intake, http):
    """Group commit: complaints submitted at once share transactions, and each is recorded
    as it would be alone: its own reference, row, events in order and timeline."""
    url = f"{intake.url('intake')}/complaints"
    bodies = [
        complaint(
            subject=f"Shelf price {i}",
            description=f"Aisle {i}: the shelf said 2.99 but I paid 3.49 at the till.",
            customer={"id": f"c-group-{i}", "name": f"Ana {i}", "language": "en"},
        )
        for i in range(24)
    ]
    answers = await asyncio.gather(*(http.post(url, json=b) for b in bodies))
    assert [a.status_code for a in answers] == [201] * 24, answers[0].text
    created = [a.json() for a in answers]
    assert len({c["reference"] for c in created}) == 24
    assert [c["subject"] for c in created] == [b["subject"] for b in bodies]
    pool = intake.pool("intake")
    # fewer transactions than complaints: some were written together
    assert await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM complaints") < 24
    for c in created:
        got = (await http.get(f"{url}/{c['complaint_id']}")).json()
        assert got == c
        timeline = (await http.get(f"{url}/{c['complaint_id']}/timeline")).json()
        assert [e["type"] for e in timeline["entries"]][:2] == [
            "ComplaintReceived",
            "ComplaintAcknowledged",
        ]
    queued = await pool.fetch(
        "SELECT e.stream_id, e.version FROM outbox o JOIN events e USING (event_id)"
        " ORDER BY o.position"
    )
    per_stream: dict[Any, list[int]] = {}
    for r in queued:
        per_stream.setdefault(r["stream_id"], []).append(r["version"])
    assert len(per_stream) == 24
    assert all(v == list(range(1, len(v) + 1)) for v in per_stream.values())


async def test_languages_of_submissions_arriving_together_are_each_their_own(intake, http):
    """A group identifies its texts' languages together: each submission still gets its own
    text's language, and one whose customer named a language keeps that one."""
    url = f"{intake.url('intake')}/complaints"
    seeds = [("000", "pt"), ("001", "hu"), ("003", "es")]
    bodies, expected = [], []
    for i in range(18):
        seed, language = seeds[i % 3]
        text = " ".join((SEEDS / f"{seed}.txt").read_text(encoding="utf-8").split())
        named = i % 2 == 1
        customer = {"id": f"c-lang-{i}", "name": f"Ana {i}"} | ({"language": "en"} if named else {})
        bodies.append(complaint(customer=customer, subject=text[:120], description=text[:4000]))
        expected.append(("en", False) if named else (language, True))
    answers = await asyncio.gather(*(http.post(url, json=b) for b in bodies))
    assert [a.status_code for a in answers] == [201] * 18, answers[0].text
    got = [(a.json()["language"], a.json()["language_detected"]) for a in answers]
    assert got == expected
    ids = [uuid.UUID(a.json()["complaint_id"]) for a in answers]
    transactions = await intake.pool("intake").fetchval(
        "SELECT count(DISTINCT xmin::text) FROM complaints WHERE id = ANY($1::uuid[])", ids
    )
    assert transactions < 18  # some were written (and their languages read) together


async def test_one_customers_submissions_at_once_see_each_other(intake, http):
    """Two submissions of one customer at the same moment: the second is decided on a
    history that holds the first, as if it had come later (a probable duplicate)."""
    url = f"{intake.url('intake')}/complaints"
    first, second = await asyncio.gather(
        http.post(url, json=complaint()),
        http.post(url, json=complaint(description="The shelf said 2.99, I paid 3.49 at the till")),
    )
    assert (first.status_code, second.status_code) == (201, 201)
    a, b = first.json(), second.json()
    marks = (a["possible_duplicate_of"], b["possible_duplicate_of"])
    assert marks in [(None, a["complaint_id"]), (b["complaint_id"], None)]


async def test_submissions_not_written_leave_no_data_subject(intake, http):
    """Arriving together: a group's data subjects are registered while its transaction reads;
    those refused by the rules, or answered from their Idempotency-Key, are forgotten again."""
    url = f"{intake.url('intake')}/complaints"
    bodies = [
        complaint(
            category="weather" if i % 4 == 0 else None,
            customer={"id": f"c-mixed-{i}", "name": f"Ana {i}", "language": "pt"},
        )
        for i in range(12)
    ]
    keyed = complaint(customer={"id": "c-mixed-key", "name": "Rita", "language": "pt"})
    answers = await asyncio.gather(
        *(http.post(url, json=b) for b in bodies),
        *(http.post(url, json=keyed, headers={"Idempotency-Key": "mixed-1"}) for _ in range(4)),
    )
    assert [a.status_code for a in answers[:12]] == [422 if i % 4 == 0 else 201 for i in range(12)]
    assert {a.status_code for a in answers[12:]} == {201}
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers[12:]) == 3
    assert await intake.pool("intake").fetchval("SELECT count(*) FROM complaints") == 10
    assert await data_subjects(intake) == 10


async def test_a_submission_the_database_refuses_fails_alone(intake, http):
    """One submission of a group fails in the database: it is answered its error and
    leaves nothing behind, not even a data subject in the keyring; the others are recorded,
    each customer's data naming their one complaint (the group's failed attempt names none)."""
    pool = intake.pool("intake")
    await pool.execute(
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.subject = 'poison' THEN
                RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON complaints
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """
    )
    url = f"{intake.url('intake')}/complaints"
    bodies = [
        complaint(
            subject="poison" if i == 7 else f"Fine {i}",
            customer={"id": f"c-iso-{i}", "name": f"Rui {i}", "language": "en"},
        )
        for i in range(16)
    ]
    answers = await asyncio.gather(*(http.post(url, json=b) for b in bodies))
    assert answers[7].status_code == 500
    assert answers[7].headers["content-type"].startswith("application/problem+json")
    assert "refused" not in answers[7].text  # the database's message is not told
    assert [a.status_code for i, a in enumerate(answers) if i != 7] == [201] * 15
    assert await pool.fetchval("SELECT count(*) FROM complaints") == 15
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'ComplaintReceived'") == 15
    assert await pool.fetchval("SELECT count(*) FROM outbox") == await pool.fetchval(
        "SELECT count(*) FROM events"
    )
    for a in answers[:7] + answers[8:]:
        c = a.json()
        export = await http.get(
            f"{intake.url('intake')}/customers/{c['customer_key']}/data?scope=service"
        )
        assert export.json()["complaint_ids"] == [c["complaint_id"]]
    assert await data_subjects(intake) == 15  # the refused one's is gone too


async def test_a_submission_not_written_is_answered_once_its_data_subject_is_forgotten(
    intake, http, monkeypatch
):
    """A submission's data subject is registered with its group's before the rules or the
    database have decided; one that is not written is answered only once the keyring has
    forgotten that subject again, so that nothing its client does next (a data export, an
    erasure, or a test's count) finds a complaint that does not exist.  The keyring answers
    slowly here, as one under load does."""
    keyring = intake.servers["intake"].app.state.runtime.keyring
    forget = keyring.forget

    async def slow_forget(stream_ids: Any) -> None:
        await asyncio.sleep(0.3)
        await forget(stream_ids)

    monkeypatch.setattr(keyring, "forget", slow_forget)
    url = f"{intake.url('intake')}/complaints"
    refused = await http.post(url, json=complaint(category="weather"))  # by the rules
    assert refused.status_code == 422, refused.text
    assert await data_subjects(intake) == 0
    await intake.pool("intake").execute(
        """
        CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END $$;
        CREATE TRIGGER refuse_all BEFORE INSERT ON complaints
            FOR EACH ROW EXECUTE FUNCTION refuse_all();
        """
    )
    failed = await http.post(url, json=complaint())  # by the database, alone
    assert failed.status_code == 500, failed.text
    assert await data_subjects(intake) == 0


async def data_subjects(intake: Any) -> int:
    """The data subjects intake's keyring holds."""
    keyring = await asyncpg.connect(intake.keyring["keyring_url"])
    try:
        return int(await keyring.fetchval("SELECT count(*) FROM data_subjects"))
    finally:
        await keyring.close()


async def test_details_and_withdrawal(intake, http):
    base = intake.url("intake")
    created = await http.post(f"{base}/complaints", json=complaint())
    c, c_etag = created.json(), created.headers["etag"]
    assert c_etag == f'"{c["version"]}"'
    assert created.headers["location"] == f"/complaints/{c['complaint_id']}"
    r = await http.post(
        f"{base}/complaints/{c['complaint_id']}/details",
        json={
            "note": "Receipt photo attached",
            "answers": [{"question": "Which store?", "answer": "Baixa"}],
            "attachments": [{"ref": "https://files.example/r/1.jpg", "media_type": "image/jpeg"}],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["details"][0]["answers"][0]["answer"] == "Baixa"
    assert r.json()["allowed_commands"] == ["add_details", "withdraw"]
    stale = await http.post(
        f"{base}/complaints/{c['complaint_id']}/withdraw", json={}, headers={"If-Match": c_etag}
    )
    assert stale.status_code == 409 and stale.json()["current_version"] == r.json()["version"]
    r = await http.post(
        f"{base}/complaints/{c['complaint_id']}/withdraw",
        json={"reason": "sorted"},
        headers={"If-Match": r.headers["etag"]},
    )
    assert r.status_code == 200 and r.json()["status"] == "withdrawn"
    assert r.json()["allowed_commands"] == []
    for path, body in (("withdraw", {}), ("details", {"note": "late"})):
        again = await http.post(f"{base}/complaints/{c['complaint_id']}/{path}", json=body)
        assert again.status_code == 409
        assert again.json()["state"] == "withdrawn" and again.json()["allowed_commands"] == []
    events = await intake_events(intake, 4)
    assert [e.type for e in events][2:] == ["ComplaintDetailsAdded", "ComplaintWithdrawn"]
    # a withdrawal without a reason needs no body at all
    other = (await http.post(f"{base}/complaints", json=complaint())).json()
    bare = await http.post(f"{base}/complaints/{other['complaint_id']}/withdraw")
    assert bare.status_code == 200, bare.text
    assert bare.json()["status"] == "withdrawn"


async def test_list_filters_and_stable_pagination(intake, http):
    url = f"{intake.url('intake')}/complaints"
    made = []
    for i, (channel, category, severity) in enumerate(
        [
            ("web", "pricing_error", "low"),
            ("phone", "cleanliness", "high"),
            ("web", "cleanliness", "medium"),
            ("chat", "delivery", "low"),
            ("web", "billing", "critical"),
            ("social", "cleanliness", "low"),
            ("in_person", "waiting_time", "medium"),
        ]
    ):
        contact = {"phone": "+351 900 000 000"} if channel == "phone" else {}
        made.append(
            (
                await http.post(
                    url,
                    json=complaint(
                        channel=channel,
                        category=category,
                        severity=severity,
                        subject=f"Complaint number {i}",
                        description=f"Distinct description {i} " * 3,
                        customer={"id": f"cust-{i % 3}", "name": "N", **contact},
                    ),
                )
            ).json()
        )

    async def ids(**params: Any) -> list[str]:
        r = await http.get(url, params=params)
        assert r.status_code == 200, r.text
        return [c["complaint_id"] for c in r.json()["items"]]

    assert await ids(category="cleanliness") == [
        made[5]["complaint_id"],
        made[2]["complaint_id"],
        made[1]["complaint_id"],
    ]
    assert await ids(severity="low", channel="web") == [made[0]["complaint_id"]]
    assert await ids(customer="cust-1") == [made[4]["complaint_id"], made[1]["complaint_id"]]
    assert await ids(received_from=made[6]["received_at"]) == [made[6]["complaint_id"]]
    assert await ids(received_to=made[1]["received_at"]) == [made[0]["complaint_id"]]
    await http.post(f"{url}/{made[3]['complaint_id']}/withdraw", json={})
    assert await ids(status="withdrawn") == [made[3]["complaint_id"]]

    seen: list[str] = []
    page = (await http.get(url, params={"limit": 3})).json()
    while True:
        seen += [c["complaint_id"] for c in page["items"]]
        # complaints arriving meanwhile must not shift the pages
        await http.post(url, json=complaint(subject="meanwhile", customer={"id": "x", "name": "X"}))
        if not page["next_cursor"]:
            break
        page = (await http.get(url, params={"limit": 3, "cursor": page["next_cursor"]})).json()
    assert seen == [c["complaint_id"] for c in reversed(made)]


async def test_timeline_holds_events_of_all_services_in_order(start_platform, http):
    p = await start_platform()
    c = (await http.post(f"{p.url('intake')}/complaints", json=complaint())).json()
    await eventually(
        lambda: _ok(http, f"{p.url('resolution')}/cases/{c['complaint_id']}"), what="the case"
    )
    await resolve_case(http, p.url("resolution"), c["complaint_id"])

    async def timeline() -> list | None:
        r = await http.get(f"{p.url('intake')}/complaints/{c['complaint_id']}/timeline")
        # without a mail server or gateway the messages cannot go out: FollowupParked says so
        entries = [e for e in r.json()["entries"] if e["type"] != "FollowupParked"]
        return entries if len(entries) >= 9 else None

    entries = await eventually(timeline, what="nine timeline entries")
    assert [(e["service"], e["type"]) for e in entries] == [
        ("intake", "ComplaintReceived"),
        ("intake", "ComplaintAcknowledged"),
        ("resolution", "CaseOpened"),
        ("resolution", "CaseAssigned"),
        ("resolution", "CauseIdentified"),
        ("resolution", "SolutionProposed"),
        ("resolution", "SolutionAgreed"),
        ("resolution", "CaseResolved"),
        ("followup", "SatisfactionCheckScheduled"),
    ]
    assert [e["occurred_at"] for e in entries] == sorted(e["occurred_at"] for e in entries)
    assert entries[3]["summary"] == "Case assigned to Rita Lopes"
    assert entries[7]["summary"] == "Case resolved: Refunded the difference"
    assert entries[0]["summary"].startswith(f"Complaint {c['reference']} received via web")
    # the list view shows where each complaint is, without a call per row
    one = await http.get(f"{p.url('intake')}/complaints/{c['complaint_id']}")
    assert one.json()["status"] == "resolved"
    assert one.headers["etag"] == f'"{one.json()["version"]}"'
    listed = await http.get(f"{p.url('intake')}/complaints", params={"status": "resolved"})
    assert [x["complaint_id"] for x in listed.json()["items"]] == [c["complaint_id"]]


def _case_event(complaint_id: uuid.UUID, version: int, payload: DomainEvent) -> Event[Any]:
    """One of resolution's events about ``complaint_id``, as resolution would publish it."""
    return Event(
        event_id=uuid.uuid4(),
        stream_id=complaint_id,
        version=version,
        occurred_at=datetime.now(UTC),
        source="/complaints/resolution",
        payload=payload,
    )


def _opened(complaint_id: uuid.UUID) -> rs.CaseOpened:
    return rs.CaseOpened(
        complaint_id=complaint_id,
        reference="CMP-1",
        severity="low",
        category="pricing_error",
        language="en",
        reply_channel="web",
        received_at=datetime.now(UTC),
    )


def _assigned(to: str) -> rs.CaseAssigned:
    return rs.CaseAssigned(
        owner=rs.Owner(id=to, name=to.title(), contact=f"{to}@example.com"), assigned_by="lead"
    )


async def _publish_case_events(platform: Platform, events: list[Event[Any]]) -> None:
    """``events`` on resolution's topic, sent together (one fetch brings them all)."""
    runtime = platform.servers["intake"].app.state.runtime
    producer = AIOKafkaProducer(
        bootstrap_servers=runtime.settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for e in events:
            record = to_kafka_record(e)
            await producer.send(
                runtime.topics.resolution, record.value, key=record.key, headers=record.headers
            )
        await producer.flush()
    finally:
        await producer.stop()


async def test_case_events_read_together_leave_each_complaint_at_its_last_status(intake, http):
    """Resolution's events of several complaints, published together so that intake reads them
    in one batch: each complaint intake knows gets every entry and ends at its last event's
    status, a withdrawn one stays withdrawn, and one intake does not know gets nothing."""
    base = intake.url("intake")
    known = (await http.post(f"{base}/complaints", json=complaint())).json()
    created = await http.post(
        f"{base}/complaints", json=complaint(customer={"id": "c-2", "name": "Rui"})
    )
    withdrawn = created.json()
    r = await http.post(
        f"{base}/complaints/{withdrawn['complaint_id']}/withdraw",
        json={},
        headers={"If-Match": created.headers["etag"]},
    )
    assert r.json()["status"] == "withdrawn"
    unknown = uuid.uuid4()

    a, w = uuid.UUID(known["complaint_id"]), uuid.UUID(withdrawn["complaint_id"])
    events = [
        _case_event(unknown, 1, _opened(unknown)),
        _case_event(a, 1, _opened(a)),
        _case_event(a, 2, rs.CaseClosed(complaint_id=a, reason="duplicate", closed_by="a7")),
        _case_event(w, 1, _opened(w)),
    ]
    await _publish_case_events(intake, events)

    async def entries_with(complaint_id: uuid.UUID, event_type: str) -> list[str] | None:
        r = await http.get(f"{base}/complaints/{complaint_id}/timeline")
        found = [e["type"] for e in r.json()["entries"]]
        return found if event_type in found else None

    assert await eventually(lambda: entries_with(a, "CaseClosed"), what="CaseClosed") == [
        "ComplaintReceived",
        "ComplaintAcknowledged",
        "CaseOpened",
        "CaseClosed",
    ]
    await eventually(lambda: entries_with(w, "CaseOpened"), what="the withdrawn one's CaseOpened")
    assert (await http.get(f"{base}/complaints/{a}")).json()["status"] == "closed"
    assert (await http.get(f"{base}/complaints/{w}")).json()["status"] == "withdrawn"
    pool = intake.pool("intake")
    for table, column in (("timeline", "complaint_id"), ("complaints", "id")):
        sql = f"SELECT count(*) FROM {table} WHERE {column} = $1"
        assert await pool.fetchval(sql, unknown) == 0


async def test_a_case_event_that_keeps_the_status_leaves_the_complaint_row_alone(intake, http):
    """Most of a case's events keep the complaint where it is (every step of the work is "in
    progress"): they add their timeline entry and do not write the complaint's row again (a
    wide row with six indexes: each rewrite copies it and adds an entry to every index)."""
    base = intake.url("intake")
    c = uuid.UUID((await http.post(f"{base}/complaints", json=complaint())).json()["complaint_id"])
    pool = intake.pool("intake")

    async def row_after(event_type: str, count: int) -> tuple[str, str]:
        async def seen() -> bool:
            r = await http.get(f"{base}/complaints/{c}/timeline")
            return [e["type"] for e in r.json()["entries"]].count(event_type) == count

        await eventually(seen, what=f"{count} {event_type} in the timeline")
        row = await pool.fetchrow(
            "SELECT status, xmin::text AS written FROM complaints WHERE id = $1", c
        )
        return row["status"], row["written"]

    await _publish_case_events(
        intake, [_case_event(c, 1, _opened(c)), _case_event(c, 2, _assigned("rita"))]
    )
    status, written = await row_after("CaseAssigned", 1)
    assert status == "in_progress"
    await _publish_case_events(intake, [_case_event(c, 3, _assigned("rui"))])  # reassigned
    assert await row_after("CaseAssigned", 2) == ("in_progress", written)
    await _publish_case_events(
        intake,
        [_case_event(c, 4, rs.CaseClosed(complaint_id=c, reason="duplicate", closed_by="a7"))],
    )
    status, rewritten = await row_after("CaseClosed", 1)
    assert (status, rewritten != written) == ("closed", True)


async def _ok(http: httpx.AsyncClient, url: str) -> bool:
    return (await http.get(url)).status_code == 200


async def test_bad_input_is_refused_and_changes_nothing(intake, http):
    url = f"{intake.url('intake')}/complaints"

    async def refused(body: Any, status: int = 422, **kw: Any) -> dict:
        r = (
            await http.post(url, json=body, **kw)
            if "content" not in kw
            else await http.post(url, **kw)
        )
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        return r.json()

    def fields(problem: dict) -> set[str]:
        return {e["field"] for e in problem["errors"]}

    assert "body.channel" in fields(await refused(complaint(channel=None)))
    assert "body.channel" in fields(await refused(complaint(channel="pigeon")))
    assert "body.customer.email" in fields(
        await refused(complaint(customer={"name": "A", "email": "nope"}))
    )
    assert "body.customer" in fields(await refused(complaint(customer={"language": "en"})))
    assert "body.description" in fields(await refused(complaint(description="x" * 5001)))
    assert "body.subject" in fields(await refused(complaint(subject="   ")))
    assert "body.severity" in fields(await refused(complaint(severity="apocalyptic")))
    assert "body.public_post.url" in fields(
        await refused(complaint(public_post={"url": "not a url"}))
    )
    assert "body.surprise" in fields(await refused(complaint(surprise=1)))
    many = [{"ref": f"att-{i}"} for i in range(11)]
    assert fields(await refused(complaint(attachments=many))) == {"body.attachments"}
    unknown = await refused(complaint(category="weather"))
    assert unknown["errors"][0]["field"] == "body.category"
    assert "cleanliness" in unknown["errors"][0]["allowed"]
    assert fields(
        await refused(complaint(customer={"name": "A", "preferred_channel": "email"}))
    ) == {"body.customer.email"}
    await refused(None, content=b'{"channel": "web",', headers={"content-type": "application/json"})
    too_big = await refused(
        None,
        413,
        content=b"{" + b" " * 300_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert too_big["status"] == 413

    async def chunks():  # no Content-Length: Transfer-Encoding: chunked
        for _ in range(40):
            yield b" " * 10_000

    chunked = await refused(
        None, 413, content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked["type"].endswith(":body-too-large"), chunked
    unreadable = await refused(
        None, 400, content=b"\x39\x15\xff\x78", headers={"content-type": "application/json"}
    )
    assert unreadable["type"].endswith(":malformed-body"), unreadable
    # text PostgreSQL cannot store: a NUL character, an unpaired surrogate
    assert fields(await refused(complaint(description="broken \u0000 here"))) == {"body"}
    surrogate = json.dumps(complaint(subject="half \ud800 a pair")).encode()  # as \ud800
    assert fields(
        await refused(None, content=surrogate, headers={"content-type": "application/json"})
    ) == {"body"}
    nul_query = await http.get(url, params={"channel": "web\x00"})
    assert nul_query.status_code == 422, nul_query.text
    bad_cursor = await http.get(url, params={"cursor": "garbage!"})
    assert bad_cursor.status_code == 422
    missing = "00000000-0000-0000-0000-000000000000"
    for method, path, body in (
        ("GET", missing, None),
        ("GET", f"{missing}/timeline", None),
        ("POST", f"{missing}/withdraw", {}),
        ("POST", f"{missing}/details", {"note": "x"}),
    ):
        r = await http.request(method, f"{url}/{path}", json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"

    pool = intake.pool("intake")
    assert await pool.fetchval("SELECT count(*) FROM events") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await pool.fetchval("SELECT count(*) FROM complaints") == 0
    assert await data_subjects(intake) == 0  # nor a data subject in the keyring
    bootstrap = intake.servers["intake"].app.state.runtime.settings.kafka_bootstrap
    assert await topic_size(bootstrap, f"{intake.prefix}complaints.intake.v2") == 0


async def test_withdrawal_closes_the_case_and_stops_the_survey(start_platform, http):
    p = await start_platform()
    intake, resolution, followup = (p.url(s) for s in ("intake", "resolution", "followup"))
    # withdrawn before resolution: the case closes, resolving it is refused
    early = (await http.post(f"{intake}/complaints", json=complaint())).json()
    await eventually(
        lambda: _ok(http, f"{resolution}/cases/{early['complaint_id']}"), what="the case"
    )
    await http.post(
        f"{intake}/complaints/{early['complaint_id']}/withdraw", json={"reason": "solved"}
    )

    async def state(cid: str) -> str | None:
        r = await http.get(f"{resolution}/cases/{cid}")
        return r.json()["state"] if r.json()["state"] == "closed" else None

    await eventually(lambda: state(early["complaint_id"]), what="the case to close")
    r = await http.post(
        f"{resolution}/cases/{early['complaint_id']}/resolve", json={"summary": "x"}
    )
    assert r.status_code == 409 and r.json()["state"] == "closed"

    # withdrawn after resolution: the scheduled satisfaction check is cancelled
    late = (
        await http.post(
            f"{intake}/complaints",
            json=complaint(customer={"id": "c-8", "name": "L", "email": "l@example.org"}),
        )
    ).json()
    await eventually(
        lambda: _ok(http, f"{resolution}/cases/{late['complaint_id']}"), what="the case"
    )
    await resolve_case(http, resolution, late["complaint_id"])

    async def check_status() -> str | None:
        r = await http.get(
            f"{followup}/satisfaction-checks", params={"complaint_id": late["complaint_id"]}
        )
        items = r.json()["items"]
        return items[0]["status"] if items else None

    assert await eventually(check_status, what="the check") == "scheduled"
    await http.post(f"{intake}/complaints/{late['complaint_id']}/withdraw", json={})

    async def cancelled() -> bool:
        return await check_status() == "cancelled"

    await eventually(cancelled, what="the check to be cancelled")
    # and the early one never got a check at all
    r = await http.get(
        f"{followup}/satisfaction-checks", params={"complaint_id": early["complaint_id"]}
    )
    assert r.json()["items"] == []
