"""Prometheus metrics (prometheus-client), one registry per application so tests can run several at once.

HTTP requests are counted by the middleware in app/api/observability.py, labelled with the route *template*
(`/dicom-web/studies/{study}`), never the concrete path, so the number of series stays bounded. Instance
counts come from the event bus (the ingest and delete paths publish; metrics subscribe, as ARCHITECTURE.md
asks); the held-instance gauge is read from the repository at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.core.lifecycle.events import Event, EventBus, InstanceDeleted, InstanceReplaced, InstanceStored

# Latency buckets in seconds: QIDO and metadata answers are milliseconds, study retrieves can take minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dicomweb_http_requests", "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"), registry=self.registry,
        )
        self.latency = Histogram(
            "dicomweb_http_request_duration_seconds", "Time from request to last byte sent, by route template.",
            ("method", "route"), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.received = Counter(
            "dicomweb_http_received_bytes", "Request body bytes received, by route template.", ("route",),
            registry=self.registry,
        )
        self.sent = Counter(
            "dicomweb_http_sent_bytes", "Response body bytes sent, by route template.", ("route",),
            registry=self.registry,
        )
        self.instances = Counter(
            "dicomweb_instances_events", "Instances stored, replaced or deleted (every door).", ("event",),
            registry=self.registry,
        )
        self.associations = Counter(
            "dicomweb_dimse_associations", "DIMSE associations, by outcome (accepted, rejected).", ("outcome",),
            registry=self.registry,
        )
        self.held = Gauge("dicomweb_instances_held", "Instances held by the archive.", registry=self.registry)
        for event in ("stored", "replaced", "deleted"):
            self.instances.labels(event)

    def observe_request(
        self, method: str, route: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if received:
            self.received.labels(route).inc(received)
        if sent:
            self.sent.labels(route).inc(sent)

    def attach(self, events: EventBus) -> None:
        events.subscribe(self._on_event, InstanceStored, InstanceReplaced, InstanceDeleted)

    async def _on_event(self, event: Event) -> None:
        names: dict[type[Event], str] = {
            InstanceStored: "stored", InstanceReplaced: "replaced", InstanceDeleted: "deleted"
        }
        name = names.get(type(event))
        if name is not None:
            self.instances.labels(name).inc()

    def exposition(self) -> bytes:
        """The text exposition format (`/metrics`)."""
        return generate_latest(self.registry)
