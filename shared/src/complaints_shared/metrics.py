"""Prometheus metrics of one service, on a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.outbox_published = Counter(
            "complaints_outbox_published",
            "Outbox events acknowledged by the broker",
            ["topic"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "complaints_outbox_pending",
            "Outbox events not yet acknowledged by the broker (at the relay's last look)",
            registry=self.registry,
        )
        self.consumed = Counter(
            "complaints_consumer_events",
            "Events handled by a consumer, by outcome"
            " (processed, duplicate, ignored, dead_lettered)",
            ["consumer", "outcome"],
            registry=self.registry,
        )
        self.consumer_retries = Counter(
            "complaints_consumer_retries",
            "Transient handler failures retried with backoff",
            ["consumer"],
            registry=self.registry,
        )
