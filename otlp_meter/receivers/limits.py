"""Per-record limits on decoded OTLP requests, checked before the rules see them.

Cheap by construction, because it runs on every request: attribute counts are ``len()`` of
repeated fields (no Python-level walk over attributes), and attribute values are only walked when
the request on the wire is larger than ``max_attribute_value_size`` — a value cannot be larger than
the body that carried it (protobuf, or JSON whose strings are at least as long as their values).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.errors import LimitExceededError
from otlp_meter.receivers.config import LimitsConfig

_SETTING = "receivers.limits"


def check_limits(request: Message, wire_size: int, limits: LimitsConfig) -> None:
    """Raise LimitExceededError naming the first record (by its path in the request) over a limit."""
    walk_values = wire_size > limits.max_attribute_value_size
    for path, attributes in _attribute_sets(request):
        if len(attributes) > limits.max_attributes_per_record:
            raise LimitExceededError(
                f"{path()} has {len(attributes)} attributes; at most {limits.max_attributes_per_record} "
                f"are taken ({_SETTING}.max_attributes_per_record)",
                "attributes",
            )
        if walk_values:
            for kv in attributes:
                if _too_large(kv.value, limits.max_attribute_value_size, 0):
                    raise LimitExceededError(
                        f"{path()} attribute {kv.key[:64]!r} is larger than "
                        f"{limits.max_attribute_value_size} bytes ({_SETTING}.max_attribute_value_size)",
                        "attribute_value",
                    )


def _too_large(value: Any, limit: int, depth: int) -> bool:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        text = value.string_value
        return len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8", "replace")) > limit)
    if kind == "bytes_value":
        return len(value.bytes_value) > limit
    if depth > 64:  # protobuf and our JSON decoder stop far earlier; a bound all the same
        return False
    if kind == "array_value":
        return any(_too_large(v, limit, depth + 1) for v in value.array_value.values)
    if kind == "kvlist_value":
        return any(_too_large(kv.value, limit, depth + 1) for kv in value.kvlist_value.values)
    return False


class _Path:
    """A record's place in the request, formatted only when an error needs it."""

    __slots__ = ("parts",)

    def __init__(self, *parts: tuple[str, int | None]) -> None:
        self.parts = parts

    def __call__(self) -> str:
        return ".".join(name if index is None else f"{name}[{index}]" for name, index in self.parts)


def _attribute_sets(request: Message) -> Iterable[tuple[_Path, Any]]:
    """(path, repeated KeyValue) of every resource, scope, log record and data point."""
    if isinstance(request, ExportLogsServiceRequest):
        for i, rl in enumerate(request.resource_logs):
            yield _Path(("resource_logs", i), ("resource", None)), rl.resource.attributes
            for j, sl in enumerate(rl.scope_logs):
                yield _Path(("resource_logs", i), ("scope_logs", j), ("scope", None)), sl.scope.attributes
                for k, record in enumerate(sl.log_records):
                    yield (
                        _Path(("resource_logs", i), ("scope_logs", j), ("log_records", k)),
                        record.attributes,
                    )
    elif isinstance(request, ExportMetricsServiceRequest):
        for i, rm in enumerate(request.resource_metrics):
            yield _Path(("resource_metrics", i), ("resource", None)), rm.resource.attributes
            for j, sm in enumerate(rm.scope_metrics):
                yield (
                    _Path(("resource_metrics", i), ("scope_metrics", j), ("scope", None)),
                    sm.scope.attributes,
                )
                for m, metric in enumerate(sm.metrics):
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    for k, point in enumerate(getattr(metric, kind).data_points):
                        where = (
                            ("resource_metrics", i),
                            ("scope_metrics", j),
                            ("metrics", m),
                            ("data_points", k),
                        )
                        yield _Path(*where), point.attributes
