"""Paths into an OTLP record, compiled once into getter closures.

A path such as ``resource.attributes.service.name`` or ``record.body.user`` is parsed when the
rules load and turned into a plain function ``getter(view) -> value | None``. Nothing is parsed
per record. ``None`` always means "no value here"; OTLP's zero values for strings, enums and
timestamps (``""``, ``0``) count as no value, as the OTLP specification reads them.

Values come out as plain Python: AnyValue strings, ints, doubles and bools as themselves, arrays
as lists, kvlists as dicts, bytes as base64 text (what OTLP/JSON shows for ``bytesValue``);
timestamps as integer Unix nanoseconds.

A :class:`RecordView` is what a getter reads: one log record or one metric data point with its
resource and scope. Attribute lists are indexed into a dict lazily, once per record (resource and
scope: once per resource and scope), the first time a getter needs them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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

RuleSignal = Literal["logs", "metrics"]
DataPoint = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint | SummaryDataPoint
AttrMap = dict[str, Any]  # key → KeyValue, or its converted value once read
Getter = Callable[["RecordView"], Any]

DEFAULT_SOURCE = "otlp-meter"


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP AnyValue to plain Python; an empty AnyValue is ``None``."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    # None, or string_value_strindex (profiles' string table; meaningless without it)
    return None


def _index(kvs: Sequence[KeyValue]) -> AttrMap:
    # KeyValue, not its value: touching .value costs a wrapper per attribute, most are never read.
    return {kv.key: kv for kv in kvs}


class ResourceState:
    """One ``ResourceLogs``/``ResourceMetrics``: its attribute index, id hasher and default source."""

    __slots__ = ("_hasher", "_source", "attrs", "container", "resource")

    def __init__(self, container: ResourceLogs | ResourceMetrics) -> None:
        self.container = container
        self.resource: Resource = container.resource
        self.attrs: AttrMap | None = None
        self._hasher: hashlib.blake2b | None = None
        self._source: str | None = None

    def attr_map(self) -> AttrMap:
        if self.attrs is None:
            self.attrs = _index(self.resource.attributes)
        return self.attrs

    def hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.resource_hasher(self.resource)
        return self._hasher

    def default_source(self) -> str:
        """``service.name`` of the resource if it is a usable source, else ``otlp-meter``."""
        if self._source is None:
            try:
                self._source = event_source(_lookup(self.attr_map(), ("service.name",)))
            except ValueError:
                self._source = DEFAULT_SOURCE
        return self._source


class ScopeState:
    """One ``ScopeLogs``/``ScopeMetrics`` under a :class:`ResourceState`."""

    __slots__ = ("_hasher", "attrs", "container", "res", "scope")

    def __init__(self, res: ResourceState, container: ScopeLogs | ScopeMetrics) -> None:
        self.res = res
        self.container = container
        self.scope: InstrumentationScope = container.scope
        self.attrs: AttrMap | None = None
        self._hasher: hashlib.blake2b | None = None

    def attr_map(self) -> AttrMap:
        if self.attrs is None:
            self.attrs = _index(self.scope.attributes)
        return self.attrs

    def hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.scope_hasher(self.res.hasher(), self.scope)
        return self._hasher


class RecordView:
    """One record as rules see it: a log record, or one metric data point.

    The engine sets ``record`` (logs) or ``metric``/``metric_type``/``point`` (metrics) after
    construction; compiled paths only read the fields of their rule's signal.
    """

    __slots__ = (
        "_hasher",
        "attrs",
        "body",
        "kvs",
        "metric",
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
        self._hasher: hashlib.blake2b | None = None
        self.time_text: str | None = None  # the record's own time, formatted once for every rule

    def log_hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.log_record_hasher(self.scope.hasher(), self.record)
        return self._hasher

    def point_hasher(self) -> hashlib.blake2b:
        if self._hasher is None:
            self._hasher = ids.point_hasher(
                self.scope.hasher(), self.metric.name, self.metric_type, self.point
            )
        return self._hasher


# --- getters -------------------------------------------------------------------------------------
# An index maps key → KeyValue until a getter first reads the key; then the converted value replaces
# the KeyValue, so later rules (and, for resource and scope, later records) reuse it. An empty
# AnyValue converts to None, which reads the same as a missing key.


def _lookup(d: AttrMap, keys: tuple[str, ...]) -> Any:
    for key in keys:
        x = d.get(key)
        if x.__class__ is KeyValue:
            x = d[key] = any_value(x.value)
        if x is not None:
            return x
    return None


def _record_attrs(v: RecordView) -> AttrMap:
    d = v.attrs
    if d is None:
        d = v.attrs = _index(v.kvs)
    return d


def _resource_attrs(v: RecordView) -> AttrMap:
    d = v.res.attrs
    return d if d is not None else v.res.attr_map()


def _scope_attrs(v: RecordView) -> AttrMap:
    d = v.scope.attrs
    return d if d is not None else v.scope.attr_map()


def _body_keys(v: RecordView) -> AttrMap:
    d = v.body
    if d is None:
        body = v.record.body
        kvs = body.kvlist_value.values if body.WhichOneof("value") == "kvlist_value" else ()
        d = v.body = _index(kvs)
    return d


def _record_attr(keys: tuple[str, ...]) -> Getter:
    if len(keys) > 1:

        def get_first(v: RecordView) -> Any:
            d = v.attrs
            if d is None:
                d = v.attrs = _index(v.kvs)
            return _lookup(d, keys)

        return get_first
    key, kv_type = keys[0], KeyValue

    def get(v: RecordView) -> Any:  # the hot path, inlined: one index, one key
        d = v.attrs
        if d is None:
            d = v.attrs = _index(v.kvs)
        x = d.get(key)
        if x.__class__ is kv_type:
            x = d[key] = any_value(x.value)
        return x

    return get


def _keyed(index: Callable[[RecordView], AttrMap]) -> Callable[[tuple[str, ...]], Getter]:
    def factory(keys: tuple[str, ...]) -> Getter:
        return lambda v: _lookup(index(v), keys)

    return factory


def _nonzero(value: Any) -> Any:
    return value or None


def _body(v: RecordView) -> Any:
    return any_value(v.record.body)


def _point_value(v: RecordView) -> Any:
    """Number points: the value (int or double); histograms and summaries: their sum."""
    p = v.point
    if isinstance(p, NumberDataPoint):
        kind = p.WhichOneof("value")
        return None if kind is None else getattr(p, kind)
    return _point_sum(v)


def _point_sum(v: RecordView) -> Any:
    p = v.point
    if isinstance(p, NumberDataPoint):
        return None
    if isinstance(p, SummaryDataPoint):
        return p.sum
    return p.sum if p.HasField("sum") else None


def _point_count(v: RecordView) -> Any:
    p = v.point
    return None if isinstance(p, NumberDataPoint) else p.count


_COMMON: dict[str, Getter] = {
    "scope.name": lambda v: v.scope.scope.name or None,
    "scope.version": lambda v: v.scope.scope.version or None,
}
_FIXED: dict[RuleSignal, dict[str, Getter]] = {
    "logs": {
        "record.body": _body,
        "record.severity_text": lambda v: v.record.severity_text or None,
        "record.severity_number": lambda v: _nonzero(v.record.severity_number),
        "record.time": lambda v: v.record.time_unix_nano or None,
        "record.observed_time": lambda v: v.record.observed_time_unix_nano or None,
        "record.event_name": lambda v: v.record.event_name or None,
    },
    "metrics": {
        "metric.name": lambda v: v.metric.name or None,
        "metric.unit": lambda v: v.metric.unit or None,
        "metric.type": lambda v: v.metric_type,
        "point.value": _point_value,
        "point.sum": _point_sum,
        "point.count": _point_count,
        "point.start_time": lambda v: v.point.start_time_unix_nano or None,
        "point.time": lambda v: v.point.time_unix_nano or None,
    },
}
# (prefix, source name, signals it is valid for, getter factory for one or more keys of the source)
_PREFIXED: tuple[tuple[str, str, tuple[RuleSignal, ...], Callable[[tuple[str, ...]], Getter]], ...] = (
    ("resource.attributes.", "resource", ("logs", "metrics"), _keyed(_resource_attrs)),
    ("scope.attributes.", "scope", ("logs", "metrics"), _keyed(_scope_attrs)),
    ("attributes.", "record", ("logs", "metrics"), _record_attr),
    ("record.attributes.", "record", ("logs",), _record_attr),
    ("point.attributes.", "record", ("metrics",), _record_attr),
    ("record.body.", "body", ("logs",), _keyed(_body_keys)),
)
_FACTORIES = {source: factory for _, source, _, factory in _PREFIXED}

PATH_FORMS: dict[RuleSignal, tuple[str, ...]] = {
    signal: (
        *(f"{prefix}<key>" for prefix, _, signals, _ in _PREFIXED if signal in signals),
        *_COMMON,
        *_FIXED[signal],
    )
    for signal in ("logs", "metrics")
}
"""Every path form each signal accepts, for messages and docs."""


class PathError(ValueError):
    """A path that does not name anything in an OTLP record of the rule's signal."""


@dataclass(frozen=True, slots=True)
class PathSpec:
    """A parsed path: a key of an attribute-like map (``source``, ``key``) or a fixed getter."""

    text: str
    source: str = ""
    key: str = ""
    fixed: Getter | None = None


def parse_path(text: str, signal: RuleSignal) -> PathSpec:
    """Parse one path for a rule of ``signal``; raise :class:`PathError` if it names nothing."""
    if text in _COMMON:
        return PathSpec(text, fixed=_COMMON[text])
    other: RuleSignal = "metrics" if signal == "logs" else "logs"
    if text in _FIXED[signal]:
        return PathSpec(text, fixed=_FIXED[signal][text])
    if text in _FIXED[other]:
        raise PathError(f"'{text}' is only available in {other} rules")
    for prefix, source, signals, _ in _PREFIXED:
        if text.startswith(prefix) or text == prefix[:-1]:
            key = text[len(prefix) :]
            if not key:
                raise PathError(f"'{text}' needs a key after '{prefix}'")
            if signal not in signals:
                raise PathError(f"'{prefix}<key>' paths are only available in {other} rules")
            return PathSpec(text, source=source, key=key)
    raise PathError(f"unknown path '{text}'; valid forms: {', '.join(PATH_FORMS[signal])}")


def getter_for(specs: Sequence[PathSpec]) -> Getter:
    """One getter for a path list: the first path with a value wins (``None`` if none has one).

    Consecutive keys of the same map are looked up by one getter, so a list of four alternative
    attribute names costs one call, not four.
    """
    getters: list[Getter] = []
    i = 0
    while i < len(specs):
        spec = specs[i]
        if spec.fixed is not None:
            getters.append(spec.fixed)
            i += 1
            continue
        keys = [spec.key]
        while i + len(keys) < len(specs) and specs[i + len(keys)].source == spec.source:
            keys.append(specs[i + len(keys)].key)
        getters.append(_FACTORIES[spec.source](tuple(keys)))
        i += len(keys)
    if not getters:
        return lambda v: None
    if len(getters) == 1:
        return getters[0]
    chain = tuple(getters)

    def first_present(v: RecordView) -> Any:
        for getter in chain:
            value = getter(v)
            if value is not None:
                return value
        return None

    return first_present


def compile_path(text: str, signal: RuleSignal) -> Getter:
    """Parse and compile a single path."""
    return getter_for([parse_path(text, signal)])
