"""Event fields: literals, paths, defaults, ``optional``, ``as`` coercions, rejections."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from tests.unit.rules.otlp import (
    RECEIVED,
    T0,
    data_of,
    engine,
    events,
    log_record,
    logs_request,
    map_one,
    metric,
    metrics_request,
    reasons,
    rule,
)


def event_of(event: dict[str, Any], record: Any = None, **request: Any) -> dict[str, Any]:
    result = map_one(rule(event=event), record if record is not None else log_record(), **request)
    assert not result.rejected, result.rejected
    [out] = events(result)
    return out


def rejection_of(event: dict[str, Any], record: Any = None) -> str:
    result = map_one(rule(event=event), record if record is not None else log_record())
    assert not result.events
    [reason] = reasons(result)
    return reason


# --- literals and paths --------------------------------------------------------------------------


def test_literal_fields_and_explicit_value_form() -> None:
    event = event_of(
        {
            "type": "api-call",
            "subject": 42,  # numbers become text for string fields
            "data": {
                "n": 1,
                "f": 1.5,
                "b": False,
                "s": "x",
                "list": {"value": [1, 2]},
                "obj": {"value": {"a": None}},
            },
        }
    )
    assert (event["type"], event["subject"]) == ("api-call", "42")
    assert event["data"] == {"n": 1, "f": 1.5, "b": False, "s": "x", "list": [1, 2], "obj": {"a": None}}


def test_data_keys_keep_the_rule_order() -> None:
    event = event_of({"data": {"z": 1, "a": 2, "m": 3}})
    assert list(event["data"]) == ["z", "a", "m"]


def test_string_fields_from_paths() -> None:
    record = log_record({"t": "tokens", "u": 1234, "src": "billing/svc", "eid": "evt-1"})
    event = event_of(
        {
            "type": {"path": "attributes.t"},
            "subject": {"path": "attributes.u"},
            "source": {"path": "attributes.src"},
            "id": {"path": "attributes.eid"},
        },
        record,
    )
    assert (event["type"], event["subject"], event["source"], event["id"]) == (
        "tokens",
        "1234",
        "billing/svc",
        "evt-1",
    )


def test_default_is_used_when_no_path_has_a_value() -> None:
    event = event_of(
        {
            "subject": {"path": "attributes.user", "default": "anonymous"},
            "data": {
                "tier": {"path": "attributes.tier", "default": "free"},
                "n": {"path": "attributes.n", "default": "7", "as": "int"},
            },
        }
    )
    assert event["subject"] == "anonymous"
    assert event["data"] == {"tier": "free", "n": 7}


def test_optional_data_key_is_left_out() -> None:
    assert event_of({"data": {"model": {"path": "attributes.model", "optional": True}, "k": 1}})["data"] == {
        "k": 1
    }


def test_optional_source_time_and_id_fall_back_to_their_builtin_defaults() -> None:
    fields = {
        "source": {"path": "attributes.src", "optional": True},
        "time": {"path": "attributes.at", "optional": True},
        "id": {"path": "attributes.eid", "optional": True},
    }
    fallback = event_of(fields, log_record(time=T0), resource={"service.name": "svc"})
    builtin = event_of({}, log_record(time=T0), resource={"service.name": "svc"})
    assert (fallback["source"], fallback["time"]) == ("svc", "2024-01-01T00:00:00Z")
    assert fallback["id"] == builtin["id"]


# --- source --------------------------------------------------------------------------------------


def test_default_source_is_service_name_else_otlp_meter() -> None:
    assert event_of({}, resource={"service.name": "checkout"})["source"] == "checkout"
    assert event_of({}, resource={})["source"] == "otlp-meter"
    assert event_of({}, resource={"service.name": ""})["source"] == "otlp-meter"


def test_source_is_made_a_uri_reference() -> None:
    # OpenTelemetry SDKs default service.name to unknown_service:<process>; OpenMeter refuses that.
    assert (
        event_of({}, resource={"service.name": "unknown_service:python"})["source"]
        == "unknown_service%3Apython"
    )
    assert event_of({"source": "100%"})["source"] == "100%25"
    assert event_of({"source": "urn:svc:1"})["source"] == "urn:svc:1"
    assert event_of({"source": "//host:8080/a"})["source"] == "//host:8080/a"


# --- coercion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("int", 5, 5),
        ("int", 5.0, 5),
        ("int", " 12 ", 12),
        ("int", "1e3", 1000),
        ("int", -(2**63), -(2**63)),
        ("float", 2, 2.0),
        ("float", "2.5", 2.5),
        ("number", 40, 40),
        ("number", 40.0, 40),
        ("number", "40", 40),
        ("number", "40.25", 40.25),
        ("string", "a", "a"),
        ("string", 7, "7"),
        ("string", 1.5, "1.5"),
        ("string", True, "true"),
        ("bool", True, True),
        ("bool", "YES", True),
        ("bool", "off", False),
        ("bool", 0, False),
    ],
)
def test_as_converts(kind: str, value: Any, expected: Any) -> None:
    data = data_of(
        rule(event={"data": {"v": {"path": "attributes.v", "as": kind}}}), log_record({"v": value})
    )
    assert data["v"] == expected
    assert type(data["v"]) is type(expected)


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("int", "abc", "cannot convert 'abc' to int"),
        ("int", 1.5, "cannot convert 1.5 to int (not a whole number)"),
        ("int", "2.5", "cannot convert '2.5' to int (not a whole number)"),
        ("int", "1e30", "cannot convert '1e30' to int (out of 64-bit range)"),
        ("int", True, "cannot convert True to int"),
        ("int", [1], "cannot convert [1] to int"),
        ("float", "nan", "cannot convert 'nan' to float (not finite)"),
        ("float", "inf", "cannot convert 'inf' to float (not finite)"),
        ("float", False, "cannot convert False to float"),
        ("number", "9" * 400, f"cannot convert '{'9' * 56}... to number (out of 64-bit range)"),
        ("float", "9" * 400, f"cannot convert '{'9' * 56}... to float (not finite)"),
        ("number", {"a": 1}, "cannot convert {'a': 1} to number"),
        ("string", {"a": 1}, "cannot convert {'a': 1} to string"),
        ("bool", "maybe", "cannot convert 'maybe' to bool"),
        ("bool", 2, "cannot convert 2 to bool"),
    ],
)
def test_failed_conversion_rejects_the_record_with_the_reason(kind: str, value: Any, reason: str) -> None:
    got = rejection_of({"data": {"v": {"path": "attributes.v", "as": kind}}}, log_record({"v": value}))
    assert got == f"data.v: {reason}"


def test_without_as_values_pass_through_unchanged() -> None:
    data = data_of(rule(event={"data": {"v": {"path": "attributes.v"}}}), log_record({"v": "12"}))
    assert data == {"v": "12"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "subject: must not be empty"),
        (True, "subject: must be a string, got True"),
        ([1], "subject: must be a string, got [1]"),
    ],
)
def test_string_fields_must_end_as_non_empty_text(value: Any, reason: str) -> None:
    assert rejection_of({"subject": {"path": "attributes.u"}}, log_record({"u": value})) == reason


# --- missing values and rejections ---------------------------------------------------------------


def test_missing_required_value_rejects_naming_every_path_tried() -> None:
    reason = rejection_of({"subject": {"path": ["attributes.openmeter.subject", "attributes.customer.id"]}})
    assert reason == "subject: no value at attributes.openmeter.subject | attributes.customer.id"
    assert (
        rejection_of({"data": {"tokens": {"path": "attributes.n"}}})
        == "data.tokens: no value at attributes.n"
    )
    assert rejection_of({"id": {"path": "attributes.eid"}}) == "id: no value at attributes.eid"
    assert rejection_of({"type": {"path": "record.body"}}) == "type: no value at record.body"


def test_rejected_log_record_keeps_its_resource_and_scope_and_nothing_else() -> None:
    keep = log_record({"n": "x"}, time=T0 + 1)
    other = log_record({"n": 1}, time=T0 + 2)
    request = logs_request(other, keep, resource={"service.name": "svc"}, scope_attrs={"a": 1})
    result = engine(rule(event={"data": {"n": {"path": "attributes.n", "as": "int"}}})).map_logs(
        request, RECEIVED
    )

    assert len(result.events) == 1
    [rejection] = result.rejected
    assert (rejection.signal, rejection.rule, rejection.reason) == (
        "logs",
        "r",
        "data.n: cannot convert 'x' to int",
    )
    original = ExportLogsServiceRequest.FromString(rejection.original)
    expected = logs_request(keep, resource={"service.name": "svc"}, scope_attrs={"a": 1})
    assert original == expected
    assert original.resource_logs[0].schema_url == "https://opentelemetry.io/schemas/1.26.0"


def test_rejected_metric_point_keeps_its_metric_without_the_other_points() -> None:
    sum_metric = metric("requests", "sum", {"value": 1, "attrs": {"user": "u1"}}, {"value": 2}, unit="1")
    request = metrics_request(sum_metric, resource={"service.name": "svc"})
    metric_rule = rule(signal="metrics", event={"subject": {"path": "attributes.user"}})
    result = engine(metric_rule).map_metrics(request, RECEIVED)

    assert len(result.events) == 1
    [rejection] = result.rejected
    assert (rejection.signal, rejection.reason) == ("metrics", "subject: no value at attributes.user")
    original = ExportMetricsServiceRequest.FromString(rejection.original)
    expected = metrics_request(
        metric("requests", "sum", {"value": 2}, unit="1"), resource={"service.name": "svc"}
    )
    assert original == expected
    assert original.resource_metrics[0].scope_metrics[0].metrics[0].sum.is_monotonic


@pytest.mark.parametrize("kind", ["gauge", "histogram", "exponential_histogram", "summary"])
def test_rejected_point_of_every_metric_type_round_trips(kind: str) -> None:
    request = metrics_request(metric("m", kind, {"count": 1} if kind != "gauge" else {"value": 1}))
    result = engine(rule(signal="metrics", event={"subject": {"path": "attributes.user"}})).map_metrics(
        request, RECEIVED
    )
    [rejection] = result.rejected
    assert ExportMetricsServiceRequest.FromString(rejection.original) == request


# --- values JSON cannot carry, and empty text ---------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_value_that_is_not_a_finite_number_rejects_the_record(value: float) -> None:
    """JSON has no NaN or infinity (orjson would write null): the record is dead-lettered."""
    record = log_record({"v": value, "ok": 1.5})
    reason = rejection_of({"data": {"ok": {"path": "attributes.ok"}, "v": {"path": "attributes.v"}}}, record)
    assert reason == "data.v: not a finite number (NaN or infinity)"


def test_empty_text_in_a_subject_path_falls_back_to_the_next_path() -> None:
    """``openmeter.subject: ""`` (an SDK default, an empty label) is no subject: the next one is used."""
    subject = {"path": ["attributes.openmeter.subject", "attributes.customer.id"]}
    event = event_of({"subject": subject}, log_record({"openmeter.subject": "", "customer.id": "acme"}))
    assert event["subject"] == "acme"
    data = event_of({"data": {"s": {"path": "attributes.s"}}}, log_record({"s": ""}))["data"]
    assert data == {"s": ""}  # data keeps its empty text


def test_empty_text_from_a_body_or_an_expression_is_no_subject_either() -> None:
    record = log_record({"c": ""})
    record.body.string_value = ""
    for subject in ({"path": "record.body", "default": "d"}, {"expr": 'attributes["c"]', "default": "d"}):
        assert event_of({"subject": subject}, record)["subject"] == "d"
