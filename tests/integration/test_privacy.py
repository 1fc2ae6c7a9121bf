"""Personal data through a whole lifecycle, with marker strings in every field a customer or an
agent writes about them: never on a topic, in a span or a log line; all of it in a subject
access request; none of it anywhere after an erasure, while replays still give the same figures.

Everything real: Kafka, PostgreSQL, Keycloak, an SMTP server with a Maildir spool, the four
services over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from message_catcher import create_app as message_catcher  # deploy/local, on the tests' path
from opentelemetry.trace import SpanKind

from complaints_shared.logs import JsonFormatter
from tests.integration.conftest import Platform, StartPlatform
from tests.support import Inbox, ManualClock, Tokens, await_case, eventually, serve

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

MARKERS = {
    "name": "Zsófia Q7Jelölő",
    "email": "zsofia.q7marker@example.hu",
    "phone": "+36 30 777 4321",
    "address": "Q7UTCA 12, Budapest",
    "subject": "Q7SUBJ kenyérpirító",
    "description": "Q7DESC a kenyérpirító két nap után elromlott, a konyhában füst lett",
    "note": "Q7NOTE a nyugta a dobozban volt",
    "what": "Q7WHAT the element burnt out",
    "outcome": "Q7OUTCOME new toaster delivered",
    "summary": "Q7SUMMARY replaced the toaster",
    "comment": "Q7COMMENT köszönöm",
}
NEEDLES = [*MARKERS.values(), "777 4321", "q7marker", "Jelölő"]


def found_in(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


async def raw_topics(p: Platform) -> list[bytes]:
    """Every byte of every record (key, value, headers) of the platform's topics, dead-letter
    topic included, read with a real consumer from the beginning."""
    runtime = next(iter(p.servers.values())).app.state.runtime
    topics = runtime.topics.all()
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=runtime.settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    out.append(
                        (r.key or b"")
                        + (r.value or b"")
                        + b"".join(k.encode() + (v or b"") for k, v in r.headers or ())
                    )
    finally:
        await consumer.stop()
    return out


async def database_text(p: Platform) -> dict[str, str]:
    """Every row of every table of every service database and of the keyring, as text."""
    dsns = {
        name: server.app.state.runtime.settings.dsn_for(name) for name, server in p.servers.items()
    }
    dsns["keyring"] = p.keyring["keyring_url"]
    out: dict[str, str] = {}
    for name, dsn in dsns.items():
        conn = await asyncpg.connect(dsn)
        try:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            parts = []
            for t in tables:
                rows = await conn.fetch(f'SELECT t::text AS row FROM "{t["tablename"]}" t')
                parts.extend(r["row"] for r in rows)
            out[name] = "\n".join(parts)
        finally:
            await conn.close()
    return out


def span_text(p: Platform) -> str:
    parts = []
    for s in p.spans.get_finished_spans():
        parts.append(s.name)
        parts.extend(f"{k}={v}" for k, v in (s.attributes or {}).items())
        for e in s.events:
            parts.append(e.name)
            parts.extend(f"{k}={v}" for k, v in (e.attributes or {}).items())
        if s.status.description:
            parts.append(s.status.description)
    return "\n".join(parts)


async def export_trace(p: Platform) -> list[tuple[str, str]] | None:
    """The services and span names of the trace of intake's answer to a subject access
    request, once every span of it ended and each peer's request is a child of intake's call
    to that peer (else None)."""
    spans = p.spans.get_finished_spans()
    route = "GET /customers/{customer_key}/data"
    asked = [  # the 200 (not the analyst's 403), asked from outside
        s
        for s in spans
        if s.name == route
        and s.parent is None
        and (s.attributes or {}).get("http.response.status_code") == 200
    ]
    if len(asked) != 1:
        return None
    trace_id = asked[0].context.trace_id
    mine = [s for s in spans if s.context.trace_id == trace_id]
    calls = {s.context.span_id for s in mine if s.kind is SpanKind.CLIENT}
    peers = [s for s in mine if s.kind is SpanKind.SERVER and s is not asked[0]]
    if len(calls) != 3 or len(peers) != 3 or any(s.parent.span_id not in calls for s in peers):
        return None
    return [(str(s.resource.attributes["service.name"]), s.name) for s in mine]


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter("test")
    # not the platform's: the test client's request lines (httpx, which the services' logging
    # set-up silences) and the SMTP server's protocol trace (aiosmtpd's ``mail.log``)
    foreign = ("httpx", "httpcore", "mail.log")
    return "\n".join(formatter.format(r) for r in caplog.records if not r.name.startswith(foreign))


async def test_personal_data_is_sealed_exported_and_erased_everywhere(
    start_platform: StartPlatform,
    http: httpx.AsyncClient,
    tokens: Tokens,
    smtp: tuple[Inbox, int],
    followup_policy: Path,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    inbox, port = smtp
    assert inbox.spool is not None
    clock = ManualClock(START)
    p = await start_platform(
        policy=followup_policy,
        clock=clock,
        smtp_host="127.0.0.1",
        smtp_port=port,
        public_url="https://care.example/s",
        mail_spool=Path(inbox.spool._path),
    )
    intake, resolution, followup, learning = (
        p.url(n) for n in ("intake", "resolution", "followup", "learning")
    )

    # a whole lifecycle, every free text carrying a marker
    r = await http.post(
        f"{intake}/complaints",
        json={
            "channel": "email",
            "subject": MARKERS["subject"],
            "description": MARKERS["description"],
            "product": "toaster T2",
            "customer": {
                "name": MARKERS["name"],
                "email": MARKERS["email"],
                "phone": MARKERS["phone"],
                "postal_address": MARKERS["address"],
                "language": "hu",
            },
        },
    )
    assert r.status_code == 201, r.text
    complaint = r.json()
    cid, key = complaint["complaint_id"], complaint["customer_key"]
    listed = await http.get(f"{intake}/complaints", params={"customer": MARKERS["email"]})
    assert [c["complaint_id"] for c in listed.json()["items"]] == [cid]
    details = await http.post(f"{intake}/complaints/{cid}/details", json={"note": MARKERS["note"]})
    assert details.status_code == 200, details.text
    await await_case(http, resolution, cid)
    case = f"{resolution}/cases/{cid}"
    for path, body in (
        ("assign", {"owner": {"id": "agent-7", "name": "Ági", "contact": "care@example.hu"}}),
        (
            "cause",
            {
                "what_happened": MARKERS["what"],
                "what_should_have_happened": "it toasts",
                "what_went_wrong": "a bad batch",
                "root_cause": "product_defect",
                "responsible": "us",
            },
        ),
        ("proposals", {"options": [{"remedy": "replacement", "description": "A new toaster"}]}),
        (
            "agreement",
            {
                "option_id": 1,
                "agreed_outcome": MARKERS["outcome"],
                "indicators": ["delivered"],
                "deadline": "2099-01-01T12:00:00+00:00",
            },
        ),
        ("resolve", {"summary": MARKERS["summary"]}),
    ):
        step = await http.post(f"{case}/{path}", json=body)
        assert step.status_code == 200, (path, step.text)
    clock.advance(timedelta(days=3, minutes=1))

    async def survey_mail() -> Any:
        return next((m for m in inbox.to(MARKERS["email"]) if "/surveys/" in m.get_content()), None)

    message = await eventually(survey_mail, what="the survey e-mail")
    token = re.search(r"https://care\.example/s/surveys/(\S+)", message.get_content()).group(1)  # type: ignore[union-attr]
    assert (await http.get(f"{followup}/surveys/{token}")).status_code == 200
    answer = await http.post(
        f"{followup}/surveys/{token}",
        json={"score": 5, "solved": True, "comment": MARKERS["comment"]},
    )
    assert answer.status_code == 201, answer.text

    async def all_seen() -> bool:
        facts = await p.pool("learning").fetchrow(
            "SELECT score, text FROM complaint_facts WHERE complaint_id = $1::uuid", cid
        )
        answers = await p.pool("followup").fetchval("SELECT count(*) FROM satisfaction_answers")
        return bool(facts and facts["score"] == 5 and facts["text"] and answers == 1)

    await eventually(all_seen, what="every service to have seen the lifecycle")

    # 1. sealed where it travels and is told about: topics, spans, logs
    records = await raw_topics(p)
    assert len(records) >= 15
    assert [
        found_in(r.decode("utf-8", "replace"))
        for r in records
        if found_in(r.decode("utf-8", "replace"))
    ] == []
    spans = span_text(p)
    assert "GET /complaints" in spans and "/surveys/{token}" in spans
    assert found_in(spans) == [] and token not in spans
    assert "customer=REDACTED" in spans
    leaked = [r for r in log_text(caplog).splitlines() if found_in(r) or token in r]
    assert leaked == []

    # 2. a subject access request returns everything, from all four services, to the privacy role
    analyst = await tokens.headers("analyst")
    assert (await http.get(f"{intake}/customers/{key}/data", headers=analyst)).status_code == 403
    privacy = await tokens.headers("privacy")
    export = await http.get(f"{intake}/customers/{key}/data", headers=privacy)
    assert export.status_code == 200, export.text
    data = export.json()
    assert data["complaint_ids"] == [cid] and data["erased"] is False
    assert set(data["services"]) == {"intake", "resolution", "followup", "learning"}
    text = {name: str(part) for name, part in data["services"].items()}
    assert {"subject", "email", "phone", "name", "note"} <= {
        k for k, v in MARKERS.items() if v in text["intake"]
    }
    assert MARKERS["what"] in text["resolution"] and MARKERS["summary"] in text["resolution"]
    assert MARKERS["comment"] in text["followup"] and MARKERS["email"] in text["followup"]
    assert MARKERS["description"] in text["learning"]
    # one trace: intake's request, its call to each peer, and each peer's request
    trace = await eventually(lambda: export_trace(p), what="the export's spans")
    assert {name for name, _ in trace} == {"intake", "resolution", "followup", "learning"}
    assert key not in str(trace)  # the spans name the path's template, not the key
    unknown = await http.get(f"{intake}/customers/{'0' * 64}/data", headers=privacy)
    assert unknown.status_code == 404
    assert (await http.get(f"{intake}/customers/nope/data", headers=privacy)).status_code == 422
    figures = (await http.get(f"{learning}/insights/categories")).json()
    assert len(inbox.spool) >= 5

    # 3. erasure: keys destroyed, every copy scrubbed, once
    assert (
        await http.post(f"{intake}/customers/{key}/erasure", headers=analyst)
    ).status_code == 403
    erased = await http.post(f"{intake}/customers/{key}/erasure", headers=privacy)
    assert erased.status_code == 200, erased.text
    assert erased.json()["complaint_ids"] == [cid] and erased.json()["recorded"] is True
    again = await http.post(f"{intake}/customers/{key}/erasure", headers=privacy)
    assert again.status_code == 200 and again.json()["recorded"] is False

    async def scrubbed() -> dict[str, str] | None:
        texts = await database_text(p)
        return texts if not any(found_in(t) for t in texts.values()) else None

    texts = await scrubbed() or await eventually(scrubbed, what="every database scrubbed")
    assert all(texts.values())
    assert len(inbox.spool) == 0  # the spooled copies are gone

    # every API shows the erased fields as null / "erased"
    shown = (await http.get(f"{intake}/complaints/{cid}")).json()
    assert (shown["subject"], shown["description"]) == ("erased", "erased")
    assert shown["customer"]["email"] is None and shown["customer"]["name"] is None
    assert shown["details"][0]["note"] is None
    assert (
        shown["reference"] == complaint["reference"] and shown["category"] == complaint["category"]
    )
    case_now = (await http.get(case)).json()
    assert case_now["state"] == "resolved" and found_in(str(case_now)) == []
    export = (await http.get(f"{intake}/customers/{key}/data", headers=privacy)).json()
    assert export["erased"] is True and found_in(str(export)) == []
    assert [e["type"] for e in export["services"]["intake"]["events"]][:2] == [
        "ComplaintReceived",
        "ComplaintAcknowledged",
    ]

    # replays and rebuilds still work and give the same figures
    rebuilt = await http.post(f"{learning}/admin/rebuild")
    assert rebuilt.status_code == 200, rebuilt.text

    async def same_figures() -> bool:
        return bool((await http.get(f"{learning}/insights/categories")).json() == figures)

    await asyncio.sleep(1)
    await eventually(same_figures, what="the rebuilt insights")
    assert found_in(str(await database_text(p))) == []

    # and nothing of it ever reached a topic, a span or a log line
    assert [r for r in await raw_topics(p) if found_in(r.decode("utf-8", "replace"))] == []
    assert found_in(span_text(p)) == [] and found_in(log_text(caplog)) == []


async def test_the_local_message_catcher_keeps_each_message_once_until_its_customer_is_erased(
    start_platform: StartPlatform,
    http: httpx.AsyncClient,
    tokens: Tokens,
    smtp: tuple[Inbox, int],
    followup_policy: Path,
    tmp_path: Path,
):
    """``./dev run``'s message gateway: the acknowledgement of a complaint answered by phone is
    kept as ``<delivery id>.json``, once even when posted again (a retry); when the customer is
    erased, followup deletes it, as it deletes their spooled e-mail."""
    spool = tmp_path / "messages"
    catcher = await serve(message_catcher(spool))
    try:
        _, port = smtp
        p = await start_platform(
            "intake",
            "followup",
            policy=followup_policy,
            smtp_host="127.0.0.1",
            smtp_port=port,
            webhook_url=f"{catcher.url}/messages",
            message_spool=spool,
        )
        r = await http.post(
            f"{p.url('intake')}/complaints",
            json={
                "channel": "phone",
                "subject": "Encomenda atrasada",
                "description": "A encomenda chegou com duas semanas de atraso.",
                "customer": {"name": "Rui Telefone", "phone": "+351 910 000 111"},
            },
        )
        assert r.status_code == 201, r.text
        complaint = r.json()

        async def kept() -> list[Path] | None:
            return sorted(spool.glob("*.json")) or None

        (path,) = await eventually(kept, what="the acknowledgement kept by the catcher")
        message = json.loads(path.read_text())
        assert (message["channel"], message["to"]) == ("phone", "+351 910 000 111")
        assert complaint["reference"] in message["subject"] + message["body"]
        assert path.name == f"{message['id']}.json"
        again = await http.post(f"{catcher.url}/messages", json=message)  # a retry
        assert again.status_code == 200 and sorted(spool.glob("*.json")) == [path]
        bad = await http.post(f"{catcher.url}/messages", json={**message, "id": "../x"})
        assert bad.status_code == 400 and sorted(spool.glob("*")) == [path]

        privacy = await tokens.headers("privacy")
        erased = await http.post(
            f"{p.url('intake')}/customers/{complaint['customer_key']}/erasure", headers=privacy
        )
        assert erased.status_code == 200, erased.text

        async def removed() -> bool:
            return not any(spool.iterdir())

        await eventually(removed, what="the kept message deleted on erasure")
    finally:
        await catcher.stop()
