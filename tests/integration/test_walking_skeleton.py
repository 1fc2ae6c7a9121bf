"""One complaint through all four services, over HTTP and the real broker, in one trace."""

from __future__ import annotations

import httpx
import pytest

from complaints_shared.envelope import decode_headers
from tests.integration.conftest import Platform
from tests.support import eventually, read_topic, resolve_case

pytestmark = pytest.mark.integration


COMPLAINT = {
    "channel": "web",
    "customer": {
        "name": "Ana Souza",
        "email": "ana@example.org",
        "language": "pt",
        "preferred_channel": "email",
    },
    "subject": "Produto em falta",
    "description": "O produto anunciado não estava disponível na loja.",
    "category": "product_availability",
    "severity": "high",
}


async def test_one_complaint_travels_through_all_four_services_in_one_trace(
    platform: Platform, infrastructure, tokens
):
    async with httpx.AsyncClient(timeout=10, headers=await tokens.headers()) as http:
        for service in platform.servers:

            async def ready(service: str = service) -> bool:
                r = await http.get(f"{platform.url(service)}/health/ready")
                return r.status_code == 200 and r.json()["status"] == "ok"

            await eventually(ready, what=f"{service} to be ready")

        created = await http.post(f"{platform.url('intake')}/complaints", json=COMPLAINT)
        assert created.status_code == 201, created.text
        complaint = created.json()
        cid = complaint["complaint_id"]
        assert created.headers["location"] == f"/complaints/{cid}"
        assert complaint["status"] == "received"
        assert (await http.get(f"{platform.url('intake')}/complaints/{cid}")).json() == complaint

        async def case() -> dict | None:
            r = await http.get(f"{platform.url('resolution')}/cases/{cid}")
            return r.json() if r.status_code == 200 else None

        opened = await eventually(case, what="the case to open")
        assert opened["state"] == "opened"
        assert opened["severity"] == "high"
        assert opened["allowed_commands"] == ["assign", "classify"]
        early = await http.post(
            f"{platform.url('resolution')}/cases/{cid}/resolve",
            json={"summary": "too early"},
        )
        assert early.status_code == 409 and early.json()["allowed_commands"] == [
            "assign",
            "classify",
        ]

        resolved = await resolve_case(
            http, platform.url("resolution"), cid, "Reserved one for pick-up"
        )
        assert [h["type"] for h in resolved["history"]] == [
            "CaseOpened",
            "CaseAssigned",
            "CauseIdentified",
            "SolutionProposed",
            "SolutionAgreed",
            "CaseResolved",
        ]

        again = await http.post(
            f"{platform.url('resolution')}/cases/{cid}/resolve",
            json={"summary": "again"},
        )
        assert again.status_code == 409
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json()["state"] == "resolved"

        async def checks() -> list | None:
            r = await http.get(
                f"{platform.url('followup')}/satisfaction-checks", params={"complaint_id": cid}
            )
            return r.json()["items"] or None

        [check] = await eventually(checks, what="the satisfaction check")
        assert check["status"] == "scheduled"
        assert check["channel"] == "email" and check["language"] == "pt"

        async def counted() -> dict | None:
            r = await http.get(f"{platform.url('learning')}/insights/categories")
            body = r.json()
            return body if body["total"] == 1 else None

        insight = await eventually(counted, what="learning to count the complaint")
        assert insight["categories"] == [{"category": "product_availability", "complaints": 1}]

    # what an integrator reading the topic sees
    records = await read_topic(
        infrastructure.kafka_bootstrap, f"{platform.prefix}complaints.intake.v2", count=2
    )
    types = [decode_headers(r.headers)["ce_type"] for r in records]
    assert types == [
        "complaints.intake.ComplaintReceived",
        "complaints.intake.ComplaintAcknowledged",
    ]
    received = records[0]
    headers = decode_headers(received.headers)
    assert headers["ce_type"] == "complaints.intake.ComplaintReceived"
    assert headers["ce_subject"] == cid
    assert headers["ce_source"] == "/complaints/intake"
    assert received.key == cid.encode()
    trace_id = headers["traceparent"].split("-")[1]

    # one trace: the intake request, its publish span, and the handlers in the other three
    spans = platform.spans.get_finished_spans()
    request = next(
        s
        for s in spans
        if s.resource.attributes["service.name"] == "intake" and s.name == "POST /complaints"
    )
    assert f"{request.context.trace_id:032x}" == trace_id
    in_trace = [s for s in spans if s.context.trace_id == request.context.trace_id]
    handlers = {
        s.resource.attributes["service.name"]
        for s in in_trace
        if s.name == f"{platform.prefix}complaints.intake.v2 process"
    }
    assert handlers == {"resolution", "followup", "learning"}
    assert any(s.name == f"{platform.prefix}complaints.intake.v2 publish" for s in in_trace)
    # resolution's CaseOpened, published from the handler's transaction, stays in the trace
    assert any(
        s.name == f"{platform.prefix}complaints.resolution.v2 publish"
        and s.resource.attributes["service.name"] == "resolution"
        for s in in_trace
    )
    # no customer personal data on any span
    for s in spans:
        for value in (s.attributes or {}).values():
            assert "ana@example.org" not in str(value) and "Ana Souza" not in str(value)


async def test_invalid_input_is_a_problem_and_changes_nothing(
    platform: Platform, infrastructure, tokens
):
    async with httpx.AsyncClient(timeout=10, headers=await tokens.headers()) as http:
        bad = {**COMPLAINT, "channel": "pigeon", "customer": {"email": "not-an-address"}}
        r = await http.post(f"{platform.url('intake')}/complaints", json=bad)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        fields = {e["field"] for e in r.json()["errors"]}
        assert {"body.channel", "body.customer.email"} <= fields

        r = await http.post(
            f"{platform.url('intake')}/complaints", json={**COMPLAINT, "category": "weather"}
        )
        assert r.status_code == 422
        [error] = r.json()["errors"]
        assert error["field"] == "body.category" and "product_availability" in error["allowed"]

        r = await http.get(
            f"{platform.url('intake')}/complaints/00000000-0000-0000-0000-000000000000"
        )
        assert r.status_code == 404 and r.json()["status"] == 404
        r = await http.get(f"{platform.url('resolution')}/cases/not-a-uuid")
        assert r.status_code == 422

        # nothing stored, nothing published
        n = await platform.servers["intake"].app.state.runtime.pool.fetchval(
            "SELECT count(*) FROM events"
        )
        assert n == 0
        counts = await platform.servers["learning"].app.state.runtime.pool.fetchval(
            "SELECT count(*) FROM complaint_facts"
        )
        assert counts == 0
