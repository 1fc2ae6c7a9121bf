"""An unexpected error: a 500 problem, and its text (which may quote data) in no span or log."""

from __future__ import annotations

import logging

import httpx
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from complaints_shared.problems import install_problem_handlers
from complaints_shared.telemetry import ServerSpans, setup_telemetry

MARKER = "eva.kovacs@example.hu"


async def test_an_unexpected_error_is_a_500_problem_whose_text_no_span_or_log_holds(caplog):
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("test", exporter)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError(f"Key (email)=({MARKER}) already exists")

    app.add_middleware(ServerSpans, tracer=telemetry.tracer, routes=app.routes)
    transport = httpx.ASGITransport(app=app)  # an error raised out of the app fails the call
    with caplog.at_level(logging.DEBUG):
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            r = await client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert MARKER not in r.text
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"  # from the 500
    told = repr(
        (
            dict(span.attributes or {}),
            span.status.description,
            [(e.name, dict(e.attributes or {})) for e in span.events],
        )
    )
    assert MARKER not in told and "Traceback" not in told
    assert "ValueError" in caplog.text and MARKER not in caplog.text


async def test_a_failed_request_is_logged_by_its_route_not_its_path(caplog):
    """A path can hold a secret (a survey link's token is the customer's credential) or a
    customer's key: the log line of a failure names the route template instead."""
    app = FastAPI()
    install_problem_handlers(app)
    token = "Qm9va2luZy1zZWNyZXQtdG9rZW4"

    @app.get("/surveys/{token}")
    async def survey(token: str) -> None:
        raise ConnectionRefusedError(111, "Connect call failed")  # the database is away

    @app.post("/customers/{customer_key}/data")
    async def export(customer_key: str) -> None:
        raise ValueError("a bug")

    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.DEBUG):
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            unavailable = await client.get(f"/surveys/{token}")
            failed = await client.post(f"/customers/{MARKER}/data")
    assert unavailable.status_code == 503 and failed.status_code == 500
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("complaints"))
    assert token not in logged and MARKER not in logged
    assert "GET /surveys/{token}: unavailable (ConnectionRefusedError)" in logged
    assert "POST /customers/{customer_key}/data failed: ValueError" in logged
