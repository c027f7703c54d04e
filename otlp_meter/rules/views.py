"""What rules read: one record with its resource and scope, and caches shared between rules.

A :class:`RecordView` is one log record or one metric data point. Its :class:`ResourceState` and
:class:`ScopeState` are shared by every record under that resource and scope, so work done once
per resource (reading attributes, hashing for ids, building expression variables) is not redone
per record.

Attributes are read once per record (resource and scope: once per resource and scope), in one
pass over the ``KeyValue`` list that keeps only the keys some rule reads (:class:`Wanted`,
collected when the rules compile) and converts only their values, into a plain dict
``key → value`` that the compiled rules look keys up in directly. A data point's attributes are
read from its bytes instead, which its id needs anyway (:mod:`attributes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otlp_meter.rules import ids
from otlp_meter.rules.attributes import Keys, read_attributes, select
from otlp_meter.rules.values import event_source

DataPoint = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint | SummaryDataPoint
AttrMap = dict[str, Any]  # key → converted value (None: an empty AnyValue, read as no value)

DEFAULT_SOURCE = "otlp-meter"
_SERVICE_NAME = frozenset({"service.name"})


def whole_map(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    """Every attribute with a value, converted (the ``attributes`` path); last duplicate wins."""
    return {key: value for key, value in select(kvs, None).items() if value is not None}


def _union(sets: Iterable[Keys]) -> Keys:
    out: set[str] = set()
    for keys in sets:
        if keys is None:
            return None
        out |= keys
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Wanted:
    """The attribute keys rules read, per place: the record's attributes, its resource's and
    scope's, and the keys of a map (kvlist) body. None reads every key (views built without
    rules, e.g. by tests, read everything)."""

    record: Keys = None
    resource: Keys = None
    scope: Keys = None
    body: Keys = None

    @staticmethod
    def union(wanted: Iterable[Wanted]) -> Wanted:
        """Every key any of ``wanted`` reads."""
        items = list(wanted)
        return Wanted(
            _union(w.record for w in items),
            _union(w.resource for w in items),
            _union(w.scope for w in items),
            _union(w.body for w in items),
        )


EVERY_KEY = Wanted()
NO_KEY = Wanted(frozenset(), frozenset(), frozenset(), frozenset())


class ResourceState:
    """One ``ResourceLogs``/``ResourceMetrics``: its wanted attributes, id hasher and default source."""

    __slots__ = ("_hasher", "_source", "_whole", "attrs", "cel", "container", "resource", "stream", "wanted")

    def __init__(self, container: ResourceLogs | ResourceMetrics, wanted: Wanted = EVERY_KEY) -> None:
        self.container = container
        self.resource: Resource = container.resource
        self.wanted = wanted
        self.attrs: AttrMap | None = None  # the wanted attributes, read on first use
        self.cel: dict[str, Any] | None = None  # the expression variable, built on first use
        self.stream: ids.Hasher | None = None  # cumulative stream key prefix (delta.py)
        self._hasher: ids.Hasher | None = None
        self._source: str | None = None
        self._whole: dict[str, Any] | None = None

    def values(self) -> AttrMap:
        """The wanted resource attributes (read once per resource)."""
        if self.attrs is None:
            self.attrs = select(self.resource.attributes, self.wanted.resource)
        return self.attrs

    def whole(self) -> dict[str, Any]:
        """Every resource attribute with a value (read once per resource)."""
        if self._whole is None:
            self._whole = whole_map(self.resource.attributes)
        return self._whole

    def hasher(self) -> ids.Hasher:
        if self._hasher is None:
            self._hasher = ids.resource_hasher(self.resource)
        return self._hasher

    def default_source(self) -> str:
        """``service.name`` of the resource if it is a usable source, else ``otlp-meter``."""
        if self._source is None:
            try:
                name = select(self.resource.attributes, _SERVICE_NAME).get("service.name")
                self._source = event_source(name)
            except ValueError:
                self._source = DEFAULT_SOURCE
        return self._source


class ScopeState:
    """One ``ScopeLogs``/``ScopeMetrics`` under a :class:`ResourceState`."""

    __slots__ = (
        "_hasher",
        "_whole",
        "attrs",
        "cel",
        "container",
        "last_time_ms",
        "last_time_ns",
        "last_time_text",
        "res",
        "scope",
        "stream",
    )

    def __init__(self, res: ResourceState, container: ScopeLogs | ScopeMetrics) -> None:
        self.res = res
        self.container = container
        self.scope: InstrumentationScope = container.scope
        self.attrs: AttrMap | None = None
        self.cel: dict[str, Any] | None = None
        self.stream: ids.Hasher | None = None
        self._hasher: ids.Hasher | None = None
        self._whole: dict[str, Any] | None = None
        self.last_time_ns = -1  # the last default event time formatted under this scope, and its text
        self.last_time_text = ""
        self.last_time_ms = 0

    def values(self) -> AttrMap:
        """The wanted scope attributes (read once per scope)."""
        if self.attrs is None:
            self.attrs = select(self.scope.attributes, self.res.wanted.scope)
        return self.attrs

    def whole(self) -> dict[str, Any]:
        """Every scope attribute with a value (read once per scope)."""
        if self._whole is None:
            self._whole = whole_map(self.scope.attributes)
        return self._whole

    def hasher(self) -> ids.Hasher:
        if self._hasher is None:
            self._hasher = ids.scope_hasher(self.res.hasher(), self.scope)
        return self._hasher


class RecordView:
    """One record as rules see it: a log record, or one metric data point.

    The engine sets ``record`` (logs) or ``metric``/``metric_type``/``point`` (metrics) after
    construction; compiled paths only read the fields of their rule's signal. For a cumulative
    point converted to a delta, ``point`` is the delta point and ``converted`` is true.
    """

    __slots__ = (
        "_hasher",
        "_raw",
        "attrs",
        "body",
        "cel",
        "cel_context",
        "converted",
        "metric",
        "metric_key",
        "metric_type",
        "point",
        "received_ns",
        "record",
        "res",
        "scope",
        "time_ms",
        "time_text",
    )
    record: LogRecord
    metric: Metric
    metric_type: str
    metric_key: bytes
    point: DataPoint

    def __init__(self, res: ResourceState, scope: ScopeState, received_ns: int) -> None:
        self.res = res
        self.scope = scope
        self.received_ns = received_ns
        self.attrs: AttrMap | None = None  # the wanted attributes of the record, read on first use
        self.body: AttrMap | None = None  # the wanted keys of a map body, read on first use
        self.cel: dict[str, Any] | None = None  # expression variables as Python values
        self.cel_context: tuple[Any, set[str]] | None = None  # (cel.Context, names added to it)
        self.converted = False
        self._hasher: ids.Hasher | None = None
        self._raw: bytes | None = None  # the record serialized as its id covers it
        self.time_text: str | None = None  # the record's own time, formatted once for every rule
        self.time_ms = 0  # ... and in Unix milliseconds (set with time_text: EncodedEvent.time_ms)

    def values(self) -> AttrMap:
        """The wanted attributes of the record (read once per record, for every rule)."""
        if self.attrs is None:
            self.attrs = select(self.message().attributes, self.res.wanted.record)
        return self.attrs

    def message(self) -> LogRecord | DataPoint:
        """The log record, or the data point (converted, for a cumulative point)."""
        raise NotImplementedError

    @property
    def kvs(self) -> Sequence[KeyValue]:
        """The record's attributes as OTLP ``KeyValue``s."""
        return self.message().attributes

    def hasher(self) -> ids.Hasher:
        """A hasher primed with the record, its resource and scope; copy it per rule for an id."""
        raise NotImplementedError

    def body_values(self) -> AttrMap:
        """The wanted keys of a map (kvlist) body; empty for any other body."""
        if self.body is None:
            body = self.record.body
            kvs = body.kvlist_value.values if body.WhichOneof("value") == "kvlist_value" else ()
            self.body = select(kvs, self.res.wanted.body)
        return self.body


class LogView(RecordView):
    """A log record: the engine sets ``record``."""

    __slots__ = ()

    def message(self) -> LogRecord:
        return self.record

    def raw(self) -> bytes:
        """The record serialized as its id covers it (``ids.log_record_bytes``)."""
        if self._raw is None:
            self._raw = ids.log_record_bytes(self.record)
        return self._raw

    def hasher(self) -> ids.Hasher:
        if self._hasher is None:
            self._hasher = ids.log_record_hasher(self.scope.hasher(), self.raw())
        return self._hasher


class PointView(RecordView):
    """A metric data point: the engine sets ``metric``, ``metric_type``, ``metric_key`` and ``point``.

    Its attributes are read from its bytes: a point reaches the rules only when some rule reads its
    metric, so it is nearly always made an event, whose id hashes those bytes anyway.
    """

    __slots__ = ()

    def message(self) -> DataPoint:
        return self.point

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = ids.point_bytes(self.point)
        return self._raw

    def values(self) -> AttrMap:
        if self.attrs is None:
            self.attrs = read_attributes(self.point, self.raw(), self.res.wanted.record)
        return self.attrs

    def hasher(self) -> ids.Hasher:
        if self._hasher is None:
            self._hasher = ids.point_hasher(self.scope.hasher(), self.metric_key, self.raw())
        return self._hasher
