"""Prometheus metrics of one service, on a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
            "Outbox events not yet acknowledged by the broker (every instance looks)",
            registry=self.registry,
        )
        self.outbox_oldest_unsent = Gauge(
            "complaints_outbox_oldest_unsent_seconds",
            "Age of the oldest event not yet acknowledged by the broker (0 when none);"
            " every instance looks, so a stalled relay leader shows on the others",
            registry=self.registry,
        )
        self.outbox_parked = Gauge(
            "complaints_outbox_parked",
            "Outbox events the broker refused for their size; their streams wait behind them",
            registry=self.registry,
        )
        self.background_restarts = Counter(
            "complaints_background_restarts",
            "Background tasks (relay, consumers, workers) restarted after they failed",
            ["task"],
            registry=self.registry,
        )
        self.consumed = Counter(
            "complaints_consumer_events",
            "Events handled by a consumer, by outcome"
            " (processed, duplicate, ignored, dead_lettered)",
            ["consumer", "outcome"],
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "complaints_consumer_lag",
            "Records of a partition this process holds that are not handled yet (the end the"
            " broker last reported minus the next offset to handle); from the first batch the"
            " process took of it, or its first fetch when there was nothing to take",
            ["consumer", "topic", "partition"],
            registry=self.registry,
        )
        # labels of bounded values only: the route template (or "(unmatched)"), never the path
        self.http_requests = Counter(
            "complaints_http_requests",
            "HTTP requests answered, by method, route template and status code (probes and"
            " metrics not counted)",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "complaints_http_request_duration_seconds",
            "Time from a request's arrival to its answer sent, by method and route template",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.consumer_retries = Counter(
            "complaints_consumer_retries",
            "Transient handler failures retried with backoff",
            ["consumer"],
            registry=self.registry,
        )
