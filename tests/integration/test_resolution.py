"""Resolution on the real broker and database: lifecycle, SLA timers, concurrency, authority."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from complaints_resolution.commands import AssignCase, By, Owner, assign
from complaints_resolution.domain import fold
from complaints_resolution.projection import load_case, save
from complaints_resolution.sla import deadlines
from complaints_resolution.worker import fire_due
from complaints_shared.envelope import Event, decode_headers, to_kafka_record
from complaints_shared.events import resolution as rs
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.service import create_app
from complaints_shared.settings import ServiceSettings
from complaints_shared.telemetry import setup_telemetry
from tests.integration.conftest import SPECS, Platform, StartPlatform
from tests.support import (
    AGENT,
    ManualClock,
    RunningServer,
    await_case,
    drive_to_agreed,
    eventually,
    read_topic,
    resolve_case,
    serve,
)

pytestmark = pytest.mark.integration

MONDAY_9 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def fast_timers(tmp_path: Path) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text('[resolution]\ntimer_poll = "PT0.05S"\nmanager_after = "PT4H"\n')
    return p


async def new_case(p: Platform, http: httpx.AsyncClient, **over: Any) -> str:
    body = {
        "channel": "email",
        "subject": "Cobro duplicado",
        "description": "Me han cobrado dos veces la misma factura.",
        "customer": {"name": "Lucía", "email": "lucia@example.es", "language": "es"},
        "category": "billing",
        "severity": "high",
        **over,
    }
    r = await http.post(f"{p.url('intake')}/complaints", json=body)
    assert r.status_code == 201, r.text
    cid = r.json()["complaint_id"]

    await await_case(http, p.url("resolution"), cid)
    return cid


async def resolution_events(p: Platform, cid: str, count: int) -> list[Event]:
    events = await p.topic_events("complaints.resolution.v2", count)
    return [e for e in events if str(e.stream_id) == cid]


async def test_intake_and_resolution_agree_on_the_first_response_deadline(
    start_platform: StartPlatform, http, tmp_path: Path
):
    """The acknowledgement promises the customer a time; the SLA clock counts to the same one
    (24/7 and the real clock: every millisecond between two computations would show)."""
    policy = tmp_path / "policy.toml"
    policy.write_text("[calendar]\nalways_open = true\n")
    p = await start_platform("intake", "resolution", policy=policy)
    cid = await new_case(p, http)
    complaint = (await http.get(f"{p.url('intake')}/complaints/{cid}")).json()
    case = (await http.get(f"{p.url('resolution')}/cases/{cid}")).json()
    promised = datetime.fromisoformat(complaint["acknowledgement"]["first_response_due"])
    counted = datetime.fromisoformat(case["sla"]["first_response"]["due_at"])
    assert promised == counted


async def test_cases_of_a_backlog_open_together_each_in_its_complaints_trace(
    start_platform: StartPlatform, http
):
    """Complaints received while resolution was down: their cases are opened together (one
    write, so one moment) when it comes up, each case once, with its worklist row, and each
    CaseOpened continues the trace of its own complaint's request."""
    received = 12
    intake = await start_platform("intake")
    cids = []
    for i in range(received):
        r = await http.post(
            f"{intake.url('intake')}/complaints",
            json={
                "channel": "email",
                "subject": f"Cobro duplicado {i}",
                "description": "Me han cobrado dos veces la misma factura.",
                "customer": {"name": "Lucía", "email": f"lucia{i}@example.es", "language": "es"},
                "category": "billing",
                "severity": "high",
            },
        )
        assert r.status_code == 201, r.text
        cids.append(r.json()["complaint_id"])
    bootstrap = intake.servers["intake"].app.state.runtime.settings.kafka_bootstrap
    on_intake = await read_topic(
        bootstrap, f"{intake.prefix}complaints.intake.v2", count=2 * received
    )
    trace_of = {
        h["ce_subject"]: h["traceparent"].split("-")[1]
        for h in map(decode_headers, (r.headers for r in on_intake))
        if h["ce_type"].endswith(".ComplaintReceived")
    }
    assert len(set(trace_of.values())) == received  # a trace of its own for each

    p = await start_platform("resolution", **intake.keyring)
    for cid in cids:
        await await_case(http, p.url("resolution"), cid)
    opened = await read_topic(bootstrap, f"{p.prefix}complaints.resolution.v2", count=received)
    headers = [decode_headers(r.headers) for r in opened]
    assert sorted(h["ce_subject"] for h in headers) == sorted(cids)  # each case once
    assert {h["ce_type"] for h in headers} == {"complaints.resolution.CaseOpened"}
    for h in headers:
        assert h["traceparent"].split("-")[1] == trace_of[h["ce_subject"]]
    # opened together: the cases of a batch were written at one moment, not one by one
    assert len({h["ce_time"] for h in headers}) < received
    worklist = (await http.get(f"{p.url('resolution')}/cases", params={"limit": 50})).json()
    assert sorted(c["complaint_id"] for c in worklist["items"]) == sorted(cids)
    assert all(c["next_deadline_at"] and c["version"] == 1 for c in worklist["items"])
    timers = await p.pool("resolution").fetchval("SELECT count(DISTINCT complaint_id) FROM timers")
    assert timers == received


async def test_a_whole_lifecycle_keeps_the_customer_informed_in_their_language(
    start_platform: StartPlatform, http, tokens
):
    p = await start_platform("intake", "resolution")
    cid = await new_case(p, http)
    base = f"{p.url('resolution')}/cases/{cid}"
    r = await http.post(
        f"{base}/clarification-requests",
        json={"questions": ["¿Fecha del cargo?"]},
    )
    assert r.status_code == 409 and r.json()["allowed_commands"] == ["assign", "classify"]
    await http.post(f"{base}/assign", json={"owner": AGENT})
    r = await http.post(
        f"{base}/clarification-requests",
        json={"questions": ["¿Fecha del cargo?"]},
    )
    assert r.json()["state"] == "awaiting_customer"
    assert r.json()["sla"]["resolution"]["paused"] is True
    # the customer answers through intake: the clarification is received, the clock resumes
    await http.post(
        f"{p.url('intake')}/complaints/{cid}/details",
        json={"note": "El 3 de noviembre"},
        headers=await tokens.headers("channel-gateway"),  # the customer, through a channel
    )

    async def investigating() -> dict | None:
        case = (await http.get(base)).json()
        return case if case["state"] == "investigating" else None

    case = await eventually(investigating, what="the clarification to arrive")
    assert case["sla"]["resolution"]["paused"] is False
    case = await drive_to_agreed(http, p.url("resolution"), cid)
    r = await http.post(
        f"{base}/actions",
        json={
            "description": "Devolver el cargo duplicado",
            "owner": "finance",
            "due_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
        },
    )
    # a created item: 201, the item with its id, its Location, and the case's new ETag
    assert r.status_code == 201, r.text
    action = r.json()["action_id"]
    assert r.headers["location"] == f"/cases/{cid}/actions/{action}"
    case_version = (await http.get(base)).json()["version"]
    assert r.headers["etag"] == f'"{case_version}"'
    assert (await http.get(f"{p.url('resolution')}{r.headers['location']}")).json() == r.json()
    blocked = await http.post(f"{base}/resolve", json={"summary": "x"})
    assert blocked.status_code == 409
    refused = blocked.json()
    assert refused["command"] == "resolve" and "resolve" not in refused["allowed_commands"]
    assert action in refused["detail"]
    await http.post(f"{base}/actions/{action}/complete", json={"outcome": "refunded"})
    r = await http.post(f"{base}/resolve", json={"summary": "Hemos devuelto el cargo"})
    assert r.status_code == 200 and r.json()["state"] == "resolved"
    assert r.json()["sla"]["resolution"]["met_at"] is not None

    events = await resolution_events(p, cid, 11)  # the helper reassigns: two CaseAssigned
    visible = {
        e.type: e.payload.customer_message.model_dump(mode="json")
        for e in events
        if isinstance(e.payload, rs.CustomerVisible) and e.payload.customer_message
    }
    assert set(visible) == {
        "CaseAssigned",
        "ClarificationRequested",
        "SolutionProposed",
        "SolutionAgreed",
        "CaseResolved",
    }
    assert all(m["language"] == "es" and m["channel"] == "email" for m in visible.values())
    assert "Rita Lopes" in visible["CaseAssigned"]["body"]
    assert AGENT["contact"] in visible["CaseAssigned"]["body"]
    assert "¿Fecha del cargo?" in visible["ClarificationRequested"]["body"]
    assert "0,50" in visible["SolutionProposed"]["body"]  # money in the customer's locale
    assert "refund visible on the card statement" in visible["SolutionAgreed"]["body"]
    assert "2099" in visible["SolutionAgreed"]["body"]
    assert "Hemos devuelto el cargo" in visible["CaseResolved"]["body"]
    assert [e.type for e in events].count("ClarificationReceived") == 1


async def test_two_agents_at_once_one_gets_409_and_the_stream_stays_whole(
    start_platform: StartPlatform, http
):
    p = await start_platform("intake", "resolution")
    cid = await new_case(p, http)
    base = f"{p.url('resolution')}/cases/{cid}"
    seen = await http.get(base)
    etag = seen.headers["etag"]
    assert etag == f'"{seen.json()["version"]}"'
    owners = [{**AGENT, "id": f"agent-{i}", "name": f"Agent {i}"} for i in range(2)]
    answers = await asyncio.gather(
        *(
            http.post(f"{base}/assign", json={"owner": o}, headers={"If-Match": etag})
            for o in owners
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    loser = next(a for a in answers if a.status_code == 409)
    winner = next(a for a in answers if a.status_code == 200)
    assert loser.headers["content-type"] == "application/problem+json"
    assert loser.json()["current_version"] == winner.json()["version"]
    assert winner.headers["etag"] == f'"{winner.json()["version"]}"'
    garbled = await http.post(
        f"{base}/assign", json={"owner": owners[0]}, headers={"If-Match": "yesterday"}
    )
    assert garbled.status_code == 422
    assert garbled.json()["errors"][0]["field"] == "header.If-Match"
    # without If-Match, racing writers never corrupt the stream: each append is whole
    answers = await asyncio.gather(
        *(http.post(f"{base}/assign", json={"owner": owners[i % 2]}) for i in range(10))
    )
    assert {a.status_code for a in answers} <= {200, 409}
    case = (await http.get(base)).json()
    assert [h["version"] for h in case["history"]] == list(range(1, case["version"] + 1))
    assert len(case["owner_history"]) == 1 + sum(a.status_code == 200 for a in answers)


async def test_compensation_limits_and_self_approval(start_platform: StartPlatform, http, tokens):
    p = await start_platform("intake", "resolution")
    cid = await new_case(p, http)
    base = f"{p.url('resolution')}/cases/{cid}"
    await drive_to_agreed(http, p.url("resolution"), cid)

    async def ask(amount: str, who: str) -> dict:
        r = await http.post(
            f"{base}/compensation-requests",
            json={"amount": amount, "currency": "EUR", "reason": "trouble"},
            headers=await tokens.headers(who),
        )
        assert r.status_code == 201, r.text
        request = r.json()
        assert (
            r.headers["location"] == f"/cases/{cid}/compensation-requests/{request['request_id']}"
        )
        return request

    async def decide(url: str, who: str, body: dict | None = None) -> httpx.Response:
        return await http.post(url, json=body or {}, headers=await tokens.headers(who))

    small = await ask("25", "agent")
    assert small["status"] == "approved" and small["amount"] == "25.00"  # normalised
    pending = await ask("200.00", "supervisor")  # a supervisor asks: somebody else decides
    assert pending["status"] == "pending"
    url = f"{base}/compensation-requests/{pending['request_id']}"
    own = await decide(f"{url}/approve", "supervisor")
    assert own.status_code == 403 and "own" in own.json()["detail"]
    agent = await decide(f"{url}/approve", "agent")  # the role in the token decides, not a body
    assert agent.status_code == 403 and "supervisor" in agent.json()["detail"]
    forged = await decide(f"{url}/approve", "agent", {"decided_by": "boss", "role": "manager"})
    assert forged.status_code == 403  # a body cannot make an agent a manager
    ok = await decide(f"{url}/approve", "manager")
    assert ok.status_code == 200 and ok.json()["compensation"][-1]["status"] == "approved"
    twice = await decide(f"{url}/decline", "manager")
    assert twice.status_code == 409
    huge = await ask("900.00", "agent")
    over = await decide(f"{base}/compensation-requests/{huge['request_id']}/approve", "supervisor")
    assert over.status_code == 403 and "manager" in over.json()["detail"]
    bad = await http.post(
        f"{base}/compensation-requests",
        json={"amount": "-3", "currency": "EUR", "reason": "x"},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.amount"
    cents = await http.post(
        f"{base}/compensation-requests",
        json={"amount": "3.005", "currency": "EUR", "reason": "x"},
    )
    assert cents.status_code == 422  # finer than a cent


async def test_breach_escalates_through_durable_timers_also_after_a_restart(
    start_platform: StartPlatform, http, fast_timers, infrastructure, new_database, topic_prefix
):
    clock = ManualClock(MONDAY_9)
    p = await start_platform("intake", policy=fast_timers, clock=clock)
    # resolution runs on a database of its own that outlives its first process
    dsn = await new_database()
    settings = ServiceSettings(
        kafka_bootstrap=infrastructure.kafka_bootstrap,
        oidc_issuer=infrastructure.oidc_issuer,
        database_url=dsn,
        topic_prefix=topic_prefix,
        policy=fast_timers,
        **p.keyring,
    )

    own: list[RunningServer] = []  # started here, so stopped here (the fixture does not)

    async def start_resolution():  # type: ignore[no-untyped-def]
        app = create_app(
            SPECS["resolution"], settings, telemetry=setup_telemetry("resolution"), clock=clock
        )
        server = await serve(app)
        p.servers["resolution"] = server
        own.append(server)
        return server

    try:
        server = await start_resolution()
        cid = await new_case(p, http, severity="critical")  # first response due in 2 business h
        base = f"{p.url('resolution')}/cases/{cid}"
        case = (await http.get(base)).json()
        assert case["sla"]["first_response"]["due_at"] == "2026-11-23T11:00:00Z"

        async def level(expected: str | None) -> dict | None:
            c = (await http.get(f"{p.url('resolution')}/cases/{cid}")).json()
            return c if c["escalation_level"] == expected else None

        clock.advance(1.7 * H)  # past the warning (80 %)
        await asyncio.sleep(0.3)
        assert (await http.get(base)).json()["escalation_level"] is None
        clock.advance(0.4 * H)  # past the breach
        case = await eventually(lambda: level("team_lead"), what="escalation to the team lead")
        assert case["sla"]["first_response"]["breached"] is True
        worklist = (
            await http.get(f"{p.url('resolution')}/cases", params={"overdue": "true"})
        ).json()
        assert [c["complaint_id"] for c in worklist["items"]] == [cid]

        await server.stop()  # the service goes down; the timers stay in PostgreSQL
        clock.advance(4 * H)  # past manager_after (4 business hours after the breach)
        await start_resolution()
        await eventually(lambda: level("manager"), what="escalation to the manager after restart")

        events = await resolution_events(p, cid, 5)
        assert [e.type for e in events] == [
            "CaseOpened",
            "DeadlineApproaching",
            "DeadlineBreached",
            "CaseEscalated",
            "CaseEscalated",
        ]
        assert [e.payload.level for e in events if isinstance(e.payload, rs.CaseEscalated)] == [
            "team_lead",
            "manager",
        ]
        assert isinstance(events[2].payload, rs.DeadlineApproaching | rs.DeadlineBreached)
        assert events[2].payload.deadline == "first_response"
    finally:
        await asyncio.gather(*(s.stop() for s in own))


async def test_reopen_by_an_agent_and_by_followups_request(start_platform: StartPlatform, http):
    p = await start_platform("intake", "resolution")
    cid = await new_case(p, http)
    base = f"{p.url('resolution')}/cases/{cid}"
    await resolve_case(http, p.url("resolution"), cid)
    no_reason = await http.post(f"{base}/reopen", json={})
    assert no_reason.status_code == 422
    r = await http.post(f"{base}/reopen", json={"reason": "refund bounced"})
    assert r.status_code == 200 and r.json()["state"] == "investigating"
    assert r.json()["reopen_count"] == 1 and r.json()["sla"]["resolution"]["met_at"] is None
    await http.post(
        f"{base}/cause",
        json={
            "what_happened": "a",
            "what_should_have_happened": "b",
            "what_went_wrong": "c",
            "root_cause": "process",
            "responsible": "us",
        },
    )
    await http.post(
        f"{base}/proposals",
        json={"options": [{"remedy": "apology", "description": "sorry"}]},
    )
    await http.post(
        f"{base}/agreement",
        json={
            "option_id": 1,
            "agreed_outcome": "apology",
            "indicators": ["letter sent"],
            "deadline": "2099-01-01T00:00:00Z",
        },
    )
    await http.post(f"{base}/resolve", json={"summary": "apologised"})

    # an unhappy customer, as followup reports it on its topic
    bootstrap = p.servers["resolution"].app.state.runtime.settings.kafka_bootstrap
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        request = Event(
            event_id=uuid.uuid4(),
            stream_id=uuid.UUID(cid),
            version=3,
            occurred_at=datetime.now(UTC),
            source="/complaints/followup",
            payload=ReopenRequested(
                check_id=uuid.uuid4(), reason="score 1 of 5", score=1, solved=False
            ),
        )
        rec = to_kafka_record(request)
        for _ in range(2):  # delivered twice: one effect
            await producer.send_and_wait(
                f"{p.prefix}complaints.followup.v2", rec.value, key=rec.key, headers=rec.headers
            )
    finally:
        await producer.stop()

    async def reopened() -> dict | None:
        c = (await http.get(base)).json()
        return c if c["reopen_count"] == 2 else None

    case = await eventually(reopened, what="the case to reopen from followup's request")
    assert case["state"] == "investigating"
    await asyncio.sleep(0.5)
    assert [h["type"] for h in (await http.get(base)).json()["history"]].count("CaseReopened") == 2


async def test_worklist_sorted_by_nearest_deadline_with_filters(
    start_platform: StartPlatform, http
):
    p = await start_platform("intake", "resolution")
    low = await new_case(p, http, severity="low", customer={"name": "A", "email": "a@x.es"})
    critical = await new_case(
        p, http, severity="critical", customer={"name": "B", "email": "b@x.es"}
    )
    medium = await new_case(p, http, severity="medium", customer={"name": "C", "email": "c@x.es"})
    await http.post(f"{p.url('resolution')}/cases/{medium}/assign", json={"owner": AGENT})
    url = f"{p.url('resolution')}/cases"
    items = (await http.get(url)).json()["items"]
    assert [c["complaint_id"] for c in items][:1] == [critical]
    dues = [c["next_deadline_at"] for c in items]
    assert dues == sorted(dues)
    mine = (await http.get(url, params={"owner": "agent-7"})).json()["items"]
    assert [c["complaint_id"] for c in mine] == [medium]
    assert [
        c["complaint_id"] for c in (await http.get(url, params={"severity": "low"})).json()["items"]
    ] == [low]
    soon = (await http.get(url, params={"breach_within": "PT1S"})).json()["items"]
    assert soon == []
    page1 = (await http.get(url, params={"limit": 2})).json()
    page2 = (await http.get(url, params={"limit": 2, "cursor": page1["next_cursor"]})).json()
    assert [c["complaint_id"] for c in page1["items"] + page2["items"]] == [
        c["complaint_id"] for c in items
    ]
    assert page2["next_cursor"] is None
    bad = await http.get(url, params={"breach_within": "soon"})
    assert bad.status_code == 422


async def test_an_agents_command_and_a_due_timer_on_one_case_do_not_deadlock(
    start_platform: StartPlatform, http, tmp_path
):
    """A command appends to the case's stream and then replaces its timers; the timer worker
    must take its locks in that order too, or the two wait for each other until PostgreSQL
    kills one (a deadlock: a 409 for the agent, a failed round for the timers)."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[resolution]\ntimer_poll = "PT1H"\n')  # the test fires the timers
    clock = ManualClock(MONDAY_9)
    p = await start_platform("intake", "resolution", policy=policy, clock=clock)
    cid = uuid.UUID(await new_case(p, http, severity="critical"))
    rt = p.servers["resolution"].app.state.runtime
    clock.advance(2.5 * H)  # the first response is overdue: a timer is due

    async with rt.pool.acquire() as conn, conn.transaction():
        # an agent's assignment, as the command runs it: the append first ...
        case, loaded = await load_case(conn, rt, cid)
        by = By("agent-7", "agent")
        new = assign(case, AssignCase(owner=Owner(**AGENT)), by, rt.clock(), rt.policy)
        recorded = await rt.store.append(conn, cid, loaded.version, new)
        timers = asyncio.create_task(fire_due(rt))  # ... the worker comes in between ...
        await asyncio.sleep(0.5)
        # ... and the projection replaces the case's timers
        await save(conn, rt.policy, fold([*loaded.events, *recorded]), rt.clock())
    # the worker decided again on the case as assigned: the (late) first response is given,
    # so the deadline has nothing more to fire
    assert await asyncio.wait_for(timers, 10) == 0
    events = await rt.store.load(rt.pool, cid)
    assert [e.type for e in events] == ["CaseOpened", "CaseAssigned"]
    case = (await http.get(f"{p.url('resolution')}/cases/{cid}")).json()
    assert case["owner"]["id"] == "agent-7"
    assert case["sla"]["first_response"]["breached"] is True


async def test_a_cases_timers_are_replaced_by_the_deadlines_it_has_after_each_change(
    start_platform: StartPlatform, http
):
    """The projection keeps exactly the timers the case needs now: a deadline met takes its
    timers away, a pause moves or removes the others, and those unchanged stay."""
    clock = ManualClock(MONDAY_9)
    p = await start_platform("intake", "resolution", clock=clock)
    cid = uuid.UUID(await new_case(p, http))
    rt = p.servers["resolution"].app.state.runtime
    base = f"{p.url('resolution')}/cases/{cid}"

    async def stored() -> dict[str, datetime]:
        rows = await rt.pool.fetch("SELECT key, due_at FROM timers WHERE complaint_id = $1", cid)
        return {r["key"]: r["due_at"] for r in rows}

    async def needed() -> dict[str, datetime]:
        case, _ = await load_case(rt.pool, rt, cid)
        return {t.key: t.due_at for t in deadlines(case, rt.policy, rt.clock())}

    opened = await stored()
    assert opened == await needed()
    assert {k.split(":")[0] for k in opened} == {"first_response", "resolution"}
    clock.advance(H)
    assert (await http.post(f"{base}/assign", json={"owner": AGENT})).status_code == 200
    assigned = await stored()
    assert assigned == await needed()
    assert {k.split(":")[0] for k in assigned} == {"resolution"}  # the first response is given
    assert all(opened[k] == due for k, due in assigned.items())
    clock.advance(H)
    r = await http.post(f"{base}/clarification-requests", json={"questions": ["¿Fecha?"]})
    assert r.json()["sla"]["resolution"]["paused"] is True
    assert await stored() == await needed() != assigned
