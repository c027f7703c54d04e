"""Every path form reads what it names; values come out as plain JSON-able Python."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_WARN

from otlp_meter.rules.paths import PATH_FORMS
from tests.unit.rules.otlp import (
    RECEIVED,
    T0,
    data_of,
    engine,
    events,
    log_record,
    logs_request,
    metric,
    metrics_request,
)


def read(path: str | list[str], record: Any = None, **request: Any) -> Any:
    """The value ``path`` reads from ``record`` (absent → the key is left out of data)."""
    rule = {
        "name": "r",
        "match": {"signal": "logs"},
        "event": {"type": "t", "subject": "s", "data": {"v": {"path": path, "optional": True}}},
    }
    return data_of(rule, record if record is not None else log_record(), **request).get("v", "<absent>")


# --- logs ----------------------------------------------------------------------------------------


def test_record_attributes_and_their_aliases() -> None:
    record = log_record({"user.id": "u1"})
    assert read("attributes.user.id", record) == "u1"
    assert read("record.attributes.user.id", record) == "u1"
    assert read("attributes.user", record) == "<absent>"  # keys are whole, dots included


def test_resource_and_scope() -> None:
    kwargs: dict[str, Any] = {
        "resource": {"service.name": "svc", "k8s.pod.name": "pod-1"},
        "scope": ("io.opentelemetry.openai", "0.4"),
        "scope_attrs": {"team": "ml"},
    }
    assert read("resource.attributes.k8s.pod.name", **kwargs) == "pod-1"
    assert read("scope.name", **kwargs) == "io.opentelemetry.openai"
    assert read("scope.version", **kwargs) == "0.4"
    assert read("scope.attributes.team", **kwargs) == "ml"
    assert read("scope.version", scope=("s", "")) == "<absent>"


def test_log_record_fields() -> None:
    record = log_record(
        time=T0 + 5,
        observed=T0 + 9,
        severity_text="WARN",
        severity_number=SEVERITY_NUMBER_WARN,
        event_name="gen_ai.client.inference",
        body="plain text",
    )
    assert read("record.time", record) == T0 + 5
    assert read("record.observed_time", record) == T0 + 9
    assert read("record.severity_text", record) == "WARN"
    assert read("record.severity_number", record) == 13
    assert read("record.event_name", record) == "gen_ai.client.inference"
    assert read("record.body", record) == "plain text"


def test_unset_log_record_fields_have_no_value() -> None:
    record = log_record(time=0)
    for path in (
        "record.time",
        "record.observed_time",
        "record.severity_text",
        "record.severity_number",
        "record.event_name",
        "record.body",
        "record.body.k",
    ):
        assert read(path, record) == "<absent>", path


def test_body_keys_read_a_map_body() -> None:
    record = log_record(body={"user": "u1", "nested": {"a": [1, 2]}, "a.b": 1})
    assert read("record.body.user", record) == "u1"
    assert read("record.body.nested", record) == {"a": [1, 2]}
    assert read("record.body.a.b", record) == 1
    assert read("record.body", record) == {"user": "u1", "nested": {"a": [1, 2]}, "a.b": 1}
    assert read("record.body.user", log_record(body="user")) == "<absent>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        ("", ""),
        (-(2**63), -(2**63)),
        (1.5, 1.5),
        (True, True),
        (False, False),
        (b"\x00\xffbin", base64.b64encode(b"\x00\xffbin").decode()),
        ([1, "a", [True]], [1, "a", [True]]),
        ({"k": {"n": 1.0}}, {"k": {"n": 1.0}}),
        ([], []),
        ({}, {}),
    ],
)
def test_any_value_conversion(value: Any, expected: Any) -> None:
    assert read("attributes.v", log_record({"v": value})) == expected


def test_path_list_takes_the_first_path_with_a_value() -> None:
    paths = ["attributes.a", "record.body.a", "resource.attributes.a", "scope.name"]
    assert read(paths, log_record({"a": 1}, body={"a": 2}), resource={"a": 3}) == 1
    assert read(paths, log_record({"b": 1}, body={"a": 2}), resource={"a": 3}) == 2
    assert read(paths, log_record(), resource={"a": 3}) == 3
    assert read(paths, log_record()) == "my.instrumentation"
    assert read(["attributes.a", "attributes.b"], log_record({"a": None, "b": "x"})) == "x"


def test_a_key_read_by_several_rules_reads_the_same() -> None:
    rule = {
        "name": "a",
        "continue": True,
        "match": {"signal": "logs"},
        "event": {"type": "t", "subject": {"path": "attributes.u"}, "data": {"u": {"path": "attributes.u"}}},
    }
    rules = engine(rule, {**rule, "name": "b"})
    result = rules.map_logs(logs_request(log_record({"u": [1, {"x": 2}]}), resource={"u": "r"}), RECEIVED)
    assert result.rejected[0].reason == "subject: must be a string, got [1, {'x': 2}]"
    assert [r.rule for r in result.rejected] == ["a", "b"]


def test_every_path_form_is_documented_here() -> None:
    assert PATH_FORMS["logs"] == (
        "resource.attributes.<key>",
        "scope.attributes.<key>",
        "attributes.<key>",
        "record.attributes.<key>",
        "record.body.<key>",
        "scope.name",
        "scope.version",
        "resource.attributes",
        "scope.attributes",
        "attributes",
        "record.body",
        "record.severity_text",
        "record.severity_number",
        "record.time",
        "record.observed_time",
        "record.event_name",
        "record.attributes",
    )
    assert PATH_FORMS["metrics"] == (
        "resource.attributes.<key>",
        "scope.attributes.<key>",
        "attributes.<key>",
        "point.attributes.<key>",
        "scope.name",
        "scope.version",
        "resource.attributes",
        "scope.attributes",
        "attributes",
        "metric.name",
        "metric.unit",
        "metric.type",
        "point.value",
        "point.sum",
        "point.count",
        "point.min",
        "point.max",
        "point.start_time",
        "point.time",
        "point.attributes",
    )


# --- metrics -------------------------------------------------------------------------------------

METRIC_PATHS = [
    "metric.name",
    "metric.unit",
    "metric.type",
    "point.value",
    "point.sum",
    "point.count",
    "point.start_time",
    "point.time",
    "attributes.k",
    "point.attributes.k",
    "resource.attributes.r",
    "scope.name",
]


def read_points(*metrics: Any, extra: list[str] | None = None) -> list[dict[str, Any]]:
    data = {path: {"path": path, "optional": True} for path in [*METRIC_PATHS, *(extra or [])]}
    rule = {"name": "r", "match": {"signal": "metrics"}, "event": {"type": "t", "subject": "s", "data": data}}
    result = engine(rule).map_metrics(metrics_request(*metrics, resource={"r": "res"}), RECEIVED)
    assert not result.rejected
    return [event["data"] for event in events(result)]


def test_number_points_gauge_and_sum() -> None:
    common: dict[str, Any] = {"metric.unit": "By", "attributes.k": "v", "point.attributes.k": "v"}
    common |= {"resource.attributes.r": "res", "scope.name": "my.meter", "point.time": T0 + 60}
    points = read_points(
        metric("g", "gauge", {"value": 7, "attrs": {"k": "v"}, "time_unix_nano": T0 + 60}, unit="By"),
        metric(
            "s",
            "sum",
            {"value": 2.5, "attrs": {"k": "v"}, "time_unix_nano": T0 + 60, "start_time_unix_nano": T0},
            unit="By",
        ),
    )
    assert points == [
        {"metric.name": "g", "metric.type": "gauge", "point.value": 7, **common},
        {"metric.name": "s", "metric.type": "sum", "point.value": 2.5, "point.start_time": T0, **common},
    ]


def test_histogram_points() -> None:
    [with_sum, without_sum] = read_points(
        metric(
            "h",
            "histogram",
            {"count": 3, "sum": 12.5, "bucket_counts": [1, 2], "explicit_bounds": [5.0]},
            {"count": 0},
        )
    )
    assert (with_sum["point.value"], with_sum["point.sum"], with_sum["point.count"]) == (12.5, 12.5, 3)
    assert with_sum["metric.type"] == "histogram"
    assert "point.value" not in without_sum
    assert "point.sum" not in without_sum
    assert without_sum["point.count"] == 0  # a count of zero is a value


def test_exponential_histogram_and_summary_points() -> None:
    [exp, summary] = read_points(
        metric("e", "exponential_histogram", {"count": 4, "sum": 2.0, "scale": 3, "zero_count": 1}),
        metric("q", "summary", {"count": 10, "sum": 99.0}),
    )
    assert (exp["metric.type"], exp["point.value"], exp["point.sum"], exp["point.count"]) == (
        "exponential_histogram",
        2.0,
        2.0,
        4,
    )
    assert (summary["metric.type"], summary["point.value"], summary["point.sum"], summary["point.count"]) == (
        "summary",
        99.0,
        99.0,
        10,
    )


def test_number_points_have_no_sum_or_count_and_unset_values_are_absent() -> None:
    [point] = read_points(metric("g", "gauge", {"time_unix_nano": T0}))
    assert {"point.value", "point.sum", "point.count", "point.start_time"}.isdisjoint(point)


def test_histogram_min_and_max() -> None:
    [with_bounds, without] = read_points(
        metric("h", "histogram", {"count": 2, "sum": 3.0, "min": 1.0, "max": 2.0}, {"count": 1}),
        extra=["point.min", "point.max"],
    )
    assert (with_bounds["point.min"], with_bounds["point.max"]) == (1.0, 2.0)
    assert "point.min" not in without
    assert "point.max" not in without


def test_whole_attribute_maps() -> None:
    [point] = read_points(
        metric("g", "gauge", {"value": 1, "attrs": {"k": "v", "n": 2, "empty": None}}),
        extra=["attributes", "point.attributes", "resource.attributes", "scope.attributes"],
    )
    assert point["attributes"] == point["point.attributes"] == {"k": "v", "n": 2}
    assert point["resource.attributes"] == {"r": "res"}
    assert "scope.attributes" not in point  # an empty map is no value
