"""Prometheus API answers → series, and series → the gauge points the prometheus pack maps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from otlp_meter.rules import RulesConfig, RulesEngine
from otlp_meter.sources.promql import (
    METRIC_NAME,
    SCOPE_NAME,
    Answer,
    QueryFailed,
    parse_answer,
    points_request,
    static_result_type,
)

TICK_NS = 1_717_200_000 * 1_000_000_000


def answer(result_type: str, result: Any, **extra: Any) -> bytes:
    return orjson.dumps({"status": "success", "data": {"resultType": result_type, "result": result}, **extra})


def series(labels: dict[str, str], value: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1717200000.0, value]}


def test_an_instant_vector_becomes_labelled_float_values() -> None:
    body = answer("vector", [series({"customer": "acme"}, "12.5"), series({"customer": "globex"}, "3")])
    assert parse_answer(200, body) == Answer([({"customer": "acme"}, 12.5), ({"customer": "globex"}, 3.0)])


def test_nan_and_infinities_are_left_out_and_counted() -> None:
    values = ["NaN", "+Inf", "-Inf", "1"]
    body = answer("vector", [series({"i": str(i)}, v) for i, v in enumerate(values)])
    assert parse_answer(200, body) == Answer([({"i": "3"}, 1.0)], non_finite=3)


def test_native_histogram_samples_are_left_out_and_counted() -> None:
    body = answer("vector", [{"metric": {}, "histogram": [1.0, {"count": "2", "sum": "3"}]}])
    assert parse_answer(200, body) == Answer([], unsupported=1)


def test_warnings_are_kept() -> None:
    body = answer("vector", [], warnings=["PromQL info: metric might not be a counter"])
    assert parse_answer(200, body).warnings == ["PromQL info: metric might not be a counter"]


@pytest.mark.parametrize(
    ("result_type", "result"),
    [("scalar", [1717200000, "1"]), ("string", [1717200000, "a"]), ("matrix", [])],
)
def test_other_result_types_are_a_clear_error(result_type: str, result: Any) -> None:
    with pytest.raises(QueryFailed) as info:
        parse_answer(200, answer(result_type, result))
    assert info.value.reason == "result_type"
    assert f"returned a {result_type}, not an instant vector" in str(info.value)


def test_the_apis_own_errors_name_their_type() -> None:
    body = orjson.dumps({"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'})
    with pytest.raises(QueryFailed) as info:
        parse_answer(400, body)
    assert (info.value.reason, str(info.value)) == ("api", 'bad_data: parse error: unexpected "}" (HTTP 400)')


def test_answers_that_are_not_the_api_are_http_or_decode_failures() -> None:
    with pytest.raises(QueryFailed) as info:
        parse_answer(502, b"<html>Bad Gateway</html>")
    assert (info.value.reason, str(info.value)) == ("http", "HTTP 502: <html>Bad Gateway</html>")
    with pytest.raises(QueryFailed) as info:
        parse_answer(200, b"ok")
    assert info.value.reason == "decode"
    with pytest.raises(QueryFailed) as info:
        parse_answer(200, answer("vector", [{"metric": {}, "value": [1, 2]}]))
    assert info.value.reason == "decode"


def test_points_are_one_gauge_with_a_point_per_series_at_the_tick() -> None:
    request = points_request(
        "api-requests",
        TICK_NS,
        [({"route": "/v1", "customer": "acme"}, 12.5), ({"customer": "globex"}, 3.0)],
        {"otlp_meter.source.name": "prom"},
    )
    [resource_metrics] = request.resource_metrics
    [scope_metrics] = resource_metrics.scope_metrics
    [metric] = scope_metrics.metrics
    assert (scope_metrics.scope.name, scope_metrics.scope.version) == (SCOPE_NAME, "")
    assert metric.name == METRIC_NAME
    points = metric.gauge.data_points
    assert [(p.time_unix_nano, p.as_double) for p in points] == [(TICK_NS, 12.5), (TICK_NS, 3.0)]
    # Labels sorted (ids must not depend on label order), then the query's name.
    assert [kv.key for kv in points[0].attributes] == ["customer", "route", "prometheus.query.name"]


def test_the_prometheus_pack_maps_the_points_to_events_typed_by_the_query() -> None:
    request = points_request("api-requests", TICK_NS, [({"customer": "acme"}, 1234.0)], {})
    result = RulesEngine.from_config(RulesConfig(packs=["prometheus"])).map_metrics(request, TICK_NS)
    [event] = [orjson.loads(e.payload) for e in result.events]
    assert (event["type"], event["subject"], event["time"], event["data"]) == (
        "api-requests",
        "acme",
        "2024-06-01T00:00:00Z",
        {"customer": "acme", "prometheus.query.name": "api-requests", "value": 1234},
    )


@pytest.mark.parametrize(
    ("promql", "kind"),
    [
        ("1", "scalar"),
        (" -0x1F ", "scalar"),
        ("1.5e3", "scalar"),
        ("(42)", "scalar"),
        ("scalar(sum(up))", "scalar"),
        ("time()", "scalar"),
        ('"usage"', "string"),
        ("up[5m]", "matrix"),
        ("(up)[5m]", "matrix"),
        ("up[5m] offset 1h", "matrix"),
        ("rate(x[5m])[1h:1m] @ end()", "matrix"),
        ('x{path="/a]"}[1m]  # a comment', "matrix"),
    ],
)
def test_queries_that_cannot_return_an_instant_vector_are_seen_in_their_text(promql: str, kind: str) -> None:
    assert static_result_type(promql) == kind


@pytest.mark.parametrize(
    "promql",
    [
        "sum by (customer) (increase(api_requests_total[5m]))",
        'x{path="/a]"}',
        "up # ends with ]",
        "scalar(x) * y",
        "time() - process_start_time_seconds",
        'label_replace(x, "a", "]", "", "")',
        "(a) + (b)",
        "vector(1)",
        "1 + 1",  # a scalar too, but only the answer shows it (checked at run time)
    ],
)
def test_queries_that_may_return_an_instant_vector_pass(promql: str) -> None:
    assert static_result_type(promql) is None
