"""Fuzz the receiver core and the rules engine with structurally valid but arbitrary OTLP requests.

Every request either becomes events, rejections and unmatched records (mapping never raises) or
is refused whole for breaking a limit; it is never an exception of ours. The shipped packs are
loaded, so their expressions meet odd values (types, sizes, nesting, timestamps).
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.errors import LimitExceededError
from tests.unit.fuzz.harness import FuzzStack, fuzz_settings
from tests.unit.rules.otlp import log_record, logs_request, metric, metrics_request

KEYS = [
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "openmeter.subject",
    "service.name",
    "method",
    "path",
    "user",
    "duration",
    "http.request.method",
    "url.path",
    "enduser.id",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.binary(max_size=8),
    st.sampled_from(["", "10", "-1", "1e400", "gpt-4o", "GET", "/v1/x", "2026-01-01T00:00:00Z"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)
attribute_maps = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=10)
timestamps = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def log_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    records = [
        log_record(draw(attribute_maps), body=draw(values), time=draw(timestamps), observed=draw(timestamps))
        for _ in range(draw(st.integers(0, 4)))
    ]
    return logs_request(*records, resource=draw(attribute_maps))


@st.composite
def metric_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    metrics = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["sum", "gauge", "histogram"]))
        points: list[dict[str, Any]] = []
        for _ in range(draw(st.integers(0, 3))):
            value: Any = draw(
                st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True, allow_infinity=True)
            )
            point: dict[str, Any] = {"attrs": draw(attribute_maps), "time_unix_nano": draw(timestamps)}
            if kind == "histogram":
                point.update(
                    count=draw(st.integers(0, 2**64 - 1)),
                    sum=float(value) if isinstance(value, float) else 0.0,
                )
            else:
                point["value"] = value
            points.append(point)
        name = draw(
            st.sampled_from(
                ["api.requests", "gen_ai.client.token.usage", "http.server.request.duration", "x"]
            )
        )
        made = metric(name, kind, *points)
        if kind != "gauge":  # delta, cumulative (converted to deltas) or unspecified
            getattr(made, kind).aggregation_temporality = draw(st.sampled_from([0, 1, 2]))
        metrics.append(made)
    return metrics_request(*metrics, resource=draw(attribute_maps))


def export(stack: FuzzStack, signal: str, request: Any) -> None:
    with contextlib.suppress(LimitExceededError):  # refused whole, as the status table says
        stack.loop.run_until_complete(stack.core.export(signal, "grpc", request))  # type: ignore[arg-type]


@fuzz_settings(250)
@given(request=log_requests())
def test_any_log_request_maps_or_is_refused_for_a_limit(
    fuzz_stack: FuzzStack, request: ExportLogsServiceRequest
) -> None:
    export(fuzz_stack, "logs", request)


@fuzz_settings(250)
@given(request=metric_requests())
def test_any_metric_request_maps_or_is_refused_for_a_limit(
    fuzz_stack: FuzzStack, request: ExportMetricsServiceRequest
) -> None:
    export(fuzz_stack, "metrics", request)
