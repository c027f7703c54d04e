"""Metrics computed at scrape time: the queue's state and ledger, the migration aliases, and the
mapping of what sources report onto the source metrics.

The queue is read, not instrumented: its counters are committed with the data they count, so the
values scraped are exactly what ``otlp-meter queue stats`` prints, include what other processes did
(a ``dlq replay``) and survive restarts. The aliases are derived from the canonical instruments
rather than counted a second time, so the two can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from otlp_meter.telemetry import spec
from otlp_meter.telemetry.spec import MetricSpec

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase

    from otlp_meter.queue.types import QueueStats
    from otlp_meter.telemetry.metrics import Metrics
    from otlp_meter.telemetry.peers import PeerMetrics


def _gauge(declared: MetricSpec, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(declared.name, declared.help, value=value)


def _counter(declared: MetricSpec, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(declared.family, declared.help, value=value)


def _labelled_counter(declared: MetricSpec, values: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(declared.family, declared.help, labels=declared.labels)
    for label, value in values.items():
        family.add_metric([label], value)
    return family


_QUEUE_SPECS = (
    spec.QUEUE_DEPTH,
    spec.QUEUE_SIZE,
    spec.QUEUE_CAPACITY,
    spec.QUEUE_OLDEST_AGE,
    spec.QUEUE_LEASED,
    spec.QUEUE_FULL,
    spec.QUEUE_STORAGE_USED,
    spec.QUEUE_STORAGE_CAPACITY,
    spec.QUEUE_DEAD,
    spec.QUEUE_DEAD_SIZE,
    spec.QUEUE_DEAD_CAPACITY,
    spec.QUEUE_CORRUPT_HELD,
    spec.QUEUE_DEDUPE_KEYS,
    spec.QUEUE_COMMITS,
    spec.QUEUE_APPENDED,
    spec.QUEUE_DEDUPLICATED,
    spec.QUEUE_DELIVERED,
    spec.QUEUE_DEAD_LETTERED,
    spec.QUEUE_REJECTED,
    spec.QUEUE_CORRUPT,
    spec.QUEUE_REPLAYED,
    spec.QUEUE_DEAD_REMOVED,
    spec.QUEUE_DEDUPE_FORGOTTEN,
)


def _describe(specs: Iterable[MetricSpec]) -> list[Metric]:
    """Empty families, so the registry knows (and reserves) the names before the first scrape."""
    kinds = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "untyped": "unknown"}
    return [Metric(d.family, d.help, kinds[d.type]) for d in specs]


class QueueCollector(Collector):
    """The queue's gauges and its durable ledger, from ``read()`` (``LmdbQueue.stats``) at scrape time.

    Nothing is exposed while ``read`` returns None (the queue is not open yet). The grouped commits
    are this process's, plus those the intake workers reported (``peers``).
    """

    def __init__(self, peers: PeerMetrics | None = None) -> None:
        self.read: Callable[[], QueueStats | None] = lambda: None
        self.clock: Callable[[], float] = time.time
        self._peers = peers

    def describe(self) -> list[Metric]:
        return _describe(_QUEUE_SPECS)

    def collect(self) -> list[Metric]:
        stats = self.read()
        if stats is None:
            return []
        oldest = stats.oldest_enqueued_at
        families: list[Metric] = [
            _gauge(spec.QUEUE_DEPTH, stats.depth),
            _gauge(spec.QUEUE_SIZE, stats.bytes),
            _gauge(spec.QUEUE_CAPACITY, stats.capacity_bytes),
            _gauge(spec.QUEUE_OLDEST_AGE, max(0.0, self.clock() - oldest) if oldest is not None else 0.0),
            _gauge(spec.QUEUE_LEASED, stats.leased),
            _gauge(spec.QUEUE_FULL, 1.0 if stats.full else 0.0),
            _gauge(spec.QUEUE_STORAGE_USED, stats.storage_used_bytes),
            _gauge(spec.QUEUE_STORAGE_CAPACITY, stats.map_size),
            _gauge(spec.QUEUE_DEAD, stats.dead_letters),
            _gauge(spec.QUEUE_DEAD_SIZE, stats.dead_bytes),
            _gauge(spec.QUEUE_DEAD_CAPACITY, stats.dead_capacity_bytes),
            _gauge(spec.QUEUE_CORRUPT_HELD, stats.corrupt_records),
            _gauge(spec.QUEUE_DEDUPE_KEYS, stats.dedupe_keys),
            _counter(spec.QUEUE_COMMITS, stats.commits_total + self._peer_commits()),
        ]
        ledger = stats.accounting
        if ledger is not None:
            families += [
                _counter(spec.QUEUE_APPENDED, ledger.accepted - ledger.deduplicated),
                _counter(spec.QUEUE_DEDUPLICATED, ledger.deduplicated),
                _counter(spec.QUEUE_DELIVERED, ledger.delivered),
                _counter(spec.QUEUE_DEAD_LETTERED, ledger.dead_lettered),
                _counter(spec.QUEUE_REJECTED, ledger.records_rejected),
                _counter(spec.QUEUE_CORRUPT, ledger.corrupt),
                _counter(spec.QUEUE_REPLAYED, ledger.replayed),
                _labelled_counter(
                    spec.QUEUE_DEAD_REMOVED, {"replayed": ledger.dead_replayed, "purged": ledger.dead_purged}
                ),
                _labelled_counter(
                    spec.QUEUE_DEDUPE_FORGOTTEN,
                    {"expired": ledger.dedupe_expired, "evicted": ledger.dedupe_evicted},
                ),
            ]
        return families

    def _peer_commits(self) -> float:
        if self._peers is None:
            return 0.0
        return self._peers.total().counters.get(spec.QUEUE_COMMITS.family, {}).get((), 0.0)


# How prometheus_client writes ``le`` values ("2.5e+08", "+Inf"), typed for the call sites.
_go_float: Callable[[float], str] = floatToGoString


def _total(instrument: Collector, suffix: str) -> float:
    """The sum over all label sets of one sample kind (``_total``, ``_count``) of an instrument."""
    return sum(
        sample.value
        for family in instrument.collect()
        for sample in family.samples
        if sample.name == family.name + suffix
    )


def _buckets_ns(
    instrument: MetricWrapperBase, bounds: Iterable[float]
) -> tuple[list[tuple[str, float]], float]:
    """A seconds histogram's buckets (summed over its label sets) and sum, in nanoseconds; all
    zero before the first observation (a histogram always has its buckets)."""
    counts = dict.fromkeys([*bounds, float("inf")], 0.0)
    total = 0.0
    for family in instrument.collect():
        for sample in family.samples:
            if sample.name == family.name + "_bucket":
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
            elif sample.name == family.name + "_sum":
                total += sample.value
    buckets = [(_go_float(bound * 1e9), count) for bound, count in sorted(counts.items())]
    return buckets, total * 1e9


class AliasCollector(Collector):
    """Redpanda Connect's generic names (``batch_created`` …), derived from ``metrics`` when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return _describe(spec.ALIASES)

    def collect(self) -> list[Metric]:
        m = self._m
        created = _total(m.exporter_batches_created, "_total")
        values = (
            (spec.ALIAS_BATCH_CREATED, created),
            (spec.ALIAS_BATCH_SENT, _total(m.exporter_sent_batches, "_total")),
            (spec.ALIAS_BUFFER_RECEIVED, _total(m.everywhere(m.queue_append_duration), "_count")),
            (spec.ALIAS_BUFFER_SENT, created),
        )
        families: list[Metric] = [UnknownMetricFamily(d.name, d.help, value=v) for d, v in values]
        buckets, total = _buckets_ns(m.exporter_batch_duration, spec.DELIVERY_BUCKETS)
        latency = spec.ALIAS_BUFFER_LATENCY
        families.append(HistogramMetricFamily(latency.name, latency.help, buckets=buckets, sum_value=total))
        return families


# What sources report (``SourceStats`` names) → the metric that counts it. Names not listed here
# are still exported, as ``source_operations_total{operation=<name>}`` / ``source_gauge{gauge=<name>}``.
_OBJECTS = ("objects_processed", "points", "objects_completed")  # generic; ticking sources; s3


class SourceMetrics:
    """A ``SourceObserver`` (``otlp_meter.sources.base``): maps source counts and gauges to metrics.

    ``kind``/``name`` become the ``source``/``name`` labels; ``what`` picks the metric. The names a
    source may use are its own (bounded by its code), so unknown ones are kept as a label value
    rather than dropped.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._operations = metrics.source_operations
        self._gauges = metrics.source_gauge
        self._lag = metrics.source_cursor_lag
        self._counts = {
            "ticks_completed": metrics.source_ticks_run,
            "ticks_caught_up": metrics.source_ticks_caught_up,
            "ticks_skipped": metrics.source_ticks_skipped,
            "ticks_failed": metrics.source_ticks_failed,
            **dict.fromkeys(_OBJECTS, metrics.source_objects_processed),
        }

    def count(self, kind: str, name: str, what: str, amount: float) -> None:
        if amount <= 0:  # counters only go up; a zero or negative report is nothing to count
            return
        counter = self._counts.get(what)
        if counter is not None:
            counter.labels(kind, name).inc(amount)
        else:
            self._operations.labels(kind, name, what).inc(amount)

    def gauge(self, kind: str, name: str, what: str, value: float) -> None:
        if what == "cursor_lag_seconds":
            self._lag.labels(kind, name).set(value)
        else:
            self._gauges.labels(kind, name, what).set(value)
