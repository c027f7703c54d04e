"""Property: whatever the attribute values, mapping returns events and rejections, never raises."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from tests.support.fake_openmeter import validate_event
from tests.unit.rules.otlp import RECEIVED, log_record, logs_request, metric, metrics_request

KEYS = [
    "method",
    "path",
    "user",
    "duration",
    "t",
    "customer.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.system",
]
scalars = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "1", "2.5", "1e400", "nan", "true", "2024-01-01T00:00:00Z", "a:b", "%"]),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=8,
)
attribute_maps = st.dictionaries(st.sampled_from(KEYS), values, max_size=len(KEYS))

EVERYTHING = RuleModel.model_validate(
    {
        "name": "everything",
        "continue": True,
        "match": {"signal": "logs", "where": [{"path": "attributes.t", "regex": "."}]},
        "event": {
            "type": {"path": "attributes.t"},
            "subject": {"path": ["attributes.user", "record.body.user"], "default": "x"},
            "source": {"path": "attributes.path", "optional": True},
            "time": {"path": "attributes.duration", "optional": True},
            "id": {"path": "attributes.method", "optional": True},
            "data": {
                kind: {"path": "attributes.duration", "as": kind, "optional": True}
                for kind in ("int", "float", "number", "string", "bool")
            }
            | {"raw": {"path": "attributes.customer.id", "optional": True}, "body": {"path": "record.body"}},
        },
    }
)
POINTS = RuleModel.model_validate(
    {
        "name": "points",
        "match": {"signal": "metrics"},
        "event": {
            "type": "t",
            "subject": {"path": "attributes.user"},
            "time": {"path": "attributes.t", "optional": True},
            "data": {
                "value": {"path": "point.value", "as": "number"},
                "attrs": {"path": "attributes.customer.id"},
            },
        },
    }
)
ENGINE = RulesEngine.from_config(RulesConfig(inline=[EVERYTHING, POINTS]))


def check_events(result: Any) -> None:
    for event in result.events:
        decoded = orjson.loads(event.payload)
        assert validate_event(decoded, None, "v1") == []
        assert validate_event(decoded, None, "v3") == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(attribute_maps, values), min_size=1, max_size=4), attribute_maps)
def test_mapping_logs_never_raises(
    records: list[tuple[dict[str, Any], Any]], resource: dict[str, Any]
) -> None:
    request = logs_request(*(log_record(attrs, body=body) for attrs, body in records), resource=resource)
    result = ENGINE.map_logs(request, RECEIVED)
    check_events(result)
    assert result.records == len(records)
    assert sum(result.matched.values()) >= result.records - result.unmatched
    for rejection in result.rejected:
        assert not rejection.reason.startswith("internal error"), rejection.reason
        assert len(ExportLogsServiceRequest.FromString(rejection.original).resource_logs) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(attribute_maps, st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats())),
        min_size=1,
        max_size=4,
    )
)
def test_mapping_metrics_never_raises(points: list[tuple[dict[str, Any], int | float]]) -> None:
    request = metrics_request(
        metric("m", "gauge", *({"attrs": attrs, "value": value} for attrs, value in points))
    )
    result = ENGINE.map_metrics(request, RECEIVED)
    check_events(result)
    assert len(result.events) + len(result.rejected) == len(points)
    for rejection in result.rejected:
        assert not rejection.reason.startswith("internal error"), rejection.reason
        ExportMetricsServiceRequest.FromString(rejection.original)
