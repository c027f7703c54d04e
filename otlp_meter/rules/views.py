"""What rules read: one record with its resource and scope, and caches shared between rules.

A :class:`RecordView` is one log record or one metric data point. Its :class:`ResourceState` and
:class:`ScopeState` are shared by every record under that resource and scope, so work done once
per resource (indexing attributes, hashing for ids, building expression variables) is not redone
per record. Attribute lists are indexed into a dict lazily, the first time something needs them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
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
from otlp_meter.rules.values import event_source

DataPoint = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint | SummaryDataPoint
AttrMap = dict[str, Any]  # key → KeyValue, or its converted value once read

DEFAULT_SOURCE = "otlp-meter"
_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP AnyValue to plain Python; an empty AnyValue is ``None``."""
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    # None, or string_value_strindex (profiles' string table; meaningless without it)
    return None


def index(kvs: Sequence[KeyValue]) -> AttrMap:
    """``key → KeyValue``: touching ``.value`` costs a wrapper per attribute, most are never read."""
    return {kv.key: kv for kv in kvs}


def lookup(d: AttrMap, keys: tuple[str, ...]) -> Any:
    """The first of ``keys`` with a value in the index ``d``, converting (and caching) as it reads."""
    for key in keys:
        x = d.get(key)
        if x.__class__ is KeyValue:
            x = d[key] = any_value(x.value)
        if x is not None:
            return x
    return None


def whole_map(d: AttrMap) -> dict[str, Any]:
    """Every attribute of an index with a value, converted (the ``attributes`` path)."""
    out = {}
    for key in list(d):
        x = d[key]
        if x.__class__ is KeyValue:
            x = d[key] = any_value(x.value)
        if x is not None:
            out[key] = x
    return out


class ResourceState:
    """One ``ResourceLogs``/``ResourceMetrics``: its attribute index, id hasher and default source."""

    __slots__ = ("_hasher", "_source", "attrs", "cel", "container", "resource", "stream")

    def __init__(self, container: ResourceLogs | ResourceMetrics) -> None:
        self.container = container
        self.resource: Resource = container.resource
        self.attrs: AttrMap | None = None
        self.cel: dict[str, Any] | None = None  # the expression variable, built on first use
        self.stream: hashlib.blake2b | None = None  # cumulative stream key prefix (delta.py)
        self._hasher: hashlib.blake2b | None = None
        self._source: str | None = None

    def attr_map(self) -> AttrMap:
        if self.attrs is None:
            self.attrs = index(self.resource.attributes)
        return self.attrs

    def hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.resource_hasher(self.resource)
        return self._hasher

    def default_source(self) -> str:
        """``service.name`` of the resource if it is a usable source, else ``otlp-meter``."""
        if self._source is None:
            try:
                self._source = event_source(lookup(self.attr_map(), ("service.name",)))
            except ValueError:
                self._source = DEFAULT_SOURCE
        return self._source


class ScopeState:
    """One ``ScopeLogs``/``ScopeMetrics`` under a :class:`ResourceState`."""

    __slots__ = ("_hasher", "attrs", "cel", "container", "res", "scope", "stream")

    def __init__(self, res: ResourceState, container: ScopeLogs | ScopeMetrics) -> None:
        self.res = res
        self.container = container
        self.scope: InstrumentationScope = container.scope
        self.attrs: AttrMap | None = None
        self.cel: dict[str, Any] | None = None
        self.stream: hashlib.blake2b | None = None
        self._hasher: hashlib.blake2b | None = None

    def attr_map(self) -> AttrMap:
        if self.attrs is None:
            self.attrs = index(self.scope.attributes)
        return self.attrs

    def hasher(self) -> hashlib.blake2b:
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
        "attrs",
        "body",
        "cel",
        "cel_context",
        "converted",
        "kvs",
        "metric",
        "metric_key",
        "metric_type",
        "point",
        "received_ns",
        "record",
        "res",
        "scope",
        "time_text",
    )
    record: LogRecord
    metric: Metric
    metric_type: str
    metric_key: bytes
    point: DataPoint

    def __init__(
        self, res: ResourceState, scope: ScopeState, kvs: Sequence[KeyValue], received_ns: int
    ) -> None:
        self.res = res
        self.scope = scope
        self.kvs = kvs  # the record's (log record's or data point's) attributes
        self.received_ns = received_ns
        self.attrs: AttrMap | None = None
        self.body: AttrMap | None = None
        self.cel: dict[str, Any] | None = None  # expression variables as Python values
        self.cel_context: tuple[Any, set[str]] | None = None  # (cel.Context, names added to it)
        self.converted = False
        self._hasher: hashlib.blake2b | None = None
        self.time_text: str | None = None  # the record's own time, formatted once for every rule

    def log_hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.log_record_hasher(self.scope.hasher(), self.record)
        return self._hasher

    def point_hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.point_hasher(self.scope.hasher(), self.metric_key, self.point)
        return self._hasher
