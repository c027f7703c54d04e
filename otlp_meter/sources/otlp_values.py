"""Small builders for the OTLP metrics requests the periodic sources emit."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, ScopeMetrics

from otlp_meter.sources import base
from otlp_meter.sources.base import SCOPE_PREFIX
from otlp_meter.sources.k8s_quantity import as_number

Value = str | bool | int | float | Fraction


def any_value(value: Value) -> AnyValue:
    """An attribute value; a Fraction becomes an int when whole (and within int64), else a double."""
    return base.any_value(as_number(value) if isinstance(value, Fraction) else value)


def key_values(attributes: Mapping[str, Value]) -> list[KeyValue]:
    """Attributes in key order (so equal inputs serialize, and hash, equally)."""
    return [KeyValue(key=key, value=any_value(attributes[key])) for key in sorted(attributes)]


def to_unix_nanos(seconds: Fraction | float) -> int:
    """Unix seconds → nanoseconds, exactly for Fractions (ticks and API times are whole or finite)."""
    return int(Fraction(seconds) * 1_000_000_000)


def add_resource(
    request: ExportMetricsServiceRequest, kind: str, attributes: Mapping[str, Value]
) -> ScopeMetrics:
    """A new resource with the source's instrumentation scope; returns the scope to add metrics to."""
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(key_values(attributes))
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = SCOPE_PREFIX + kind
    return scope_metrics


def add_delta_sum(
    scope: ScopeMetrics,
    name: str,
    unit: str,
    description: str,
    value: Fraction,
    start: Fraction | float,
    end: Fraction | float,
    attributes: Mapping[str, Value],
) -> None:
    """One point of a delta, monotonic sum over ``[start, end)``; int when the value is whole."""
    metric = scope.metrics.add(name=name, unit=unit, description=description)
    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    metric.sum.is_monotonic = True
    point = metric.sum.data_points.add(
        start_time_unix_nano=to_unix_nanos(start), time_unix_nano=to_unix_nanos(end)
    )
    number = as_number(value)
    if isinstance(number, int):
        point.as_int = number
    else:
        point.as_double = number
    point.attributes.extend(key_values(attributes))


def matches_any(key: str, patterns: Iterable[str]) -> bool:
    """Shell-style glob match (``*``, ``?``, ``[..]``), case-sensitive."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def prefixed(
    prefix: str, values: Mapping[str, Any] | None, include: Iterable[str], exclude: Iterable[str]
) -> dict[str, Value]:
    """``{prefix + key: value}`` for the string values whose key matches ``include`` and not ``exclude``."""
    include, exclude = list(include), list(exclude)
    return {
        prefix + key: str(value)
        for key, value in (values or {}).items()
        if matches_any(key, include) and not matches_any(key, exclude)
    }
