"""Paths into an OTLP record, compiled once into getter closures.

A path such as ``resource.attributes.service.name`` or ``record.body.user`` is parsed when the
rules load and turned into a plain function ``getter(view) -> value | None``. Nothing is parsed
per record. ``None`` always means "no value here"; OTLP's zero values for strings, enums and
timestamps (``""``, ``0``) count as no value, as the OTLP specification reads them.

Values come out as plain Python: AnyValue strings, ints, doubles and bools as themselves, arrays
as lists, kvlists as dicts, bytes as base64 text (what OTLP/JSON shows for ``bytesValue``);
timestamps as integer Unix nanoseconds.

A :class:`~otlp_meter.rules.views.RecordView` is what a getter reads: one log record or one metric
data point with its resource and scope. Attributes are read into dicts lazily, once per record
(resource and scope: once per resource and scope), the first time something needs them.
(``codegen.py`` inlines keyed paths, the common case, into the rule itself as dict lookups.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint, SummaryDataPoint

from otlp_meter.rules.attributes import any_value
from otlp_meter.rules.views import (
    DEFAULT_SOURCE,
    AttrMap,
    DataPoint,
    RecordView,
    ResourceState,
    ScopeState,
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
# Keyed getters read the view's attribute dicts (see views.py: read once per record, resource and
# scope). An empty AnyValue converts to None, which reads the same as a missing key. The compiled
# rules do not call these: codegen.py inlines the same lookups; these serve ``compile_path``.


def _record_values(v: RecordView) -> AttrMap:
    d = v.attrs
    return d if d is not None else v.values()


def _resource_values(v: RecordView) -> AttrMap:
    d = v.res.attrs
    return d if d is not None else v.res.values()


def _scope_values(v: RecordView) -> AttrMap:
    d = v.scope.attrs
    return d if d is not None else v.scope.values()


def _body_values(v: RecordView) -> AttrMap:
    d = v.body
    return d if d is not None else v.body_values()


def _first(d: AttrMap, keys: tuple[str, ...]) -> Any:
    for key in keys:
        x = d.get(key)
        if x is not None:
            return x
    return None


def _keyed(values: Callable[[RecordView], AttrMap]) -> Callable[[tuple[str, ...]], Getter]:
    def factory(keys: tuple[str, ...]) -> Getter:
        return lambda v: _first(values(v), keys)

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


def _record_whole(v: RecordView) -> Any:
    return whole_map(v.kvs) or None


_COMMON: dict[str, Getter] = {
    "scope.name": lambda v: v.scope.scope.name or None,
    "scope.version": lambda v: v.scope.scope.version or None,
    "resource.attributes": lambda v: v.res.whole() or None,
    "scope.attributes": lambda v: v.scope.whole() or None,
    "attributes": _record_whole,
}
_FIXED: dict[RuleSignal, dict[str, Getter]] = {
    "logs": {
        "record.body": _body,
        "record.severity_text": lambda v: v.record.severity_text or None,
        "record.severity_number": lambda v: _nonzero(v.record.severity_number),
        "record.time": lambda v: v.record.time_unix_nano or None,
        "record.observed_time": lambda v: v.record.observed_time_unix_nano or None,
        "record.event_name": lambda v: v.record.event_name or None,
        "record.attributes": _record_whole,
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
        "point.attributes": _record_whole,
    },
}
# (prefix, source name, signals it is valid for, getter factory for one or more keys of the source)
_PREFIXED: tuple[tuple[str, str, tuple[RuleSignal, ...], Callable[[tuple[str, ...]], Getter]], ...] = (
    ("resource.attributes.", "resource", ("logs", "metrics"), _keyed(_resource_values)),
    ("scope.attributes.", "scope", ("logs", "metrics"), _keyed(_scope_values)),
    ("attributes.", "record", ("logs", "metrics"), _keyed(_record_values)),
    ("record.attributes.", "record", ("logs",), _keyed(_record_values)),
    ("point.attributes.", "record", ("metrics",), _keyed(_record_values)),
    ("record.body.", "body", ("logs",), _keyed(_body_values)),
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
