"""OTLP/JSON decoding of ``ExportMetricsServiceRequest``: the metrics half of ``otlp_json``.

The conventions (keys, scalars, error paths, the fast/slow object split) are those of
:mod:`otlp_meter.receivers.otlp_json`, whose internal helpers this sibling module shares.
The public entry point is ``otlp_json.decode_metrics_request``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otlp_meter.receivers.otlp_json import (
    Json,
    _bool,
    _double,
    _doubles,
    _enum,
    _enum_names,
    _expect_object,
    _fill_attributes,
    _fill_each,
    _fill_field,
    _fill_resource,
    _fill_scope,
    _hex_id,
    _i32,
    _i64,
    _Invalid,
    _keys,
    _str,
    _u32,
    _u64,
    _u64s,
)

_REQUEST_KEYS, _REQUEST_SNAKE = _keys(ExportMetricsServiceRequest)
_RESOURCE_METRICS_KEYS, _RESOURCE_METRICS_SNAKE = _keys(metrics_pb2.ResourceMetrics)
_SCOPE_METRICS_KEYS, _SCOPE_METRICS_SNAKE = _keys(metrics_pb2.ScopeMetrics)
_METRIC_KEYS, _METRIC_SNAKE = _keys(metrics_pb2.Metric)
_GAUGE_KEYS, _GAUGE_SNAKE = _keys(metrics_pb2.Gauge)
_SUM_KEYS, _SUM_SNAKE = _keys(metrics_pb2.Sum)
_HISTOGRAM_KEYS, _HISTOGRAM_SNAKE = _keys(metrics_pb2.Histogram)
_EXP_HISTOGRAM_KEYS, _EXP_HISTOGRAM_SNAKE = _keys(metrics_pb2.ExponentialHistogram)
_SUMMARY_KEYS, _SUMMARY_SNAKE = _keys(metrics_pb2.Summary)
_NUMBER_POINT_KEYS, _NUMBER_POINT_SNAKE = _keys(metrics_pb2.NumberDataPoint)
_HISTOGRAM_POINT_KEYS, _HISTOGRAM_POINT_SNAKE = _keys(metrics_pb2.HistogramDataPoint)
_EXP_POINT_KEYS, _EXP_POINT_SNAKE = _keys(metrics_pb2.ExponentialHistogramDataPoint)
_BUCKETS_KEYS, _BUCKETS_SNAKE = _keys(metrics_pb2.ExponentialHistogramDataPoint.Buckets)
_SUMMARY_POINT_KEYS, _SUMMARY_POINT_SNAKE = _keys(metrics_pb2.SummaryDataPoint)
_QUANTILE_KEYS, _QUANTILE_SNAKE = _keys(metrics_pb2.SummaryDataPoint.ValueAtQuantile)
_EXEMPLAR_KEYS, _EXEMPLAR_SNAKE = _keys(metrics_pb2.Exemplar)
_TEMPORALITIES = _enum_names(metrics_pb2.AggregationTemporality)


def fill_metrics_request(request: Any, d: Json) -> None:
    d = _expect_object(d, _REQUEST_KEYS, _REQUEST_SNAKE)
    if (v := d.get("resourceMetrics")) is not None:
        _fill_each(request.resource_metrics, v, _fill_resource_metrics, "resourceMetrics")


def _fill_resource_metrics(m: Any, d: Json) -> None:
    d = _expect_object(d, _RESOURCE_METRICS_KEYS, _RESOURCE_METRICS_SNAKE)
    g = d.get
    if (v := g("resource")) is not None:
        _fill_field(_fill_resource, m.resource, v, "resource")
    if (v := g("scopeMetrics")) is not None:
        _fill_each(m.scope_metrics, v, _fill_scope_metrics, "scopeMetrics")
    if (v := g("schemaUrl")) is not None:
        m.schema_url = _str(v, "schemaUrl")


def _fill_scope_metrics(m: Any, d: Json) -> None:
    d = _expect_object(d, _SCOPE_METRICS_KEYS, _SCOPE_METRICS_SNAKE)
    g = d.get
    if (v := g("scope")) is not None:
        _fill_field(_fill_scope, m.scope, v, "scope")
    if (v := g("metrics")) is not None:
        _fill_each(m.metrics, v, _fill_metric, "metrics")
    if (v := g("schemaUrl")) is not None:
        m.schema_url = _str(v, "schemaUrl")


def _fill_metric(m: Any, d: Json) -> None:
    d = _expect_object(d, _METRIC_KEYS, _METRIC_SNAKE)
    g = d.get
    if (v := g("name")) is not None:
        m.name = _str(v, "name")
    if (v := g("description")) is not None:
        m.description = _str(v, "description")
    if (v := g("unit")) is not None:
        m.unit = _str(v, "unit")
    if (v := g("metadata")) is not None:
        _fill_attributes(m.metadata, v, "metadata")
    data = ""
    for key, field, fill in _METRIC_DATA:
        if (v := g(key)) is not None:
            if data:
                raise _Invalid(f"a metric has one kind of data, got both {data} and {key}")
            data = key
            _fill_field(fill, getattr(m, field), v, key)


def _fill_gauge(gauge: Any, d: Json) -> None:
    d = _expect_object(d, _GAUGE_KEYS, _GAUGE_SNAKE)
    gauge.SetInParent()
    if (v := d.get("dataPoints")) is not None:
        _fill_each(gauge.data_points, v, _fill_number_point, "dataPoints")


def _fill_sum(total: Any, d: Json) -> None:
    d = _expect_object(d, _SUM_KEYS, _SUM_SNAKE)
    total.SetInParent()
    g = d.get
    if (v := g("dataPoints")) is not None:
        _fill_each(total.data_points, v, _fill_number_point, "dataPoints")
    if (v := g("aggregationTemporality")) is not None:
        total.aggregation_temporality = _enum(v, _TEMPORALITIES, "aggregationTemporality")
    if (v := g("isMonotonic")) is not None:
        total.is_monotonic = _bool(v, "isMonotonic")


def _fill_histogram(histogram: Any, d: Json) -> None:
    d = _expect_object(d, _HISTOGRAM_KEYS, _HISTOGRAM_SNAKE)
    histogram.SetInParent()
    g = d.get
    if (v := g("dataPoints")) is not None:
        _fill_each(histogram.data_points, v, _fill_histogram_point, "dataPoints")
    if (v := g("aggregationTemporality")) is not None:
        histogram.aggregation_temporality = _enum(v, _TEMPORALITIES, "aggregationTemporality")


def _fill_exp_histogram(histogram: Any, d: Json) -> None:
    d = _expect_object(d, _EXP_HISTOGRAM_KEYS, _EXP_HISTOGRAM_SNAKE)
    histogram.SetInParent()
    g = d.get
    if (v := g("dataPoints")) is not None:
        _fill_each(histogram.data_points, v, _fill_exp_point, "dataPoints")
    if (v := g("aggregationTemporality")) is not None:
        histogram.aggregation_temporality = _enum(v, _TEMPORALITIES, "aggregationTemporality")


def _fill_summary(summary: Any, d: Json) -> None:
    d = _expect_object(d, _SUMMARY_KEYS, _SUMMARY_SNAKE)
    summary.SetInParent()
    if (v := d.get("dataPoints")) is not None:
        _fill_each(summary.data_points, v, _fill_summary_point, "dataPoints")


_METRIC_DATA: tuple[tuple[str, str, Callable[[Any, Json], None]], ...] = (
    ("sum", "sum", _fill_sum),
    ("gauge", "gauge", _fill_gauge),
    ("histogram", "histogram", _fill_histogram),
    ("exponentialHistogram", "exponential_histogram", _fill_exp_histogram),
    ("summary", "summary", _fill_summary),
)


def _fill_point_common(p: Any, g: Callable[[str], Json]) -> None:
    """The fields every data point has: attributes, start/time, flags."""
    if (v := g("attributes")) is not None:
        _fill_attributes(p.attributes, v, "attributes")
    if (v := g("startTimeUnixNano")) is not None:
        p.start_time_unix_nano = _u64(v, "startTimeUnixNano")
    if (v := g("timeUnixNano")) is not None:
        p.time_unix_nano = _u64(v, "timeUnixNano")
    if (v := g("flags")) is not None:
        p.flags = _u32(v, "flags")


def _set_number(p: Any, g: Callable[[str], Json]) -> None:
    """The ``value`` oneof of NumberDataPoint and Exemplar: asDouble or asInt."""
    if (v := g("asDouble")) is not None:
        if g("asInt") is not None:
            raise _Invalid("a value is asDouble or asInt, not both")
        p.as_double = _double(v, "asDouble")
    elif (v := g("asInt")) is not None:
        p.as_int = _i64(v, "asInt")


def _fill_number_point(p: Any, d: Json) -> None:
    if type(d) is not dict or not d.keys() <= _NUMBER_POINT_KEYS:
        d = _expect_object(d, _NUMBER_POINT_KEYS, _NUMBER_POINT_SNAKE)
    g = d.get
    _fill_point_common(p, g)
    _set_number(p, g)
    if (v := g("exemplars")) is not None:
        _fill_each(p.exemplars, v, _fill_exemplar, "exemplars")


def _fill_exemplar(e: Any, d: Json) -> None:
    d = _expect_object(d, _EXEMPLAR_KEYS, _EXEMPLAR_SNAKE)
    g = d.get
    if (v := g("filteredAttributes")) is not None:
        _fill_attributes(e.filtered_attributes, v, "filteredAttributes")
    if (v := g("timeUnixNano")) is not None:
        e.time_unix_nano = _u64(v, "timeUnixNano")
    _set_number(e, g)
    if (v := g("spanId")) is not None:
        e.span_id = _hex_id(v, 8, "spanId")
    if (v := g("traceId")) is not None:
        e.trace_id = _hex_id(v, 16, "traceId")


def _fill_histogram_point(p: Any, d: Json) -> None:
    d = _expect_object(d, _HISTOGRAM_POINT_KEYS, _HISTOGRAM_POINT_SNAKE)
    g = d.get
    _fill_point_common(p, g)
    if (v := g("count")) is not None:
        p.count = _u64(v, "count")
    _set_sum_min_max(p, g)
    if (v := g("bucketCounts")) is not None:
        p.bucket_counts.extend(_u64s(v, "bucketCounts"))
    if (v := g("explicitBounds")) is not None:
        p.explicit_bounds.extend(_doubles(v, "explicitBounds"))
    if (v := g("exemplars")) is not None:
        _fill_each(p.exemplars, v, _fill_exemplar, "exemplars")


def _set_sum_min_max(p: Any, g: Callable[[str], Json]) -> None:
    """``optional double`` sum/min/max of the histogram points: present means set, even when 0."""
    if (v := g("sum")) is not None:
        p.sum = _double(v, "sum")
    if (v := g("min")) is not None:
        p.min = _double(v, "min")
    if (v := g("max")) is not None:
        p.max = _double(v, "max")


def _fill_exp_point(p: Any, d: Json) -> None:
    d = _expect_object(d, _EXP_POINT_KEYS, _EXP_POINT_SNAKE)
    g = d.get
    _fill_point_common(p, g)
    if (v := g("count")) is not None:
        p.count = _u64(v, "count")
    _set_sum_min_max(p, g)
    if (v := g("scale")) is not None:
        p.scale = _i32(v, "scale")
    if (v := g("zeroCount")) is not None:
        p.zero_count = _u64(v, "zeroCount")
    if (v := g("positive")) is not None:
        _fill_field(_fill_buckets, p.positive, v, "positive")
    if (v := g("negative")) is not None:
        _fill_field(_fill_buckets, p.negative, v, "negative")
    if (v := g("exemplars")) is not None:
        _fill_each(p.exemplars, v, _fill_exemplar, "exemplars")
    if (v := g("zeroThreshold")) is not None:
        p.zero_threshold = _double(v, "zeroThreshold")


def _fill_buckets(buckets: Any, d: Json) -> None:
    d = _expect_object(d, _BUCKETS_KEYS, _BUCKETS_SNAKE)
    buckets.SetInParent()
    g = d.get
    if (v := g("offset")) is not None:
        buckets.offset = _i32(v, "offset")
    if (v := g("bucketCounts")) is not None:
        buckets.bucket_counts.extend(_u64s(v, "bucketCounts"))


def _fill_summary_point(p: Any, d: Json) -> None:
    d = _expect_object(d, _SUMMARY_POINT_KEYS, _SUMMARY_POINT_SNAKE)
    g = d.get
    _fill_point_common(p, g)
    if (v := g("count")) is not None:
        p.count = _u64(v, "count")
    if (v := g("sum")) is not None:
        p.sum = _double(v, "sum")
    if (v := g("quantileValues")) is not None:
        _fill_each(p.quantile_values, v, _fill_quantile, "quantileValues")


def _fill_quantile(q: Any, d: Json) -> None:
    d = _expect_object(d, _QUANTILE_KEYS, _QUANTILE_SNAKE)
    g = d.get
    if (v := g("quantile")) is not None:
        q.quantile = _double(v, "quantile")
    if (v := g("value")) is not None:
        q.value = _double(v, "value")
