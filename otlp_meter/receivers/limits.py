"""Per-record limits on decoded OTLP requests, checked before the rules see them.

Cheap by construction, because it runs on every request: attribute counts are ``len()`` of
repeated fields (no Python-level walk over attributes), and attribute values are only walked when
the request on the wire is larger than ``max_attribute_value_size`` — a value cannot be larger than
the body that carried it (protobuf, or JSON whose strings are at least as long as their values).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.errors import LimitExceededError
from otlp_meter.receivers.config import LimitsConfig

_SETTING = "receivers.limits"


_ATTRIBUTES = operator.attrgetter("attributes")


def check_limits(request: Message, wire_size: int, limits: LimitsConfig) -> None:
    """Raise LimitExceededError naming the first record (by its path in the request) over a limit."""
    most = limits.max_attributes_per_record
    walk_values = wire_size > limits.max_attribute_value_size
    for where, holders in _attribute_holders(request):
        # C-level loops, no list and no path string unless a limit is exceeded: this runs on every request.
        if holders and max(map(len, map(_ATTRIBUTES, holders))) > most:
            counts = list(map(len, map(_ATTRIBUTES, holders)))
            at = next(i for i, n in enumerate(counts) if n > most)
            raise LimitExceededError(
                f"{_path(where, at)} has {counts[at]} attributes; at most {most} are taken "
                f"({_SETTING}.max_attributes_per_record)",
                "attributes",
            )
        if walk_values:
            for at, holder in enumerate(holders):
                for kv in holder.attributes:
                    if _too_large(kv.value, limits.max_attribute_value_size, 0):
                        raise LimitExceededError(
                            f"{_path(where, at)} attribute {kv.key[:64]!r} is larger than "
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


_Where = tuple[str, tuple[int, ...]]
"""A group's path: a template with a ``{}`` per index, its indices (the member's index comes last)."""


def _path(where: _Where, at: int) -> str:
    template, indices = where
    return template.format(*indices, at)


_RESOURCE_LOGS = "resource_logs[{}].resource"
_SCOPE_LOGS = "resource_logs[{}].scope_logs[{}].scope"
_LOG_RECORDS = "resource_logs[{}].scope_logs[{}].log_records[{}]"
_RESOURCE_METRICS = "resource_metrics[{}].resource"
_SCOPE_METRICS = "resource_metrics[{}].scope_metrics[{}].scope"
_DATA_POINTS = "resource_metrics[{}].scope_metrics[{}].metrics[{}].data_points[{}]"


def _attribute_holders(request: Message) -> Iterator[tuple[_Where, Sequence[Any]]]:
    """Groups of messages with ``attributes`` (resources, scopes, log records, data points), each
    with the path of its members (see :func:`_path`)."""
    if isinstance(request, ExportLogsServiceRequest):
        resources = request.resource_logs
        yield (_RESOURCE_LOGS, ()), [r.resource for r in resources]
        for i, rl in enumerate(resources):
            yield (_SCOPE_LOGS, (i,)), [s.scope for s in rl.scope_logs]
            for j, sl in enumerate(rl.scope_logs):
                yield (_LOG_RECORDS, (i, j)), sl.log_records
    elif isinstance(request, ExportMetricsServiceRequest):
        resources_m = request.resource_metrics
        yield (_RESOURCE_METRICS, ()), [r.resource for r in resources_m]
        for i, rm in enumerate(resources_m):
            yield (_SCOPE_METRICS, (i,)), [s.scope for s in rm.scope_metrics]
            for j, sm in enumerate(rm.scope_metrics):
                for m, metric in enumerate(sm.metrics):
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        yield (_DATA_POINTS, (i, j, m)), getattr(metric, kind).data_points
