"""Which rules take a record: conditions, metric filters, order, first match vs ``continue``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.rules.otlp import (
    RECEIVED,
    engine,
    events,
    log_record,
    logs_request,
    metric,
    metrics_request,
)


def matched_rules(rules: list[dict[str, Any]], attrs: dict[str, Any]) -> list[str]:
    result = engine(*rules).map_logs(logs_request(log_record(attrs)), RECEIVED)
    return [event["type"] for event in events(result)]


def typed(name: str, where: list[dict[str, Any]] | None = None, *, continue_: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "continue": continue_,
        "match": {"signal": "logs", "where": where or []},
        "event": {"type": name, "subject": "s"},
    }


# --- order ---------------------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    rules = [typed("a", [{"path": "attributes.x", "exists": True}]), typed("b"), typed("c")]
    assert matched_rules(rules, {"x": 1}) == ["a"]
    assert matched_rules(rules, {}) == ["b"]


def test_continue_lets_later_rules_match_too() -> None:
    rules = [typed("a", continue_=True), typed("b", continue_=True), typed("c"), typed("d")]
    assert matched_rules(rules, {}) == ["a", "b", "c"]


def test_continue_on_a_rule_that_did_not_match_changes_nothing() -> None:
    rules = [typed("a", [{"path": "attributes.x", "exists": True}], continue_=True), typed("b")]
    assert matched_rules(rules, {}) == ["b"]
    assert matched_rules(rules, {"x": 1}) == ["a", "b"]


def test_counts_records_unmatched_and_matches_per_rule() -> None:
    rules = [typed("a", [{"path": "attributes.x", "equals": 1}], continue_=True), typed("b")]
    rules[1]["match"]["where"] = [{"path": "attributes.x", "exists": True}]
    records = [log_record({"x": 1}), log_record({"x": 2}), log_record({}), log_record({})]
    result = engine(*rules).map_logs(logs_request(*records), RECEIVED)
    assert (result.records, result.unmatched, result.matched) == (4, 2, {"a": 1, "b": 2})


def test_a_rejected_record_still_counts_as_matched_and_stops_the_search() -> None:
    rules = [typed("a"), typed("b")]
    rules[0]["event"]["subject"] = {"path": "attributes.user"}
    result = engine(*rules).map_logs(logs_request(log_record()), RECEIVED)
    assert (len(result.events), len(result.rejected), result.matched, result.unmatched) == (0, 1, {"a": 1}, 0)


def test_logs_rules_ignore_metrics_and_metrics_rules_ignore_logs() -> None:
    rules = engine(typed("logs-rule"), {**typed("metrics-rule"), "match": {"signal": "metrics"}})
    logs = rules.map_logs(logs_request(log_record()), RECEIVED)
    points = rules.map_metrics(metrics_request(metric("m", "gauge", {"value": 1})), RECEIVED)
    assert [e["type"] for e in events(logs)] == ["logs-rule"]
    assert [e["type"] for e in events(points)] == ["metrics-rule"]


# --- conditions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "attrs", "expected"),
    [
        ({"exists": True}, {"x": "v"}, True),
        ({"exists": True}, {"x": ""}, True),  # an empty string is a value
        ({"exists": True}, {"x": None}, False),  # an empty AnyValue is not
        ({"exists": True}, {}, False),
        ({"exists": False}, {}, True),
        ({"exists": False}, {"x": 0}, False),
        ({"equals": "GET"}, {"x": "GET"}, True),
        ({"equals": "GET"}, {"x": "get"}, False),
        ({"equals": 200}, {"x": 200}, True),
        ({"equals": 200}, {"x": 200.0}, True),  # numbers compare as numbers
        ({"equals": 200}, {"x": "200"}, False),  # but text is not a number
        ({"equals": "200"}, {"x": 200}, False),
        ({"equals": True}, {"x": True}, True),
        ({"equals": True}, {"x": 1}, False),  # a bool is not a number
        ({"equals": 1}, {"x": True}, False),
        ({"equals": "x"}, {}, False),
        ({"in": ["GET", "HEAD"]}, {"x": "HEAD"}, True),
        ({"in": ["GET", "HEAD"]}, {"x": "POST"}, False),
        ({"in": [1, 2.5]}, {"x": 2.5}, True),
        ({"in": [1, "2"]}, {"x": 2}, False),
        ({"in": [False]}, {"x": False}, True),
        ({"in": [0]}, {"x": False}, False),
        ({"in": ["a"]}, {"x": ["a"]}, False),
        ({"regex": "^5\\d\\d$"}, {"x": 503}, True),  # numbers are matched as their text
        ({"regex": "^/api/"}, {"x": "/api/items"}, True),
        ({"regex": "items"}, {"x": "/api/items"}, True),  # search, not fullmatch
        ({"regex": "^/api/"}, {"x": "/health"}, False),
        ({"regex": "^true$"}, {"x": True}, True),
        ({"regex": "."}, {"x": {"a": 1}}, False),
        ({"regex": "."}, {}, False),
    ],
)
def test_condition(condition: dict[str, Any], attrs: dict[str, Any], expected: bool) -> None:
    rules = [typed("hit", [{"path": "attributes.x", **condition}])]
    assert matched_rules(rules, attrs) == (["hit"] if expected else [])


def test_all_conditions_must_hold() -> None:
    where: list[dict[str, Any]] = [
        {"path": "attributes.a", "exists": True},
        {"path": "attributes.b", "equals": "y"},
    ]
    rules = [typed("hit", where)]
    assert matched_rules(rules, {"a": 1, "b": "y"}) == ["hit"]
    assert matched_rules(rules, {"a": 1, "b": "n"}) == []
    assert matched_rules(rules, {"b": "y"}) == []


def test_a_condition_on_a_path_list_tests_the_first_present_value() -> None:
    rules = [typed("hit", [{"path": ["attributes.new", "attributes.old"], "equals": "ok"}])]
    assert matched_rules(rules, {"old": "ok"}) == ["hit"]
    assert matched_rules(rules, {"new": "ok", "old": "no"}) == ["hit"]
    assert matched_rules(rules, {"new": "no", "old": "ok"}) == []


def test_exists_false_on_a_path_list_means_none_has_a_value() -> None:
    rules = [typed("hit", [{"path": ["attributes.a", "resource.attributes.a"], "exists": False}])]
    assert matched_rules(rules, {}) == ["hit"]
    assert matched_rules(rules, {"a": 1}) == []


# --- metric filters ------------------------------------------------------------------------------


def metric_rule(name: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": {"signal": "metrics", **match}, "event": {"type": name, "subject": "s"}}


def metric_types(rules: list[dict[str, Any]], *metrics: Any) -> list[tuple[str, str]]:
    result = engine(*rules).map_metrics(metrics_request(*metrics), RECEIVED)
    return [(e["type"], e["data"]["metric"]) for e in events(result)]


def with_metric_name(rule_: dict[str, Any]) -> dict[str, Any]:
    rule_["event"]["data"] = {"metric": {"path": "metric.name"}}
    return rule_


def test_metric_name_exact_and_glob() -> None:
    rules = [
        with_metric_name(metric_rule("exact", metric="http.server.duration")),
        with_metric_name(metric_rule("glob", metric="http.server.*")),
        with_metric_name(metric_rule("question", metric="db.?")),
    ]
    got = metric_types(
        rules,
        metric("http.server.duration", "histogram", {"count": 1}),
        metric("http.server.request.count", "sum", {"value": 1}),
        metric("http.client.duration", "histogram", {"count": 1}),
        metric("db.x", "gauge", {"value": 1}),
        metric("db.xy", "gauge", {"value": 1}),
    )
    assert got == [
        ("exact", "http.server.duration"),
        ("glob", "http.server.request.count"),
        ("question", "db.x"),
    ]


def test_metric_glob_is_case_sensitive() -> None:
    rules = [with_metric_name(metric_rule("glob", metric="HTTP.*"))]
    assert metric_types(rules, metric("http.x", "gauge", {"value": 1})) == []


def test_metric_type() -> None:
    rules = [with_metric_name(metric_rule("sums", metric_type="sum"))]
    got = metric_types(
        rules,
        metric("a", "gauge", {"value": 1}),
        metric("b", "sum", {"value": 1}),
        metric("c", "histogram", {"count": 1}),
    )
    assert got == [("sums", "b")]


def test_every_point_is_a_record_and_unmatched_points_are_counted() -> None:
    rules = [metric_rule("only-b", metric="b")]
    request = metrics_request(
        metric("a", "gauge", {"value": 1}, {"value": 2}),
        metric("b", "sum", {"value": 1}, {"value": 2}, {"value": 3}),
    )
    result = engine(*rules).map_metrics(request, RECEIVED)
    assert (len(result.events), result.records, result.unmatched, result.matched) == (3, 5, 2, {"only-b": 3})


def test_metric_without_data_has_no_records() -> None:
    request = metrics_request(metric("a", "gauge"))
    request.resource_metrics[0].scope_metrics[0].metrics.add(name="no-data")
    result = engine(metric_rule("any")).map_metrics(request, RECEIVED)
    assert (result.records, result.unmatched, result.events) == (0, 0, [])
