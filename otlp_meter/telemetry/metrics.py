"""The one metrics spec: every metric otlp-meter exports is declared here, nowhere else.

Components receive a :class:`Metrics` instance (built on an injected registry, so tests can build
as many as they like) and only ever touch the attributes below. Label values stay low-cardinality:
transport (grpc, http_protobuf, http_json, events_api, telemetry), signal (logs, metrics, traces,
events), rule, reason, exporter, status class, server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_PREFIX = "otlp_meter"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """A snapshot of the queue, read at scrape time."""

    depth: int
    bytes: int
    capacity_bytes: int
    dead_letters: int
    oldest_age_seconds: float


class _QueueCollector(Collector):
    def __init__(self, read: Callable[[], QueueGauges | None]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        snapshot = self._read()
        if snapshot is None:
            return []
        families = [
            ("queue_depth_events", "Events stored and not yet delivered.", snapshot.depth),
            ("queue_size_bytes", "Bytes of events stored and not yet delivered.", snapshot.bytes),
            (
                "queue_capacity_bytes",
                "Byte limit of the queue; intake is refused beyond it.",
                snapshot.capacity_bytes,
            ),
            (
                "queue_dead_letters",
                "Events and records held in the dead-letter store.",
                snapshot.dead_letters,
            ),
            (
                "queue_oldest_event_age_seconds",
                "Age of the oldest undelivered event (0 when empty).",
                snapshot.oldest_age_seconds,
            ),
        ]
        return [GaugeMetricFamily(f"{_PREFIX}_{name}", doc, value=value) for name, doc, value in families]


class Metrics:
    """All instruments, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Receivers
        self.receiver_accepted_records = Counter(
            f"{_PREFIX}_receiver_accepted_records",
            "Records accepted by a receiver (made durable or matched no rule).",
            ["transport", "signal"],
            registry=r,
        )
        self.receiver_refused_records = Counter(
            f"{_PREFIX}_receiver_refused_records",
            "Records refused by a receiver, by reason.",
            ["transport", "signal", "reason"],
            registry=r,
        )
        self.receiver_requests = Counter(
            f"{_PREFIX}_receiver_requests",
            "Requests handled by a receiver, by outcome.",
            ["transport", "signal", "outcome"],
            registry=r,
        )
        self.receiver_request_duration = Histogram(
            f"{_PREFIX}_receiver_request_duration_seconds",
            "Time from request decoded to answer ready.",
            ["transport", "signal"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.receiver_auth_failures = Counter(
            f"{_PREFIX}_receiver_auth_failures",
            "Requests refused for missing or invalid credentials, by receiver (otlp_grpc, otlp_http, "
            "events_api, telemetry) and reason (missing, invalid).",
            ["receiver", "reason"],
            registry=r,
        )
        self.receiver_limit_violations = Counter(
            f"{_PREFIX}_receiver_limit_violations",
            "Requests refused for breaking a limit (attributes, attribute_value, events, body).",
            ["transport", "limit"],
            registry=r,
        )
        # Servers (every listener: otlp_grpc, otlp_http, events_api, telemetry)
        self.server_connections_closed = Counter(
            f"{_PREFIX}_server_connections_closed",
            "Connections the server closed to protect itself (header_timeout, header_too_large, "
            "body_timeout, connection_limit).",
            ["server", "reason"],
            registry=r,
        )
        self.tls_reloads = Counter(
            f"{_PREFIX}_tls_reloads",
            "Certificate reloads after the files changed (outcome: ok, failed; a failed reload keeps "
            "the previous certificate).",
            ["server", "outcome"],
            registry=r,
        )
        # Rules
        self.rules_matched = Counter(
            f"{_PREFIX}_rules_matched_records", "Records a rule matched.", ["rule"], registry=r
        )
        self.rules_unmatched = Counter(
            f"{_PREFIX}_rules_unmatched_records", "Records no rule matched (dropped).", ["signal"], registry=r
        )
        self.rules_rejected = Counter(
            f"{_PREFIX}_rules_rejected_records",
            "Records a rule matched but could not map (dead-lettered).",
            ["signal"],
            registry=r,
        )
        # Queue
        self.queue_appended = Counter(
            f"{_PREFIX}_queue_appended_events", "Events committed to the queue.", registry=r
        )
        self.queue_deduplicated = Counter(
            f"{_PREFIX}_queue_deduplicated_events",
            "Events dropped at append because their (source, id) was seen within the dedupe window.",
            registry=r,
        )
        self.queue_commit_duration = Histogram(
            f"{_PREFIX}_queue_append_duration_seconds",
            "Time an append waited for its grouped, synced commit.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Exporter
        self.exporter_sent_events = Counter(
            f"{_PREFIX}_exporter_sent_events", "Events delivered and acknowledged.", ["exporter"], registry=r
        )
        self.exporter_sent_batches = Counter(
            f"{_PREFIX}_exporter_sent_batches", "Batches delivered.", ["exporter"], registry=r
        )
        self.exporter_failed_requests = Counter(
            f"{_PREFIX}_exporter_failed_requests",
            "Delivery attempts that failed, by status class (network, 4xx, 5xx, 429, auth).",
            ["exporter", "status_class"],
            registry=r,
        )
        self.exporter_retries = Counter(
            f"{_PREFIX}_exporter_retries", "Delivery attempts that were retries.", ["exporter"], registry=r
        )
        self.exporter_dead_lettered_events = Counter(
            f"{_PREFIX}_exporter_dead_lettered_events",
            "Events the server refused, moved to dead letters.",
            ["exporter"],
            registry=r,
        )
        self.exporter_splits = Counter(
            f"{_PREFIX}_exporter_batch_splits",
            "Refused batches split to isolate bad events.",
            ["exporter"],
            registry=r,
        )
        self.exporter_in_flight = Gauge(
            f"{_PREFIX}_exporter_in_flight_batches", "Batches being delivered now.", ["exporter"], registry=r
        )
        self.exporter_request_duration = Histogram(
            f"{_PREFIX}_exporter_request_duration_seconds",
            "Duration of one delivery attempt.",
            ["exporter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.exporter_last_success = Gauge(
            f"{_PREFIX}_exporter_last_success_timestamp_seconds",
            "Unix time of the last delivered batch.",
            ["exporter"],
            registry=r,
        )
        self._queue_collector: _QueueCollector | None = None

    def observe_queue(self, read: Callable[[], QueueGauges | None]) -> None:
        """Expose the queue's gauges, read at scrape time from ``read``."""
        if self._queue_collector is not None:
            self.registry.unregister(self._queue_collector)
        self._queue_collector = _QueueCollector(read)
        self.registry.register(self._queue_collector)
