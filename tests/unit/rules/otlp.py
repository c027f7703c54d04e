"""Builders for OTLP export requests and small helpers for rules tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from otlp_meter.rules import MappingResult, RuleModel, RulesConfig, RulesEngine
from tests.support.fake_openmeter import validate_event

T0 = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
RECEIVED = 1_717_200_000_000_000_000  # 2024-06-01T00:00:00Z


def any_value(value: Any) -> AnyValue:
    """Python → AnyValue: str, bool, int, float, bytes, list, dict; None is an empty AnyValue."""
    if value is None:
        return AnyValue()
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(item) for item in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(attributes(value))
        return out
    raise TypeError(value)


def attributes(values: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in values.items()]


def log_record(
    attrs: Mapping[str, Any] | None = None,
    *,
    body: Any = None,
    time: int = T0,
    observed: int = 0,
    **fields: Any,
) -> LogRecord:
    record = LogRecord(time_unix_nano=time, observed_time_unix_nano=observed, **fields)
    record.attributes.extend(attributes(attrs or {}))
    if body is not None:
        record.body.CopyFrom(any_value(body))
    return record


def logs_request(
    *records: LogRecord,
    resource: Mapping[str, Any] | None = None,
    scope: tuple[str, str] = ("my.instrumentation", "1.0.0"),
    scope_attrs: Mapping[str, Any] | None = None,
) -> ExportLogsServiceRequest:
    """One resource, one scope, the given records."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    resource_logs.resource.attributes.extend(attributes(resource if resource is not None else {}))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name, scope_logs.scope.version = scope
    scope_logs.scope.attributes.extend(attributes(scope_attrs or {}))
    scope_logs.log_records.extend(records)
    return request


def metric(name: str, kind: str, *points: Mapping[str, Any], unit: str = "") -> Metric:
    """A metric of ``kind`` with points given as field mappings plus ``attrs``.

    Number points take ``value`` (int → as_int, float → as_double).
    """
    out = Metric(name=name, unit=unit)
    data = getattr(out, kind)
    if kind in ("sum", "histogram", "exponential_histogram"):
        data.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    if kind == "sum":
        data.is_monotonic = True
    for fields in points:
        fields = dict(fields)
        attrs = fields.pop("attrs", {})
        value = fields.pop("value", None)
        fields.setdefault("time_unix_nano", T0)
        point = data.data_points.add(**fields)
        if value is not None:
            setattr(point, "as_int" if isinstance(value, int) else "as_double", value)
        point.attributes.extend(attributes(attrs))
    return out


def metrics_request(
    *metrics: Metric, resource: Mapping[str, Any] | None = None
) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(attributes(resource or {}))
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = "my.meter"
    scope_metrics.metrics.extend(metrics)
    return request


def rule(
    name: str = "r",
    *,
    signal: str = "logs",
    continue_: bool = False,
    match: Mapping[str, Any] | None = None,
    event: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A rule mapping with sensible defaults; ``match`` and ``event`` are merged over them."""
    return {
        "name": name,
        "continue": continue_,
        "match": {"signal": signal, **(match or {})},
        "event": {"type": "usage", "subject": "customer-1", **(event or {})},
    }


def engine(*rules: Mapping[str, Any], packs: Sequence[str] = ()) -> RulesEngine:
    config = RulesConfig(packs=list(packs), inline=[RuleModel.model_validate(r) for r in rules])
    return RulesEngine.from_config(config)


def events(result: MappingResult) -> list[dict[str, Any]]:
    """The result's events as JSON objects, each checked against OpenMeter's event schema."""
    out = []
    for event in result.events:
        decoded = orjson.loads(event.payload)
        assert validate_event(decoded, None, "v1") == []
        assert validate_event(decoded, None, "v3") == []
        assert (event.source, event.id) == (decoded["source"], decoded["id"])
        out.append(decoded)
    return out


def map_one(rule_: Mapping[str, Any], record: LogRecord, **request: Any) -> MappingResult:
    return engine(rule_).map_logs(logs_request(record, **request), RECEIVED)


def data_of(rule_: Mapping[str, Any], record: LogRecord, **request: Any) -> dict[str, Any]:
    """Map one record with one rule and return the data of its single event."""
    result = map_one(rule_, record, **request)
    assert not result.rejected, result.rejected
    [event] = events(result)
    data: dict[str, Any] = event["data"]
    return data


def reasons(result: MappingResult) -> list[str]:
    return [rejection.reason for rejection in result.rejected]
