"""OpenTelemetry set-up and the messaging spans of the relay and the consumers.

Each service owns a :class:`Telemetry` (its own tracer provider and service name), so several
services can run in one process, as the end-to-end tests do.  Spans carry ids, types and
topics only: no customer personal data.  HTTP spans (:class:`ServerSpans`) show the route
template instead of the path and the query's names without their values; they are a service
app's only HTTP telemetry (FastAPI's own is kept off: :data:`FASTAPI_TELEMETRY_OFF`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl

from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.routing import Match

from complaints_shared.envelope import Event, StoredEvent
from complaints_shared.metrics import ServiceMetrics


@dataclass(frozen=True, slots=True)
class Telemetry:
    service_name: str
    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        self.provider.shutdown()


def setup_telemetry(service_name: str, exporter: SpanExporter | None = None) -> Telemetry:
    """A tracer provider for one service.

    Spans go to ``exporter`` when given (tests use an in-memory one) and to OTLP/HTTP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces variant) is set; ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` are honoured as usual.
    """
    resource = Resource.create({"service.name": service_name, "service.namespace": "complaints"})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Telemetry(service_name, provider, provider.get_tracer("complaints_shared"))


# A version-00 ``traceparent`` exactly as the W3C propagator writes it.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_DEFAULT_PROPAGATORS = [TraceContextTextMapPropagator, W3CBaggagePropagator]
_checked: tuple[object, bool] | None = None  # the global propagator, and whether it is the default
_FLAGS = {f"{n:02x}": TraceFlags(n) for n in range(256)}  # a traceparent's flags, read once
_NO_CONTEXT = Context()  # what a read context starts from (copied, never changed)


def _default_propagators() -> bool:
    """Whether the global propagator is OpenTelemetry's default: W3C trace context, then
    W3C baggage (``OTEL_PROPAGATORS`` unset, or ``tracecontext,baggage``)."""
    global _checked
    current = propagate.get_global_textmap()
    if _checked is None or _checked[0] is not current:
        inner = getattr(current, "_propagators", None)
        _checked = (current, [type(p) for p in inner or ()] == _DEFAULT_PROPAGATORS)
    return _checked[1]


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The trace context carried in message headers (W3C ``traceparent``/``tracestate``).

    Every consumed event and every event appended from it needs its own, so the usual case is
    read directly: a ``traceparent`` alone (no ``tracestate``, no ``baggage``), under the
    default propagators, gives the very context they would give, its span's ids read from the
    header only when first asked for (most of a backlog's events append and log nothing, and
    their batch's span links only to the first :data:`MAX_LINKS`).  Anything else goes through
    the configured propagators."""
    traceparent = carrier.get("traceparent")
    if (
        traceparent is not None
        and "tracestate" not in carrier
        and "baggage" not in carrier
        and _default_propagators()
    ):
        return trace.set_span_in_context(_RemoteParent(traceparent), _NO_CONTEXT)
    return propagate.extract(dict(carrier))


_W3C = TraceContextTextMapPropagator()


class _RemoteParent(NonRecordingSpan):
    """The remote span a ``traceparent`` names, as the W3C propagator reads it (an invalid
    one: no span), read when its context is first asked for."""

    def __init__(self, traceparent: str) -> None:  # not super().__init__: every event makes one
        self._context = INVALID_SPAN_CONTEXT
        self._traceparent: str | None = traceparent

    def get_span_context(self) -> SpanContext:
        if self._traceparent is not None:
            self._context = _read_traceparent(self._traceparent)
            self._traceparent = None
        return self._context


def _read_traceparent(traceparent: str) -> SpanContext:
    """A version-00 ``traceparent`` as the W3C propagator writes it, read directly (in less
    than half its time); any other by the propagator."""
    if (m := _TRACEPARENT.fullmatch(traceparent)) is not None:
        trace_id, span_id = int(m[1], 16), int(m[2], 16)
        if trace_id and span_id:  # all zeros: invalid, which the propagator decides
            return SpanContext(trace_id, span_id, is_remote=True, trace_flags=_FLAGS[m[3]])
    context = _W3C.extract({"traceparent": traceparent})
    return trace.get_current_span(context).get_span_context()


# A batch of up to this many messages gets a span per message, each in its message's trace; a
# larger batch (a backlog, a replay) gets one span, linked to at most MAX_LINKS of their traces
# (the SDK's default limit), as the messaging conventions have it for batches.
TRACE_EACH_UP_TO = 16
MAX_LINKS = 128


def links_to(carriers: Iterable[Mapping[str, str]]) -> list[trace.Link]:
    """Links to the traces the first :data:`MAX_LINKS` carriers (message headers) hold."""
    return links_to_contexts(extract_context(c) for c in islice(carriers, MAX_LINKS))


def links_to_contexts(contexts: Iterable[Context]) -> list[trace.Link]:
    """Links to the first :data:`MAX_LINKS` of ``contexts`` (extracted ones) that hold a span."""
    links = []
    for context in islice(contexts, MAX_LINKS):
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return links


def batch_attributes(operation: str, topics: Sequence[str], count: int) -> dict[str, str | int]:
    """A batch span's messaging attributes: its destination when it has one topic."""
    span_attrs = messaging_attributes(operation, topics[0])
    if len(set(topics)) > 1:
        del span_attrs["messaging.destination.name"]
    span_attrs["messaging.batch.message_count"] = count
    return span_attrs


def batch_span_name(operation: str, topics: Sequence[str]) -> str:
    """``"<topic> <operation>"``, or the operation alone for a batch across topics."""
    return f"{topics[0]} {operation}" if len(set(topics)) == 1 else operation


def inject_context(span: Span) -> dict[str, str]:
    """W3C headers that make the receiver's work a child of ``span``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def messaging_attributes(
    operation: str, topic: str, event: Event[Any] | StoredEvent | None = None
) -> dict[str, str | int]:
    """Messaging semantic-convention attributes for a Kafka operation on ``topic``."""
    attrs: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
    }
    if event is not None:
        attrs["messaging.message.id"] = str(event.event_id)
        attrs["messaging.kafka.message.key"] = str(event.stream_id)
        attrs["complaints.event.type"] = event.type
        attrs["complaints.event.version"] = event.version
    return attrs


def safe_message(exc: BaseException) -> str:
    """What may be told of an error in telemetry, logs and dead-letter headers: the platform's
    own messages (written not to hold personal data), else only the error's type (a driver's or
    a library's message may quote the values it choked on)."""
    if type(exc).__module__.startswith("complaints_"):
        return str(exc)[:1000]
    return f"{type(exc).__name__} (message withheld: it may quote data)"


def record_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with the error's type and safe message (never its raw text)."""
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {safe_message(exc)}"))
    span.set_attribute("error.type", type(exc).__qualname__)
    span.add_event("exception", {"exception.type": type(exc).__qualname__})


def record_status(span: Span, status: int, *, failed_from: int) -> None:
    """An HTTP answer's status on ``span``; from ``failed_from`` on (a server's 5xx, a
    client's 4xx, as the semantic conventions have it), the span failed with it as
    ``error.type``."""
    span.set_attribute("http.response.status_code", status)
    if status >= failed_from:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


REDACTED = "REDACTED"
UNMATCHED = "(unmatched)"


def redacted_target(routes: Sequence[Any], scope: Mapping[str, Any]) -> tuple[str, str]:
    """The request's path as its route template (:func:`route_template`) and its query with
    every value redacted (``customer=REDACTED``)."""
    return route_template(routes, scope), _redacted_query(scope)


def route_template(routes: Sequence[Any], scope: Mapping[str, Any]) -> str:
    """The request's path as its route template (``/surveys/{token}``: no token, no e-mail in
    a path), or :data:`UNMATCHED`.  The route is the one the router chose, once it has run
    (``scope["route"]``), else the first of ``routes`` that matches."""
    path: str | None = getattr(scope.get("route"), "path", None)
    if path is not None:
        return path
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


def _redacted_query(scope: Mapping[str, Any]) -> str:
    raw = scope.get("query_string") or b""
    if not raw:
        return ""
    names = [n for n, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)]
    return "&".join(f"{n}={REDACTED}" for n in names)


# FastAPI's own telemetry, off: it turns itself on once any global OpenTelemetry provider is
# set (zero-code instrumentation does, so does FASTAPI_OTEL_AUTO_CONFIGURE with an OTLP
# endpoint), and its spans hold a request's path and query as they came (a survey link's
# token, a customer's e-mail), beside three more spans a request.  A service's HTTP telemetry
# is its own: ServerSpans, the service's metrics and the problem handlers' log lines.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}

# request headers that carry a trace context, by their raw names (ASGI lower-cases them)
_CARRIERS = {b"traceparent": "traceparent", b"tracestate": "tracestate", b"baggage": "baggage"}
# the methods told by name; any other is "_OTHER" (a client chooses it: no unbounded labels)
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


class ServerSpans:
    """One ``SERVER`` span for each HTTP request, except those under the ``excluded`` path
    prefixes (probes, metrics): a child of the W3C trace context in the request's headers, and
    the current span while the app handles the request, so that its work and the events it
    appends are in the request's trace.

    Invariant: the span never holds the request's path or query, not even for a moment (a
    survey link's token is the customer's credential; a query may name a customer): it
    starts as ``"{method}"`` with the query's parameter names only, and once answered takes the
    route template (:func:`route_template`) as its name (``"POST /complaints"``), ``url.path``
    and ``http.route``.  Attributes follow the stable HTTP semantic conventions
    (``http.request.method``, ``url.scheme``, ``url.path``, ``url.query``, ``http.route``,
    ``http.response.status_code``, ``server.address``, ``server.port``,
    ``network.protocol.version``, ``user_agent.original``; a method not in HTTP's list is
    ``_OTHER``, the span named ``"HTTP"``).  Not the client's address: a customer's (opening a
    survey link) is personal data.  A 5xx answer sets the error status and
    ``error.type`` (the code); an error raised through is told by :func:`record_error`.

    With ``metrics``, each request is counted (``complaints_http_requests_total``) and timed
    (``complaints_http_request_duration_seconds``) by method, route template and status: an
    error raised through counts as the 500 it is answered with.
    """

    def __init__(
        self,
        app: Any,
        tracer: Tracer,
        routes: Sequence[Any],
        metrics: ServiceMetrics | None = None,
        excluded: tuple[str, ...] = ("/health/", "/metrics"),
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.routes = routes
        self.metrics = metrics
        self.excluded = excluded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.excluded):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        span_attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if server := scope.get("server"):
            span_attrs["server.address"] = server[0]
            if server[1] is not None:
                span_attrs["server.port"] = server[1]
        if method == "_OTHER":
            span_attrs["http.request.method_original"] = scope["method"]
        if query := _redacted_query(scope):
            span_attrs["url.query"] = query
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in _CARRIERS:
                carrier[_CARRIERS[name]] = value.decode("latin-1")
            elif name == b"user-agent":
                span_attrs["user_agent.original"] = value.decode("latin-1")
        status = 0

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        named = method if method != "_OTHER" else "HTTP"
        with self.tracer.start_as_current_span(
            named,
            context=extract_context(carrier),
            kind=SpanKind.SERVER,
            attributes=span_attrs,
            record_exception=False,  # record_error tells the type and a safe message only
            set_status_on_exception=False,
        ) as span:
            raised = False
            try:
                await self.app(scope, receive, sending)
            except Exception as exc:
                raised = True
                record_error(span, exc)
                raise
            finally:
                path = route_template(self.routes, scope)
                span.set_attribute("url.path", path)
                if path != UNMATCHED:
                    span.set_attribute("http.route", path)
                    span.update_name(f"{named} {path}")
                if status and not raised:  # (raised: told by record_error)
                    record_status(span, status, failed_from=500)
                elif status:
                    span.set_attribute("http.response.status_code", status)
                if self.metrics is not None:
                    answered = str(status) if status and not raised else "500"
                    self.metrics.http_requests.labels(method, path, answered).inc()
                    self.metrics.http_duration.labels(method, path).observe(
                        time.perf_counter() - started
                    )


PRODUCER = SpanKind.PRODUCER
CONSUMER = SpanKind.CONSUMER
