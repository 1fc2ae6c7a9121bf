"""An unexpected error: a 500 problem, and its text (which may quote data) in no span or log."""

from __future__ import annotations

import logging

import httpx
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from complaints_shared.problems import install_problem_handlers
from complaints_shared.telemetry import setup_telemetry

MARKER = "eva.kovacs@example.hu"


async def test_an_unexpected_error_is_a_500_problem_whose_text_no_span_or_log_holds(caplog):
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("test", exporter)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError(f"Key (email)=({MARKER}) already exists")

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=telemetry.provider, exclude_spans=["receive", "send"]
    )
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
