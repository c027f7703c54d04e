"""The instruments of the metrics spec (:mod:`otlp_meter.telemetry.spec`, ``docs/metrics.md``).

Components receive a :class:`Metrics` instance (built on an injected registry, so tests can build
as many as they like) and only touch its attributes; every instrument is made from its declaration
in the spec, so names, help and labels cannot drift from the documentation. Label values stay
low-cardinality: see the label table in ``docs/metrics.md``.

The instruments of the intake (receivers, servers, rules, the queue's appends and commits) are
*shared*: an intake worker sends their values to the primary (:meth:`Metrics.snapshot`), and the
primary's registry collects them with the workers' values added (:mod:`otlp_meter.telemetry.peers`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.registry import Collector

from otlp_meter import __version__, native
from otlp_meter.telemetry import spec
from otlp_meter.telemetry.collectors import AliasCollector, QueueCollector, SourceMetrics
from otlp_meter.telemetry.peers import PeerMetrics, Shape, Snapshot, WithPeers
from otlp_meter.telemetry.spec import (
    BATCH_SIZE_BUCKETS,
    DELIVERY_BUCKETS,
    LATENCY_BUCKETS,
    SIZE_BUCKETS,
    MetricSpec,
)

if TYPE_CHECKING:
    from otlp_meter.queue.types import QueueStats


_M = TypeVar("_M", Counter, Gauge, Histogram)


class Children(Generic[_M]):
    """The children of one labelled instrument by label values, each looked up once.

    ``labels()`` validates and joins its arguments and takes a lock on every call (~1 µs): too much
    for what is counted on every request. ``children[transport, signal].inc()`` is a dict lookup.
    A child is made on first use, exactly as ``labels()`` would make it, so the series exposed do
    not change. Label values must be low-cardinality (they are: see ``docs/metrics.md``).
    """

    __slots__ = ("_made", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._made: dict[tuple[str, ...], _M] = {}

    def __getitem__(self, values: tuple[str, ...]) -> _M:
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self._metric.labels(*values)
        return child


def _counter(declared: MetricSpec, registry: CollectorRegistry) -> Counter:
    return Counter(declared.family, declared.help, declared.labels, registry=registry)


def _gauge(declared: MetricSpec, registry: CollectorRegistry) -> Gauge:
    return Gauge(declared.family, declared.help, declared.labels, registry=registry)


def _histogram(declared: MetricSpec, registry: CollectorRegistry, buckets: tuple[float, ...]) -> Histogram:
    return Histogram(declared.family, declared.help, declared.labels, buckets=buckets, registry=registry)


class Metrics:
    """All instruments, registered on ``registry`` (a fresh one by default).

    ``migration_aliases`` adds the Redpanda Connect names (``telemetry.metrics.migration_aliases``);
    ``process`` adds prometheus_client's process and platform collectors.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        migration_aliases: bool = False,
        process: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # What every process measures of the intake: an intake worker reports its values to the
        # primary (``snapshot``), which adds them to its own when scraped (``peers``).
        self.peers = PeerMetrics()
        self._shared: list[WithPeers] = []
        # Receivers and servers
        self.receiver_accepted_records = self._shared_counter(spec.RECEIVER_ACCEPTED)
        self.receiver_refused_records = self._shared_counter(spec.RECEIVER_REFUSED)
        self.receiver_requests = self._shared_counter(spec.RECEIVER_REQUESTS)
        self.receiver_request_size = self._shared_histogram(spec.RECEIVER_SIZE, SIZE_BUCKETS)
        self.receiver_request_duration = self._shared_histogram(spec.RECEIVER_DURATION, LATENCY_BUCKETS)
        self.receiver_auth_failures = self._shared_counter(spec.RECEIVER_AUTH)
        self.receiver_limit_violations = self._shared_counter(spec.RECEIVER_LIMITS)
        self.server_connections_closed = self._shared_counter(spec.SERVER_CLOSED)
        self.tls_reloads = self._shared_counter(spec.TLS_RELOADS)
        # Rules
        self.rules_matched = self._shared_counter(spec.RULES_MATCHED)
        self.rules_unmatched = self._shared_counter(spec.RULES_UNMATCHED)
        self.rules_rejected = self._shared_counter(spec.RULES_REJECTED)
        self.rules_cumulative_points = self._shared_counter(spec.RULES_CUMULATIVE)
        self.rules_cumulative_streams_expired = _counter(spec.RULES_CUMULATIVE_EXPIRED, r)  # the primary's
        # Queue: what is measured in this process; its state and ledger are read at scrape time.
        self.queue_append_duration = self._shared_histogram(spec.QUEUE_APPEND_DURATION, LATENCY_BUCKETS)
        self.queue_commit_duration = self._shared_histogram(spec.QUEUE_COMMIT_DURATION, LATENCY_BUCKETS)
        self.queue_commit_batch_size = self._shared_histogram(spec.QUEUE_COMMIT_BATCH, BATCH_SIZE_BUCKETS)
        self._queue = QueueCollector(self.peers)
        self.peers.declare(spec.QUEUE_COMMITS.family, Shape("counter", 0))  # from queue.stats()
        r.register(self._queue)
        # Exporter
        self.exporter_batches_created = _counter(spec.EXPORTER_CREATED, r)
        self.exporter_sent_batches = _counter(spec.EXPORTER_SENT_BATCHES, r)
        self.exporter_sent_events = _counter(spec.EXPORTER_SENT_EVENTS, r)
        self.exporter_failed_requests = _counter(spec.EXPORTER_FAILED, r)
        self.exporter_retries = _counter(spec.EXPORTER_RETRIES, r)
        self.exporter_splits = _counter(spec.EXPORTER_SPLITS, r)
        self.exporter_dead_lettered_events = _counter(spec.EXPORTER_DEAD, r)
        self.exporter_in_flight = _gauge(spec.EXPORTER_IN_FLIGHT, r)
        self.exporter_request_duration = _histogram(spec.EXPORTER_REQUEST_DURATION, r, LATENCY_BUCKETS)
        self.exporter_batch_duration = _histogram(spec.EXPORTER_BATCH_DURATION, r, DELIVERY_BUCKETS)
        self.exporter_last_success = _gauge(spec.EXPORTER_LAST_SUCCESS, r)
        # Sources
        self.source_ticks_run = _counter(spec.SOURCE_TICKS_RUN, r)
        self.source_ticks_caught_up = _counter(spec.SOURCE_TICKS_CAUGHT_UP, r)
        self.source_ticks_skipped = _counter(spec.SOURCE_TICKS_SKIPPED, r)
        self.source_ticks_failed = _counter(spec.SOURCE_TICKS_FAILED, r)
        self.source_objects_processed = _counter(spec.SOURCE_OBJECTS, r)
        self.source_cursor_lag = _gauge(spec.SOURCE_CURSOR_LAG, r)
        self.source_operations = _counter(spec.SOURCE_OPERATIONS, r)
        self.source_gauge = _gauge(spec.SOURCE_GAUGE, r)
        self.sources = SourceMetrics(self)
        """The ``SourceObserver`` to hand to sources: maps what they report onto the metrics above."""
        # Process
        self.workers = _gauge(spec.WORKERS, r)
        self.worker_exits = _counter(spec.WORKER_EXITS, r)
        _gauge(spec.BUILD_INFO, r).labels(__version__, str(native.available()).lower()).set(1)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        if migration_aliases:
            r.register(AliasCollector(self))

    def _shared_counter(self, declared: MetricSpec) -> Counter:
        counter = Counter(declared.family, declared.help, declared.labels, registry=None)
        self._share(WithPeers(counter, declared, self.peers))
        return counter

    def _shared_histogram(self, declared: MetricSpec, buckets: tuple[float, ...]) -> Histogram:
        histogram = Histogram(declared.family, declared.help, declared.labels, buckets=buckets, registry=None)
        self._share(WithPeers(histogram, declared, self.peers, buckets))
        return histogram

    def _share(self, collector: WithPeers) -> None:
        self.registry.register(collector)
        self._shared.append(collector)

    def everywhere(self, instrument: Counter | Histogram) -> Collector:
        """What the registry collects of ``instrument``: with the intake workers' values if shared."""
        for shared in self._shared:
            if shared.instrument is instrument:
                return shared
        return instrument

    def snapshot(self) -> dict[str, Any]:
        """This process's values of the shared instruments, as an intake worker reports them
        (:mod:`otlp_meter.telemetry.peers`), with ``otlp_meter_queue_commits_total``."""
        snapshot = Snapshot()
        for shared in self._shared:
            shared.own(snapshot)
        stats = self._queue.read()
        if stats is not None:
            snapshot.counters[spec.QUEUE_COMMITS.family] = {(): float(stats.commits_total)}
        return snapshot.to_message()

    def observe_queue(
        self, read: Callable[[], QueueStats | None], clock: Callable[[], float] = time.time
    ) -> None:
        """Expose the queue's state and ledger, read at scrape time from ``read`` (None: not open).

        ``clock`` (Unix seconds) dates the oldest event's age.
        """
        self._queue.read = read
        self._queue.clock = clock

    def observe_commit(self, seconds: float, operations: int) -> None:
        """One grouped write transaction: how long it took and how many operations it committed.

        A plain callable, so the queue's writer thread can report without knowing about metrics
        (prometheus_client instruments are thread-safe).
        """
        self.queue_commit_duration.observe(seconds)
        self.queue_commit_batch_size.observe(operations)
