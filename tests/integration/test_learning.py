"""Learning on the real broker: problems, recurrence after a fix, similarity, insights, replay."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from complaints_learning.api import admin
from complaints_learning.handlers import subscriptions as learning_subscriptions
from complaints_shared import eventstore
from complaints_shared.envelope import Event, from_kafka_record, to_kafka_record
from complaints_shared.events import DomainEvent
from complaints_shared.events import followup as fu
from complaints_shared.events import intake as it
from complaints_shared.events import learning as le
from complaints_shared.events import resolution as rs
from tests.integration.conftest import Platform, StartPlatform
from tests.support import AGENT, ManualClock, await_case, eventually, read_topic, topic_size

pytestmark = pytest.mark.integration


def bootstrap(p: Platform) -> str:
    return next(iter(p.servers.values())).app.state.runtime.settings.kafka_bootstrap


async def learning_events(p: Platform, count: int) -> list[Event]:
    records = await read_topic(bootstrap(p), f"{p.prefix}complaints.learning.v1", count=count)
    return [from_kafka_record(r.value, r.headers) for r in records]


async def complain(
    p: Platform,
    http: httpx.AsyncClient,
    subject: str,
    description: str,
    language: str,
    product: str = "Torradeira T-100",
) -> str:
    r = await http.post(
        f"{p.url('intake')}/complaints",
        json={
            "channel": "web",
            "subject": subject,
            "description": description,
            **({"product": product} if product else {}),
            "category": "product_defect",
            "severity": "medium",
            "customer": {"name": "X", "id": uuid.uuid4().hex, "language": language},
        },
    )
    assert r.status_code == 201, r.text
    cid = r.json()["complaint_id"]

    await await_case(http, p.url("resolution"), cid)
    return cid


async def identify(
    p: Platform, http: httpx.AsyncClient, cid: str, root: str = "product_defect"
) -> None:
    base = f"{p.url('resolution')}/cases/{cid}"
    await http.post(f"{base}/assign", json={"owner": AGENT})
    r = await http.post(
        f"{base}/cause",
        json={
            "what_happened": "the heating element failed",
            "what_should_have_happened": "it heats",
            "what_went_wrong": "a faulty batch",
            "root_cause": root,
            "responsible": "third_party",
        },
    )
    assert r.status_code == 200, r.text


TEXTS = [
    ("Torradeira avariada", "A torradeira T-100 deixou de aquecer ao fim de dois dias.", "pt"),
    ("Tostadora rota", "La tostadora T-100 dejó de calentar a los dos días.", "es"),
    ("Broken toaster", "The T-100 toaster stopped heating after two days.", "en"),
    ("Hibás kenyérpirító", "A T-100 kenyérpirító két nap után nem melegít.", "hu"),
]


async def test_a_correction_by_an_agent_re_keys_the_complaint_and_a_guess_splits_nothing(
    start_platform: StartPlatform, http
):
    p = await start_platform("intake", "resolution", "learning")
    learning, resolution = p.url("learning"), p.url("resolution")
    # one cause on one product, filed under two categories (as intake would guess them)
    a = await complain(p, http, *TEXTS[0])
    b = await complain(p, http, *TEXTS[1])
    r = await http.post(f"{resolution}/cases/{b}/classification", json={"category": "delivery"})
    assert r.status_code == 200, r.text
    # a third complaint about the same fault, recorded under another product name
    c = await complain(p, http, *TEXTS[2], product="T100 toaster")
    for cid in (a, b, c):
        await identify(p, http, cid)

    async def problems(n: int) -> list[dict] | None:
        items = (await http.get(f"{learning}/problems")).json()["items"]
        return items if sorted(i["occurrences"] for i in items) == [n] else None

    [one] = await eventually(lambda: problems(2), what="one problem of two complaints")
    assert one["product"] == "torradeira t-100"

    # the agent corrects c's product (and confirms its severity): c moves to that problem
    case = (await http.get(f"{resolution}/cases/{c}")).json()
    r = await http.post(
        f"{resolution}/cases/{c}/classification",
        json={"product": "Torradeira T-100", "severity": "high", "reason": "same model"},
        headers={"If-Match": f'"{case["version"]}"'},
    )
    assert r.status_code == 200, r.text
    corrected = r.json()
    assert (corrected["product"], corrected["severity"]) == ("Torradeira T-100", "high")
    assert corrected["classified_by"] and corrected["history"][-1]["type"] == "CaseClassified"
    [three] = await eventually(lambda: problems(3), what="the corrected complaint to count")
    assert three["problem_id"] == one["problem_id"]
    detail = (await http.get(f"{learning}/problems/{one['problem_id']}")).json()
    assert sorted(detail["complaints"]) == sorted([a, b, c])

    # and moves away again: the problem withdraws its occurrence
    await http.post(f"{resolution}/cases/{c}/classification", json={"product": "Kettle K-1"})

    async def withdrawn() -> dict | None:
        got = (await http.get(f"{learning}/problems/{one['problem_id']}")).json()
        return got if got["occurrences"] == 2 else None

    after = await eventually(withdrawn, what="the occurrence to be withdrawn")
    assert after["history"][-1] == {**after["history"][-1], "type": "OccurrenceWithdrawn"}
    assert c not in after["complaints"]
    # intake's view follows the agent's classification
    intake_view = (await http.get(f"{p.url('intake')}/complaints/{c}")).json()
    assert intake_view["severity"] == "high" and intake_view["severity_suggested"] is False
    refused = await http.post(f"{resolution}/cases/{c}/classification", json={"category": "x"})
    assert refused.status_code == 422 and "product_defect" in refused.json()["errors"][0]["allowed"]


async def test_recurring_cause_becomes_a_problem_and_a_recurrence_after_the_fix_is_caught(
    start_platform: StartPlatform, http
):
    p = await start_platform("intake", "resolution", "learning")
    learning = p.url("learning")
    ids = []
    for subject, text, lang in TEXTS[:3]:
        cid = await complain(p, http, subject, text, lang)
        await identify(p, http, cid)
        ids.append(cid)

    async def problem_with(n: int) -> dict | None:
        items = (await http.get(f"{learning}/problems")).json()["items"]
        return items[0] if items and items[0]["occurrences"] == n else None

    summary = await eventually(lambda: problem_with(3), what="a problem with three occurrences")
    assert (summary["root_cause"], summary["category"], summary["product"]) == (
        "product_defect",
        "product_defect",
        "torradeira t-100",
    )
    pid = summary["problem_id"]
    problem = (await http.get(f"{learning}/problems/{pid}")).json()
    assert problem["complaints"] == ids
    assert [h["type"] for h in problem["history"]] == ["ProblemOpened", "RecurrenceDetected"]

    bad = await http.post(
        f"{learning}/problems/{pid}/corrective-actions",
        json={"type": "pray", "description": "x", "owner": "q", "due_at": "2099-01-01T00:00:00Z"},
    )
    assert bad.status_code == 422
    r = await http.post(
        f"{learning}/problems/{pid}/corrective-actions",
        json={
            "type": "eliminate_defect",
            "description": "Replace the thermostat supplier",
            "owner": "quality-lead",
            "due_at": "2099-01-01T00:00:00Z",
        },
    )
    assert r.status_code == 201, r.text
    action = r.json()["action_id"]
    assert r.headers["location"] == f"/problems/{pid}/corrective-actions/{action}"
    planned = (await http.get(f"{learning}/problems/{pid}")).json()
    assert planned["status"] == "fixing" and r.headers["etag"] == f'"{planned["version"]}"'
    assert (await http.get(f"{learning}{r.headers['location']}")).json() == r.json()
    r = await http.post(
        f"{learning}/problems/{pid}/corrective-actions/{action}/complete",
        json={},
    )
    assert r.status_code == 200 and r.json()["status"] == "fixed"

    fourth = await complain(p, http, *TEXTS[3])
    await identify(p, http, fourth)
    after = await eventually(lambda: problem_with(4), what="the fourth occurrence")
    assert after["recurrences_after_fix"] == 1 and after["status"] == "fixing"
    events = await learning_events(p, 5)
    assert [e.type for e in events] == [
        "ProblemOpened",
        "RecurrenceDetected",
        "CorrectiveActionPlanned",
        "CorrectiveActionCompleted",
        "RecurrenceAfterFix",
    ]
    opened, recurred, after_fix = events[0].payload, events[1].payload, events[4].payload
    assert isinstance(opened, le.ProblemOpened) and opened.occurrences == 2
    assert isinstance(recurred, le.RecurrenceDetected) and recurred.occurrences == 3
    assert isinstance(after_fix, le.RecurrenceAfterFix) and str(after_fix.complaint_id) == fourth
    rate = (await http.get(f"{learning}/insights/recurrence")).json()
    assert rate == {
        "problems": 1,
        "problems_fixed": 1,
        "recurred_after_fix": 1,
        "recurrence_after_fix_rate": 100.0,
        "resolved": 0,
    }

    # a new complaint with no cause yet: similar complaints across languages, and the problem
    for subject, text, lang in (
        ("Funcionário mal educado", "O funcionário da caixa gritou comigo na loja.", "pt"),
        ("Cobro duplicado", "Me han cobrado dos veces la misma factura del mes.", "es"),
        ("Long queue", "I waited for an hour at the till, only one cashier.", "en"),
    ):
        await complain(p, http, subject, text, lang, product=None)
    new = await complain(
        p, http, "Tostadora T-100 no calienta", "Mi tostadora T-100 ya no calienta nada.", "es"
    )

    async def similar() -> dict | None:
        r = await http.get(f"{learning}/complaints/{new}/similar")
        return r.json() if r.status_code == 200 else None

    found = await eventually(similar, what="similar complaints")
    assert found["cause_known"] is False
    top = [c["complaint_id"] for c in found["complaints"]]
    assert top[0] == ids[1]  # the Spanish one first
    assert set(top[:4]) == {*ids, fourth}  # every language of the same story ranks above
    assert found["problems"][0]["problem_id"] == pid
    missing = await http.get(f"{learning}/complaints/{uuid.uuid4()}/similar")
    assert missing.status_code == 404


# ---- a fixed data set, published as the other services would ------------------------------

T = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # Monday of ISO week 45
H = timedelta(hours=1)
C = [uuid.UUID(int=i) for i in range(1, 6)]


def ev(payload: DomainEvent, stream: uuid.UUID, at: datetime, source: str) -> Event[Any]:
    return Event(
        event_id=uuid.uuid4(),
        stream_id=stream,
        version=1,
        occurred_at=at,
        source=f"/complaints/{source}",
        payload=payload,
    )


def received_event(i: int, category: str, at: datetime) -> it.ComplaintReceived:
    return it.ComplaintReceived(
        reference=f"CMP-{i}",
        received_at=at,
        channel="web",
        reply_channel="web",
        customer=it.Customer(id=f"c{i}"),
        subject=f"s{i}",
        description=f"d{i}",
        category=category,
        severity="medium",
        language="pt",
        first_response_due=at + 8 * H,
        product="Fatura" if category == "billing" else None,
    )


def cause_event(c: uuid.UUID, root: str, category: str) -> rs.CauseIdentified:
    return rs.CauseIdentified(
        complaint_id=c,
        what_happened="x",
        what_should_have_happened="y",
        what_went_wrong="z",
        root_cause=root,
        responsible="us",
        identified_by="a1",
        category=category,
        product="Fatura" if category == "billing" else None,
    )


def breach_event(c: uuid.UUID, deadline: Any, at: datetime) -> rs.DeadlineBreached:
    return rs.DeadlineBreached(
        complaint_id=c, deadline=deadline, ref="0", due_at=at, timer="t", breached_at=at
    )


def data_set() -> list[tuple[str, Event[Any]]]:
    received = [
        (C[0], "billing", T),
        (C[1], "billing", T + 24 * H),
        (C[2], "cleanliness", T + 8 * 24 * H),
        (C[3], "policy", T + 9 * 24 * H),
        (C[4], "billing", T + 10 * 24 * H),
    ]
    out = [
        ("intake", ev(received_event(i, cat, at), c, at, "intake"))
        for i, (c, cat, at) in enumerate(received)
    ]
    causes = [
        (C[0], "pricing_system", "billing", 2),
        (C[1], "pricing_system", "billing", 2),
        (C[2], "process", "cleanliness", 1),
        (C[3], "policy", "policy", 1),
        (C[4], "pricing_system", "billing", 2),
    ]
    at_of = {c: at for c, _, at in received}
    out += [
        ("resolution", ev(cause_event(c, root, cat), c, at_of[c] + h * H, "resolution"))
        for c, root, cat, h in causes
    ]
    out += [
        (
            "resolution",
            ev(
                rs.CaseResolved(
                    complaint_id=c,
                    summary="ok",
                    resolved_by="a1",
                    category="billing",
                    severity="medium",
                ),
                c,
                at_of[c] + h * H,
                "resolution",
            ),
        )
        for c, h in ((C[0], 10), (C[1], 24), (C[2], 2), (C[3], 48))
    ]
    out += [
        (
            "resolution",
            ev(
                breach_event(C[3], "resolution", at_of[C[3]] + 40 * H),
                C[3],
                at_of[C[3]] + 40 * H,
                "resolution",
            ),
        ),
        (
            "resolution",
            ev(
                breach_event(C[1], "first_response", at_of[C[1]] + 9 * H),
                C[1],
                at_of[C[1]] + 9 * H,
                "resolution",
            ),
        ),
    ]
    out += [
        (
            "followup",
            ev(
                fu.SatisfactionRecorded(check_id=uuid.uuid4(), score=s, solved=s > 2),
                c,
                at_of[c] + 72 * H,
                "followup",
            ),
        )
        for c, s in ((C[0], 5), (C[1], 2), (C[2], 4))
    ]
    return out


def processed(p: Platform, count: int):  # type: ignore[no-untyped-def]
    """A probe: learning's consumer has handled ``count`` events."""

    async def probe() -> bool:
        n = await p.pool("learning").fetchval(
            "SELECT count(*) FROM inbox WHERE consumer LIKE '%complaints-learning'"
        )
        return bool(n == count)

    return probe


async def publish(p: Platform, events: list[tuple[str, Event]]) -> None:
    topics = next(iter(p.servers.values())).app.state.runtime.topics
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(p), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for service, e in events:
            r = to_kafka_record(e)
            await producer.send_and_wait(
                getattr(topics, service), r.value, key=r.key, headers=r.headers
            )
    finally:
        await producer.stop()


EXPECTED = {
    "/insights/top": {
        "causes": [
            {"key": "pricing_system", "complaints": 3},
            {"key": "policy", "complaints": 1},
            {"key": "process", "complaints": 1},
        ],
        "categories": [
            {"key": "billing", "complaints": 3},
            {"key": "cleanliness", "complaints": 1},
            {"key": "policy", "complaints": 1},
        ],
    },
    "/insights/trends": [
        {"week": "2026-W45", "complaints": 2, "categories": {"billing": 2}},
        {
            "week": "2026-W46",
            "complaints": 3,
            "categories": {"billing": 1, "cleanliness": 1, "policy": 1},
        },
    ],
    "/insights/satisfaction": [
        {"category": "billing", "answers": 2, "css": 50.0, "average_score": 3.5},
        {"category": "cleanliness", "answers": 1, "css": 100.0, "average_score": 4.0},
    ],
    "/insights/sla": {
        "resolved": 4,
        "resolution_compliance": 75.0,
        "complaints": 5,
        "first_response_compliance": 80.0,
    },
    "/insights/resolution-time": {"resolved": 4, "mean_hours": 21.0, "p90_hours": 40.8},
    "/insights/policy": {
        "complaints_with_cause": 5,
        "caused_by_policy": 1,
        "share": 20.0,
        "categories": [{"key": "policy", "complaints": 1}],
    },
    "/insights/recurrence": {
        "problems": 1,
        "problems_fixed": 0,
        "recurred_after_fix": 0,
        "recurrence_after_fix_rate": None,
        "resolved": 0,
    },
}


async def answers(http: httpx.AsyncClient, learning: str) -> dict[str, Any]:
    out = {path: (await http.get(f"{learning}{path}")).json() for path in EXPECTED}
    out["/insights/estimates"] = (await http.get(f"{learning}/insights/estimates")).json()
    out["/insights/categories"] = (await http.get(f"{learning}/insights/categories")).json()
    problems = (await http.get(f"{learning}/problems")).json()["items"]
    out["/problems"] = problems
    out["problem"] = (await http.get(f"{learning}/problems/{problems[0]['problem_id']}")).json()
    return out


async def test_insights_match_hand_computed_numbers_and_replay_gives_identical_answers(
    start_platform: StartPlatform, http, monkeypatch
):
    # the rebuild reads learning's own events two at a time: its problem's span several reads
    monkeypatch.setattr(eventstore, "SCAN_CHUNK", 2)
    p = await start_platform("learning")
    learning = p.url("learning")
    await publish(p, data_set())

    await eventually(processed(p, len(data_set())), what="every event processed")
    first = await answers(http, learning)
    for path, expected in EXPECTED.items():
        assert first[path] == expected, path
    assert first["/insights/estimates"]["silent_unhappy_customers"] == {"low": 125, "high": 250}
    assert first["/insights/estimates"]["word_of_mouth_reach"] == {"low": 1125, "high": 2500}
    assert first["/insights/estimates"]["label"] == "estimate"
    assert first["/problems"][0]["occurrences"] == 3
    week46 = (
        await http.get(f"{learning}/insights/top", params={"from": (T + 7 * 24 * H).isoformat()})
    ).json()
    assert week46["causes"] == [  # a tie: by name
        {"key": "policy", "complaints": 1},
        {"key": "pricing_system", "complaints": 1},
        {"key": "process", "complaints": 1},
    ]
    own_events = await topic_size(bootstrap(p), f"{p.prefix}complaints.learning.v1")
    links = "SELECT complaint_id, problem_id FROM complaint_facts ORDER BY complaint_id"
    linked = [tuple(r) for r in await p.pool("learning").fetch(links)]
    pid = uuid.UUID(first["/problems"][0]["problem_id"])
    assert {c for c, problem in linked if problem == pid} == {C[0], C[1], C[4]}  # the three

    r = await http.post(f"{learning}/admin/rebuild")
    assert r.status_code == 200 and r.json() == {"problems": 1, "replaying": True}
    await eventually(processed(p, len(data_set())), what="the replay from offset 0")
    await asyncio.sleep(0.5)
    assert await answers(http, learning) == first
    assert [tuple(r) for r in await p.pool("learning").fetch(links)] == linked
    assert await topic_size(bootstrap(p), f"{p.prefix}complaints.learning.v1") == own_events


async def test_a_rebuild_projects_what_was_appended_while_it_read_the_problems_unlocked(
    start_platform: StartPlatform, http, monkeypatch
):
    """The rebuild reads every problem's events before it takes the read models' locks (they
    answer meanwhile); what is appended after that read (here an action planned) is read
    under the locks, so the problem's row is not left behind."""
    p = await start_platform("learning")
    learning = p.url("learning")
    await publish(p, data_set())
    await eventually(processed(p, len(data_set())), what="every event processed")
    [problem] = (await http.get(f"{learning}/problems")).json()["items"]
    assert problem["status"] == "open"
    pid = problem["problem_id"]

    read_unlocked = admin.fold_all
    answered_meanwhile: list[int] = []

    async def then_plan_an_action(*args: Any) -> Any:
        folded = await read_unlocked(*args)
        answered_meanwhile.append((await http.get(f"{learning}/problems")).status_code)
        planned = await http.post(
            f"{learning}/problems/{pid}/corrective-actions",
            json={
                "type": "change_policy",
                "description": "Let staff refund without a receipt",
                "owner": "quality-lead",
                "due_at": "2099-01-01T00:00:00Z",
            },
        )
        assert planned.status_code == 201, planned.text
        return folded

    monkeypatch.setattr(admin, "fold_all", then_plan_an_action)
    r = await http.post(f"{learning}/admin/rebuild")
    assert r.status_code == 200 and r.json() == {"problems": 1, "replaying": True}
    assert answered_meanwhile == [200]
    [row] = (await http.get(f"{learning}/problems")).json()["items"]
    history = (await http.get(f"{learning}/problems/{pid}")).json()
    assert (row["status"], history["status"]) == ("fixing", "fixing")
    assert row["occurrences"] == problem["occurrences"] == 3
    assert row["opened_at"] == problem["opened_at"]


async def test_a_fix_without_recurrence_for_the_verification_window_resolves_the_problem(
    start_platform: StartPlatform, http, tmp_path
):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[learning]\nverification_window = "P30D"\n[resolution]\ntimer_poll = "PT0.05S"\n'
    )
    clock = ManualClock(T + 24 * H)
    p = await start_platform("learning", policy=policy, clock=clock)
    learning = p.url("learning")
    safety = uuid.UUID(int=99)
    await publish(
        p,
        [
            (
                "resolution",
                ev(
                    cause_event(safety, "process", "cleanliness").model_copy(
                        update={"product": "Loja Baixa", "safety_incident": True}
                    ),
                    safety,
                    T,
                    "resolution",
                ),
            )
        ],
    )

    async def problem() -> dict | None:
        items = (await http.get(f"{learning}/problems")).json()["items"]
        return items[0] if items else None

    opened = await eventually(problem, what="a problem at the first safety incident")
    assert opened["occurrences"] == 1
    pid = opened["problem_id"]
    r = await http.post(
        f"{learning}/problems/{pid}/corrective-actions",
        json={
            "type": "improve_procedure",
            "description": "Wet-floor signs at every mop",
            "owner": "store-ops",
            "due_at": (T + 10 * 24 * H).isoformat(),
        },
    )
    action = r.json()["action_id"]
    await http.post(
        f"{learning}/problems/{pid}/corrective-actions/{action}/complete",
        json={},
    )
    clock.advance(timedelta(days=29))
    await asyncio.sleep(0.4)
    assert (await http.get(f"{learning}/problems/{pid}")).json()["status"] == "fixed"
    clock.advance(timedelta(days=2))

    async def resolved() -> bool:
        return (await http.get(f"{learning}/problems/{pid}")).json()["status"] == "resolved"

    await eventually(resolved, what="ProblemResolved after the verification window")
    events = await learning_events(p, 4)
    assert events[-1].type == "ProblemResolved"
    assert (await http.get(f"{learning}/insights/recurrence")).json()["resolved"] == 1


async def test_answers_do_not_depend_on_the_order_events_arrive_in(
    start_platform: StartPlatform, http
):
    p = await start_platform("learning", topic_partitions=1)  # processed exactly in this order:
    events = data_set()
    await publish(p, list(reversed(events)))  # later causes first, results before receipts

    await eventually(processed(p, len(events)), what="every event processed")
    got = await answers(http, p.url("learning"))
    for path, expected in EXPECTED.items():
        assert got[path] == expected, path
    assert got["/problems"][0]["occurrences"] == 3
    assert sorted(got["problem"]["complaints"]) == sorted(str(c) for c in (C[0], C[1], C[4]))


async def test_two_first_occurrences_at_the_same_moment_still_open_the_problem(
    start_platform: StartPlatform,
):
    """Two replicas (or partitions) handle two complaints with one signature at once, each in
    its own READ COMMITTED transaction: the second must see the first and open the problem."""
    p = await start_platform("learning")
    rt = p.servers["learning"].app.state.runtime
    (subscription,) = learning_subscriptions(rt)
    assert subscription.batch is not None

    async def on_cause(conn: asyncpg.Connection, event: Event[Any]) -> None:
        await subscription.batch.handle(conn, [event])  # type: ignore[union-attr]

    pool = p.pool("learning")
    a, b = uuid.uuid4(), uuid.uuid4()
    first = ev(cause_event(a, "label printer skips a line", "billing"), a, T, "resolution")
    second = ev(cause_event(b, "label printer skips a line", "billing"), b, T + H, "resolution")
    async with pool.acquire() as one, pool.acquire() as two:
        tx_one = one.transaction()
        await tx_one.start()
        await on_cause(one, first)
        tx_two = two.transaction()
        await tx_two.start()
        racing = asyncio.create_task(on_cause(two, second))
        await asyncio.sleep(0.5)  # the second is now deciding while the first is uncommitted
        await tx_one.commit()
        await racing
        await tx_two.commit()
    opened = await pool.fetch("SELECT data FROM events WHERE type = 'ProblemOpened'")
    assert len(opened) == 1
    assert sorted(opened[0]["data"]["complaint_ids"]) == sorted([str(a), str(b)])


async def test_a_rebuild_through_one_replica_replays_every_partition_of_every_replica(
    start_platform: StartPlatform, http, new_database
):
    """Two learning replicas share a database and split the topics' partitions; a rebuild asked
    of one replays all of it, so both give the first answers again."""
    database = await new_database()
    a = await start_platform("learning", learning_database_url=database)
    b = await start_platform("learning", learning_database_url=database, **a.keyring)
    await eventually(
        lambda: _both_assigned(a, b), what="both replicas own partitions of the topics"
    )
    await publish(a, data_set())
    await eventually(processed(a, len(data_set())), what="every event processed")
    first = await answers(http, a.url("learning"))

    r = await http.post(f"{a.url('learning')}/admin/rebuild")
    assert r.status_code == 200
    await eventually(processed(a, len(data_set())), what="the replay of every partition")
    await asyncio.sleep(0.5)
    assert await answers(http, a.url("learning")) == first
    assert await answers(http, b.url("learning")) == first


async def _both_assigned(*platforms: Platform) -> bool:
    runners = [c for p in platforms for c in p.servers["learning"].app.state.background.consumers]
    return all(c.assigned for c in runners)


async def test_one_batch_keeps_each_complaints_order_and_counts_as_one_by_one(
    start_platform: StartPlatform,
):
    """Learning writes a batch set-based, a statement per kind of event: a complaint's events
    in one batch still take effect in their order (resolved then reopened is open; reopened
    then resolved is resolved; an erasure after the receipt leaves no text), and two first
    occurrences of one cause in one batch open the problem, as they would one by one."""
    p = await start_platform("learning")
    rt = p.servers["learning"].app.state.runtime
    (subscription,) = learning_subscriptions(rt)
    assert subscription.batch is not None
    pool = p.pool("learning")
    a, b, c, d, e = (uuid.uuid4() for _ in range(5))

    def resolved(x: uuid.UUID) -> rs.CaseResolved:
        return rs.CaseResolved(
            complaint_id=x, summary="ok", resolved_by="a1", category="billing", severity="low"
        )

    def reopened(x: uuid.UUID) -> rs.CaseReopened:
        return rs.CaseReopened(complaint_id=x, reason="not fixed", requested_by="customer")

    batch = [
        ev(received_event(1, "billing", T), a, T, "intake"),
        ev(received_event(2, "billing", T), b, T, "intake"),
        ev(received_event(3, "billing", T), c, T, "intake"),
        ev(cause_event(a, "printer skips a line", "billing"), a, T + H, "resolution"),
        ev(resolved(a), a, T + 2 * H, "resolution"),
        ev(reopened(b), b, T + 2 * H, "resolution"),
        ev(reopened(a), a, T + 3 * H, "resolution"),
        ev(resolved(b), b, T + 3 * H, "resolution"),
        ev(
            it.PersonalDataErased(customer_key="k", complaint_ids=(c,), erased_by="dpo"),
            uuid.uuid4(),
            T,
            "intake",
        ),
        ev(cause_event(d, "stamp smudges", "billing"), d, T + H, "resolution"),
        ev(cause_event(e, "stamp smudges", "billing"), e, T + 2 * H, "resolution"),
    ]
    async with pool.acquire() as conn, conn.transaction():
        await subscription.batch.handle(conn, batch)
    facts = {
        r["complaint_id"]: r
        for r in await pool.fetch(
            "SELECT * FROM complaint_facts WHERE complaint_id = ANY($1)", [a, b, c]
        )
    }
    assert facts[a]["resolved_at"] is None and facts[a]["root_cause"] == "printer skips a line"
    assert facts[b]["resolved_at"] == T + 3 * H
    assert facts[c]["text"] is None and facts[b]["text"] == "s2\nd2"
    opened = await pool.fetch("SELECT data FROM events WHERE type = 'ProblemOpened'")
    assert [sorted(r["data"]["complaint_ids"]) for r in opened] == [sorted([str(d), str(e)])]
    linked = await pool.fetch(
        "SELECT complaint_id FROM complaint_facts WHERE problem_id IS NOT NULL"
    )
    assert {r["complaint_id"] for r in linked} == {d, e}


async def test_a_complaints_signatures_are_read_by_index(start_platform: StartPlatform):
    """Placing a complaint reads the signatures it is counted for: by index, not by scanning
    every occurrence (which made a replay quadratic in the complaints stored)."""
    p = await start_platform("learning")
    pool = p.pool("learning")
    await pool.execute(
        "INSERT INTO occurrences SELECT 'cause ' || (i % 50), gen_random_uuid(), now()"
        " FROM generate_series(1, 20000) AS i"
    )
    await pool.execute("ANALYZE occurrences")
    plan = "\n".join(
        r[0]
        for r in await pool.fetch(
            "EXPLAIN SELECT signature FROM occurrences WHERE complaint_id = $1", uuid.uuid4()
        )
    )
    assert "occurrences_complaint" in plan and "Seq Scan" not in plan, plan
