"""The intake workers' share of the per-process metrics (``service.workers`` > 1).

An intake worker counts what it serves in its own instruments, like any process, but serves no
``/metrics``. Every :data:`REPORT_INTERVAL` seconds, and once more when it stops, it sends the
primary a :class:`Snapshot` of the instruments it shares (:meth:`Metrics.snapshot
<otlp_meter.telemetry.metrics.Metrics.snapshot>`): the cumulative value of every series, and for a
histogram its cumulative bucket counts and sum. It is one JSON line on the worker's control pipe
(:mod:`otlp_meter.workers`)::

    {"type": "metrics",
     "counters": {"otlp_meter_receiver_requests": [[["grpc", "logs", "ok"], 120], ...], ...},
     "histograms": {"otlp_meter_queue_append_duration_seconds": [[[], [0, 3, ..., 120], 0.42]], ...}}

The primary keeps the latest snapshot of every worker process in :class:`PeerMetrics` and adds
them to its own series when scraped (:class:`WithPeers` wraps each shared instrument in the
registry). Snapshots are cumulative, so one that is late or skipped loses nothing; the next
carries it. When a worker process ends (its control pipe closes), its last snapshot is folded into
the retired base of its slot, so the sums never drop when the worker is started again.

What is lost: when a worker dies without a clean stop (SIGKILL, a crash), what it counted after the
last snapshot the primary read — at most :data:`REPORT_INTERVAL` of its traffic while the primary
keeps reading (a snapshot is skipped, not queued, while the previous one is still unwritten, so a
stalled primary widens the window by its stall). A clean stop sends a final snapshot after the last
request was answered, so nothing is lost. Gauges are not shared (none of the intake's instruments
is one); ``process_*`` stays the primary's own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from otlp_meter.telemetry.spec import MetricSpec

# How prometheus_client writes ``le`` values ("2.5e+08", "+Inf"), typed for the call sites.
_go_float: Callable[[float], str] = floatToGoString

REPORT_INTERVAL = 1.0
"""Seconds between an intake worker's snapshots."""
MESSAGE_TYPE = "metrics"
"""The ``type`` of a snapshot on the control pipe."""

Labels = tuple[str, ...]
Buckets = tuple[float, ...]
"""Cumulative bucket counts, one per bound and the last for ``+Inf`` (which is the count)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What a family's series look like: checked on every snapshot before it is kept."""

    kind: Literal["counter", "histogram"]
    labels: int
    buckets: int = 0
    """Bucket counts per series of a histogram, ``+Inf`` included."""


@dataclass(slots=True)
class Snapshot:
    """Cumulative values of one process: family → label values → value (or buckets and sum)."""

    counters: dict[str, dict[Labels, float]] = field(default_factory=dict)
    histograms: dict[str, dict[Labels, tuple[Buckets, float]]] = field(default_factory=dict)

    def plus(self, other: Snapshot) -> Snapshot:
        """A new snapshot: this one and ``other`` added series by series."""
        counters = {name: dict(series) for name, series in self.counters.items()}
        for name, series in other.counters.items():
            mine = counters.setdefault(name, {})
            for labels, value in series.items():
                mine[labels] = mine.get(labels, 0.0) + value
        histograms = {name: dict(series) for name, series in self.histograms.items()}
        for name, hseries in other.histograms.items():
            hmine = histograms.setdefault(name, {})
            for labels, (buckets, total) in hseries.items():
                known = hmine.get(labels)
                if known is None:
                    hmine[labels] = (buckets, total)
                else:
                    hmine[labels] = (
                        tuple(a + b for a, b in zip(known[0], buckets, strict=True)),
                        known[1] + total,
                    )
        return Snapshot(counters, histograms)

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready message (labels as lists, integral values as integers: compact)."""
        return {
            "type": MESSAGE_TYPE,
            "counters": {
                name: [[list(labels), _compact(value)] for labels, value in series.items()]
                for name, series in self.counters.items()
                if series
            },
            "histograms": {
                name: [
                    [list(labels), [_compact(count) for count in buckets], _compact(total)]
                    for labels, (buckets, total) in series.items()
                ]
                for name, series in self.histograms.items()
                if series
            },
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any], shapes: Mapping[str, Shape]) -> Snapshot:
        """Parse and check a worker's message against ``shapes``; raises ValueError if it does not fit.

        Families the primary does not know are ignored (there are none while both run the same
        code); a series whose labels or buckets do not fit rejects the whole snapshot, since the
        exposition must stay valid.
        """
        snapshot = cls()
        counters, histograms = message.get("counters", {}), message.get("histograms", {})
        if not isinstance(counters, dict) or not isinstance(histograms, dict):
            raise ValueError("counters and histograms must be objects")
        for name, rows in counters.items():
            shape = shapes.get(name)
            if shape is None or shape.kind != "counter":
                continue
            series: dict[Labels, float] = {}
            for row in _rows(rows, 2):
                series[_labels(row[0], shape)] = _count(row[1])
            snapshot.counters[name] = series
        for name, rows in histograms.items():
            shape = shapes.get(name)
            if shape is None or shape.kind != "histogram":
                continue
            hseries: dict[Labels, tuple[Buckets, float]] = {}
            for row in _rows(rows, 3):
                counts = row[1]
                if not isinstance(counts, list) or len(counts) != shape.buckets:
                    raise ValueError(f"{name}: expected {shape.buckets} bucket counts")
                buckets = tuple(_count(count) for count in counts)
                if any(a > b for a, b in itertools.pairwise(buckets)):
                    raise ValueError(f"{name}: bucket counts must be cumulative")
                hseries[_labels(row[0], shape)] = (buckets, _number(row[2]))
            snapshot.histograms[name] = hseries
        return snapshot


def _compact(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _count(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError(f"not a count: {value!r}")
    return number


def _rows(rows: object, width: int) -> Iterable[list[Any]]:
    if not isinstance(rows, list):
        raise ValueError("series must be a list")
    for row in rows:
        if not isinstance(row, list) or len(row) != width:
            raise ValueError(f"a series must be a list of {width}")
        yield row


def _labels(values: object, shape: Shape) -> Labels:
    if (
        not isinstance(values, list)
        or len(values) != shape.labels
        or not all(isinstance(v, str) for v in values)
    ):
        raise ValueError(f"expected {shape.labels} label values")
    return tuple(values)


class PeerMetrics:
    """The primary's view of its intake workers' snapshots.

    A worker *process* is known by its ``link`` (one per control pipe, new with every start) and
    sits in a ``slot``. :meth:`update` replaces the link's snapshot; :meth:`retire` (its pipe
    closed) folds it into the slot's retired base. The sums exposed are the bases plus the live
    snapshots, so they never go down while the primary runs. Called on the primary's event loop;
    the scrape reads immutable snapshots and may run anywhere.
    """

    def __init__(self) -> None:
        self.shapes: dict[str, Shape] = {}
        self._live: dict[int, tuple[int, Snapshot]] = {}
        self._retired: dict[int, Snapshot] = {}
        self._total: Snapshot | None = Snapshot()

    def declare(self, name: str, shape: Shape) -> None:
        self.shapes[name] = shape

    def update(self, link: int, slot: int, message: Mapping[str, Any]) -> None:
        """Keep ``message`` (a worker's snapshot) as the latest of ``link``; ValueError if invalid."""
        self._live[link] = (slot, Snapshot.from_message(message, self.shapes))
        self._total = None

    def retire(self, link: int) -> None:
        """The worker process behind ``link`` ended: its last snapshot joins its slot's base."""
        live = self._live.pop(link, None)
        if live is None:
            return
        slot, snapshot = live
        self._retired[slot] = self._retired.get(slot, Snapshot()).plus(snapshot)
        self._total = None

    def total(self) -> Snapshot:
        """Every worker's counts: the retired bases and the live snapshots added up."""
        total = self._total
        if total is None:
            total = Snapshot()
            for snapshot in [*self._retired.values(), *(s for _, s in list(self._live.values()))]:
                total = total.plus(snapshot)
            self._total = total
        return total


class WithPeers(Collector):
    """One shared instrument as the registry collects it: this process's series plus the workers'.

    A series only the workers have is added without ``_created`` (it is optional in both formats);
    ``process_*`` and everything not wrapped stay this process's own.
    """

    def __init__(
        self,
        instrument: Counter | Histogram,
        declared: MetricSpec,
        peers: PeerMetrics,
        buckets: Buckets = (),
    ) -> None:
        self.instrument = instrument
        self.declared = declared
        self._peers = peers
        histogram = declared.type == "histogram"
        self._bounds = [_go_float(b) for b in (*buckets, math.inf)] if histogram else []
        self._index = {le: i for i, le in enumerate(self._bounds)}
        if histogram:
            peers.declare(declared.family, Shape("histogram", len(declared.labels), len(self._bounds)))
        else:
            peers.declare(declared.family, Shape("counter", len(declared.labels)))

    def describe(self) -> list[Metric]:
        return list(self.instrument.describe())

    def own(self, snapshot: Snapshot) -> None:
        """Add this process's own values to ``snapshot`` (what a worker reports)."""
        [family] = self.instrument.collect()
        names = self.declared.labels
        if self.declared.type == "counter":
            total = family.name + "_total"
            snapshot.counters[family.name] = {
                tuple(s.labels[n] for n in names): s.value for s in family.samples if s.name == total
            }
            return
        buckets: dict[Labels, list[float]] = {}
        sums: dict[Labels, float] = {}
        for s in family.samples:
            key = tuple(s.labels[n] for n in names)
            if s.name == family.name + "_bucket":
                buckets.setdefault(key, []).append(s.value)
            elif s.name == family.name + "_sum":
                sums[key] = s.value
        snapshot.histograms[family.name] = {key: (tuple(b), sums.get(key, 0.0)) for key, b in buckets.items()}

    def collect(self) -> list[Metric]:
        families = list(self.instrument.collect())
        total = self._peers.total()
        if self.declared.type == "counter":
            counters = total.counters.get(self.declared.family)
            return [self._merge_counter(f, counters) for f in families] if counters else families
        histograms = total.histograms.get(self.declared.family)
        return [self._merge_histogram(f, histograms) for f in families] if histograms else families

    def _labels(self, sample: Sample) -> Labels:
        return tuple(sample.labels[n] for n in self.declared.labels)

    def _merge_counter(self, family: Metric, peers: Mapping[Labels, float]) -> Metric:
        merged = Metric(family.name, family.documentation, family.type, family.unit)
        name = family.name + "_total"
        seen: set[Labels] = set()
        for sample in family.samples:
            if sample.name == name:
                key = self._labels(sample)
                seen.add(key)
                sample = sample._replace(value=sample.value + peers.get(key, 0.0))
            merged.samples.append(sample)
        for key, value in peers.items():
            if key not in seen:
                merged.samples.append(Sample(name, dict(zip(self.declared.labels, key, strict=True)), value))
        return merged

    def _merge_histogram(self, family: Metric, peers: Mapping[Labels, tuple[Buckets, float]]) -> Metric:
        merged = Metric(family.name, family.documentation, family.type, family.unit)
        seen: set[Labels] = set()
        for sample in family.samples:
            suffix = sample.name[len(family.name) :]
            extra = peers.get(self._labels(sample))
            if extra is not None:
                buckets, total = extra
                seen.add(self._labels(sample))
                if suffix == "_bucket":
                    sample = sample._replace(value=sample.value + buckets[self._index[sample.labels["le"]]])
                elif suffix == "_count":
                    sample = sample._replace(value=sample.value + buckets[-1])
                elif suffix == "_sum":
                    sample = sample._replace(value=sample.value + total)
            merged.samples.append(sample)
        for key, (buckets, total) in peers.items():
            if key in seen:
                continue
            labels = dict(zip(self.declared.labels, key, strict=True))
            for le, count in zip(self._bounds, buckets, strict=True):
                merged.samples.append(Sample(family.name + "_bucket", {**labels, "le": le}, count))
            merged.samples.append(Sample(family.name + "_count", labels, buckets[-1]))
            merged.samples.append(Sample(family.name + "_sum", labels, total))
        return merged
