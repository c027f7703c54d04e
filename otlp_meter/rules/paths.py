"""Paths into an OTLP record, compiled once into getter closures.

A path such as ``resource.attributes.service.name`` or ``record.body.user`` is parsed when the
rules load and turned into a plain function ``getter(view) -> value | None``. Nothing is parsed
per record. ``None`` always means "no value here"; OTLP's zero values for strings, enums and
timestamps (``""``, ``0``) count as no value, as the OTLP specification reads them.

Values come out as plain Python: AnyValue strings, ints, doubles and bools as themselves, arrays
as lists, kvlists as dicts, bytes as base64 text (what OTLP/JSON shows for ``bytesValue``);
timestamps as integer Unix nanoseconds.

A :class:`~otlp_meter.rules.views.RecordView` is what a getter reads: one log record or one metric
data point with its resource and scope. Attribute lists are indexed into a dict lazily, once per
record (resource and scope: once per resource and scope), the first time a getter needs them.
(``codegen.py`` inlines the most common getter, one record attribute, into the rule itself.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint, SummaryDataPoint

from otlp_meter.rules.views import (
    DEFAULT_SOURCE,
    AttrMap,
    DataPoint,
    RecordView,
    ResourceState,
    ScopeState,
    any_value,
    index,
    lookup,
    whole_map,
)

RuleSignal = Literal["logs", "metrics"]
Getter = Callable[[RecordView], Any]

__all__ = [
    "DEFAULT_SOURCE",
    "PATH_FORMS",
    "DataPoint",
    "Getter",
    "PathError",
    "PathSpec",
    "RecordView",
    "ResourceState",
    "RuleSignal",
    "ScopeState",
    "any_value",
    "compile_path",
    "getter_for",
    "parse_path",
]


# --- getters -------------------------------------------------------------------------------------
# An index maps key → KeyValue until a getter first reads the key; then the converted value replaces
# the KeyValue, so later rules (and, for resource and scope, later records) reuse it. An empty
# AnyValue converts to None, which reads the same as a missing key.


def _record_attrs(v: RecordView) -> AttrMap:
    d = v.attrs
    if d is None:
        d = v.attrs = index(v.kvs)
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
        d = v.body = index(kvs)
    return d


def _record_attr(keys: tuple[str, ...]) -> Getter:
    if len(keys) > 1:

        def get_first(v: RecordView) -> Any:
            d = v.attrs
            if d is None:
                d = v.attrs = index(v.kvs)
            return lookup(d, keys)

        return get_first
    key, kv_type = keys[0], KeyValue

    def get(v: RecordView) -> Any:  # the hot path, inlined: one index, one key
        d = v.attrs
        if d is None:
            d = v.attrs = index(v.kvs)
        x = d.get(key)
        if x.__class__ is kv_type:
            x = d[key] = any_value(x.value)
        return x

    return get


def _keyed(index: Callable[[RecordView], AttrMap]) -> Callable[[tuple[str, ...]], Getter]:
    def factory(keys: tuple[str, ...]) -> Getter:
        return lambda v: lookup(index(v), keys)

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


def _point_bound(field: str) -> Getter:
    def get(v: RecordView) -> Any:
        p = v.point
        if isinstance(p, NumberDataPoint | SummaryDataPoint) or not p.HasField(field):  # type: ignore[arg-type]
            return None
        return getattr(p, field)

    return get


def _whole(attr_index: Callable[[RecordView], AttrMap]) -> Getter:
    return lambda v: whole_map(attr_index(v)) or None


_COMMON: dict[str, Getter] = {
    "scope.name": lambda v: v.scope.scope.name or None,
    "scope.version": lambda v: v.scope.scope.version or None,
    "resource.attributes": _whole(_resource_attrs),
    "scope.attributes": _whole(_scope_attrs),
    "attributes": _whole(_record_attrs),
}
_FIXED: dict[RuleSignal, dict[str, Getter]] = {
    "logs": {
        "record.body": _body,
        "record.severity_text": lambda v: v.record.severity_text or None,
        "record.severity_number": lambda v: _nonzero(v.record.severity_number),
        "record.time": lambda v: v.record.time_unix_nano or None,
        "record.observed_time": lambda v: v.record.observed_time_unix_nano or None,
        "record.event_name": lambda v: v.record.event_name or None,
        "record.attributes": _whole(_record_attrs),
    },
    "metrics": {
        "metric.name": lambda v: v.metric.name or None,
        "metric.unit": lambda v: v.metric.unit or None,
        "metric.type": lambda v: v.metric_type,
        "point.value": _point_value,
        "point.sum": _point_sum,
        "point.count": _point_count,
        "point.min": _point_bound("min"),
        "point.max": _point_bound("max"),
        "point.start_time": lambda v: v.point.start_time_unix_nano or None,
        "point.time": lambda v: v.point.time_unix_nano or None,
        "point.attributes": _whole(_record_attrs),
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
