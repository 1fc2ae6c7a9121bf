"""The HTTP server span of each request: in the caller's trace, named by its route, with the
stable HTTP semantic conventions' attributes, and never holding the request's path or query;
and its request counted and timed by route template."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from opentelemetry._logs import _internal as otel_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import generate_latest

from complaints_shared.metrics import ServiceMetrics
from complaints_shared.privacy import new_master_key
from complaints_shared.problems import install_problem_handlers
from complaints_shared.service import ServiceSpec, create_app
from complaints_shared.settings import ServiceSettings
from complaints_shared.telemetry import ServerSpans, setup_telemetry

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TOKEN = "c2VjcmV0LXN1cnZleS10b2tlbg"
EMAIL = "eva.kovacs@example.hu"


class SeenAtStart(SpanProcessor):
    """What a span processor sees when each span starts (some export or sample then)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.seen.append(f"{span.name} {dict(span.attributes or {})}")


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


@pytest.fixture
def served(
    metrics: ServiceMetrics,
) -> Iterator[tuple[httpx.AsyncClient, InMemorySpanExporter, SeenAtStart]]:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("test", exporter)
    at_start = SeenAtStart()
    telemetry.provider.add_span_processor(at_start)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/surveys/{token}")
    async def survey(token: str) -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/boom")
    async def boom() -> None:
        raise ValueError(f"Key (email)=({EMAIL}) already exists")

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(ServerSpans, tracer=telemetry.tracer, routes=app.routes, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://complaints.example:8003")
    yield client, exporter, at_start


def _told(span: ReadableSpan) -> str:
    return repr((span.name, dict(span.attributes or {}), span.status.description, span.events))


async def test_a_request_span_is_the_callers_child_named_by_its_route(served):
    client, exporter, at_start = served
    r = await client.get(
        f"/surveys/{TOKEN}?customer={EMAIL}&limit=5",
        headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "user-agent": "browser/1.0"},
    )
    assert r.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /surveys/{token}"
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.is_remote
    assert (format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")) == (
        TRACE,
        SPAN,
    )
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/surveys/{token}",
        "url.query": "customer=REDACTED&limit=REDACTED",
        "http.route": "/surveys/{token}",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "server.address": "complaints.example",
        "server.port": 8003,
        "user_agent.original": "browser/1.0",
    }
    assert span.status.status_code is StatusCode.UNSET
    # neither the survey's token nor the e-mail address, at the end or when it started
    for told in [_told(span), *at_start.seen]:
        assert TOKEN not in told and EMAIL not in told and "eva.kovacs" not in told


async def test_without_a_trace_context_a_request_starts_its_own_trace(served):
    client, exporter, _ = served
    await client.get(f"/surveys/{TOKEN}")
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and span.context.trace_id != 0


async def test_an_unmatched_path_is_told_as_such(served):
    client, exporter, _ = served
    r = await client.get(f"/customers/{EMAIL}/data")
    assert r.status_code == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET"
    attributes = dict(span.attributes or {})
    assert attributes["url.path"] == "(unmatched)" and "http.route" not in attributes
    assert attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET  # a client's error is not the server's
    assert EMAIL not in _told(span)


async def test_a_failed_request_is_an_error_span_without_the_errors_text(served):
    client, exporter, _ = served
    r = await client.post("/boom")
    assert r.status_code == 500
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /boom"
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "500"
    assert EMAIL not in _told(span) and "Traceback" not in _told(span)


async def test_probes_have_no_span(served):
    client, exporter, _ = served
    assert (await client.get("/health/live")).status_code == 200
    assert exporter.get_finished_spans() == ()


def _requests(metrics: ServiceMetrics, method: str, route: str, status: str) -> float | None:
    labels = {"method": method, "route": route, "status": status}
    return metrics.registry.get_sample_value("complaints_http_requests_total", labels)


async def test_requests_are_counted_and_timed_by_route_template_and_status(served, metrics):
    client, _, _ = served
    for _ in range(2):
        await client.get(f"/surveys/{TOKEN}?customer={EMAIL}")
    await client.post("/boom")
    await client.get(f"/customers/{EMAIL}/data")
    await client.request("FROBNICATE", f"/surveys/{TOKEN}")
    await client.get("/health/live")
    assert _requests(metrics, "GET", "/surveys/{token}", "200") == 2
    assert _requests(metrics, "POST", "/boom", "500") == 1
    assert _requests(metrics, "GET", "(unmatched)", "404") == 1
    assert _requests(metrics, "_OTHER", "/surveys/{token}", "405") == 1
    timed = {"method": "GET", "route": "/surveys/{token}"}
    get = metrics.registry.get_sample_value
    assert get("complaints_http_request_duration_seconds_count", timed) == 2
    assert 0 < (get("complaints_http_request_duration_seconds_sum", timed) or 0) < 10
    exposed = generate_latest(metrics.registry).decode()
    assert "/health/live" not in exposed  # probes are not counted
    assert TOKEN not in exposed and "eva.kovacs" not in exposed and "FROBNICATE" not in exposed


async def test_a_method_http_does_not_know_is_named_as_other(served):
    client, exporter, _ = served
    await client.request("FROBNICATE", f"/surveys/{TOKEN}")
    (span,) = exporter.get_finished_spans()
    assert span.name == "HTTP /surveys/{token}"
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "FROBNICATE"


async def test_a_services_app_keeps_fastapis_own_telemetry_off_whatever_provider_is_set(
    monkeypatch,
):
    """FastAPI's native telemetry starts itself once any global OpenTelemetry provider is set
    (zero-code instrumentation does that, so does ``FASTAPI_OTEL_AUTO_CONFIGURE`` with an OTLP
    endpoint): spans holding the request's path and query as they came (a survey link's
    token, a customer's e-mail), three more spans a request, and an unexpected error's text
    logged.  A service's app leaves its HTTP telemetry to its own span: nothing reaches the
    global providers, and each request has its one span."""
    global_spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(global_spans))
    global_logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(global_logs))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", tracer_provider)
    monkeypatch.setattr(otel_logs, "_LOGGER_PROVIDER", logger_provider)

    router = APIRouter()

    @router.get("/surveys/{token}")
    async def survey(token: str) -> dict[str, str]:
        return {"ok": "yes"}

    @router.post("/boom")
    async def boom() -> None:
        raise ValueError(f"Key (email)=({EMAIL}) already exists")

    own = InMemorySpanExporter()
    spec = ServiceSpec(
        name="test",
        title="test",
        description="a service's app",
        default_port=8000,
        package="complaints_shared",
        own_topic=lambda topics: topics.intake,
        routers=[router],
    )
    app = create_app(
        spec,
        ServiceSettings(
            oidc_issuer="https://idp.example/realms/complaints", keyring_master_key=new_master_key()
        ),
        telemetry=setup_telemetry("test", own),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://complaints.example") as c:
        assert (await c.get(f"/surveys/{TOKEN}?customer={EMAIL}")).status_code == 200
        assert (await c.post("/boom")).status_code == 500

    assert global_spans.get_finished_spans() == ()
    assert global_logs.get_finished_logs() == ()
    spans = own.get_finished_spans()
    assert [s.name for s in spans] == ["GET /surveys/{token}", "POST /boom"]
    for span in spans:
        assert TOKEN not in _told(span) and "eva.kovacs" not in _told(span)
