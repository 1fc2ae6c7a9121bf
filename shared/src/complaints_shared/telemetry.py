"""OpenTelemetry set-up and the messaging spans of the relay and the consumers.

Each service owns a :class:`Telemetry` (its own tracer provider and service name), so several
services can run in one process, as the end-to-end tests do.  Spans carry ids, types and
topics only: no customer personal data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Tracer

from complaints_shared.envelope import Event


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


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The trace context carried in message headers (W3C ``traceparent``/``tracestate``)."""
    return propagate.extract(dict(carrier))


def inject_context(span: Span) -> dict[str, str]:
    """W3C headers that make the receiver's work a child of ``span``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def messaging_attributes(
    operation: str, topic: str, event: Event[Any] | None = None
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


PRODUCER = SpanKind.PRODUCER
CONSUMER = SpanKind.CONSUMER
