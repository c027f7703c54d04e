"""CEL expressions: ``match.expr`` and ``{expr: ...}`` fields, checked at load, safe at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otlp_meter.errors import ConfigError
from otlp_meter.rules import RulesConfig, load_rules
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


def expr_rule(match_expr: str | None = None, **data: Any) -> dict[str, Any]:
    match = {"expr": match_expr} if match_expr is not None else {}
    return rule(match=match, event={"data": {key: {"expr": text} for key, text in data.items()}})


# --- match.expr ----------------------------------------------------------------------------------


def test_match_expr_selects_records_paths_cannot() -> None:
    big = expr_rule('attributes["tokens"] * 2 > 100 && resource.attributes["tier"].startsWith("gold")')
    request = logs_request(
        log_record({"tokens": 60}), log_record({"tokens": 10}), resource={"tier": "gold-1"}
    )
    result = engine(big).map_logs(request, RECEIVED)
    assert (len(result.events), result.unmatched) == (1, 1)


def test_match_expr_runs_after_the_where_conditions() -> None:
    # The record without "tokens" is filtered by the cheap path condition, so the expression,
    # which would fail on it, never runs.
    guarded = rule(
        match={"where": [{"path": "attributes.tokens", "exists": True}], "expr": 'attributes["tokens"] > 5'}
    )
    result = engine(guarded).map_logs(logs_request(log_record({"tokens": 9}), log_record({})), RECEIVED)
    assert (len(result.events), result.unmatched, result.rejected) == (1, 1, [])


def test_match_expr_that_fails_rejects_the_record_with_the_reason() -> None:
    result = map_one(expr_rule('attributes["tokens"] > 5'), log_record({}))
    assert reasons(result) == ["match.expr: expression failed: no such key 'tokens'"]
    assert result.rejected_records == 1


def test_match_expr_must_be_a_bool() -> None:
    result = map_one(expr_rule('attributes["tier"]'), log_record({"tier": "gold"}))
    assert reasons(result) == ["match.expr: must be true or false, got 'gold'"]


def test_has_and_in_guard_optional_attributes() -> None:
    guarded = expr_rule('"tier" in attributes && attributes["tier"] == "gold"')
    result = engine(guarded).map_logs(logs_request(log_record({}), log_record({"tier": "gold"})), RECEIVED)
    assert (len(result.events), result.unmatched, result.rejected) == (1, 1, [])


# --- fields --------------------------------------------------------------------------------------


def test_expression_fields_compute_values() -> None:
    data = data_of(
        expr_rule(
            total='attributes["input"] + attributes["output"]',
            label='record.body + "-" + string(record.severity_number)',
            cost='double(attributes["input"]) * 0.5',
        ),
        log_record({"input": 10, "output": 5}, body="chat", severity_number=9),
    )
    assert data == {"total": 15, "label": "chat-9", "cost": 5.0}


def test_expression_results_become_json_values() -> None:
    data = data_of(
        expr_rule(
            raw='b"hi"',
            when='timestamp("2024-01-01T00:00:00Z")',
            took='duration("1.5s")',
            both='[1, {"a": b"x"}]',
        ),
        log_record(),
    )
    assert data == {"raw": "aGk=", "when": "2024-01-01T00:00:00Z", "took": 1.5, "both": [1, {"a": "eA=="}]}


def test_null_is_no_value_default_optional_and_rejection_apply() -> None:
    fields = {
        "d": {"expr": "null", "default": 7},
        "o": {"expr": "null", "optional": True},
    }
    assert data_of(rule(event={"data": fields}), log_record()) == {"d": 7}
    result = map_one(rule(event={"data": {"n": {"expr": "null"}}}), log_record())
    assert reasons(result) == ["data.n: expression 'null' is null"]


def test_as_converts_expression_results() -> None:
    data = data_of(rule(event={"data": {"n": {"expr": '"42"', "as": "int"}}}), log_record())
    assert data == {"n": 42}


def test_evaluation_errors_are_rejections_naming_the_field() -> None:
    result = map_one(rule(event={"data": {"n": {"expr": 'attributes["a"] + 1'}}}), log_record({"a": "text"}))
    [reason] = reasons(result)
    assert reason.startswith("data.n: expression failed: Unsupported operation: string + int")


def test_subject_and_time_from_expressions() -> None:
    r = rule(
        event={
            "subject": {"expr": 'resource.attributes["tenant"] + "/" + attributes["user"]'},
            "time": {"expr": "record.time + 1000000000"},
        }
    )
    [event] = events(map_one(r, log_record({"user": "u1"}, time=T0), resource={"tenant": "t"}))
    assert (event["subject"], event["time"]) == ("t/u1", "2024-01-01T00:00:01Z")


def test_metric_variables() -> None:
    r = rule(
        signal="metrics",
        match={"expr": 'metric.name == "requests" && metric.temporality == "delta" && metric.monotonic'},
        event={
            "data": {
                "per_second": {
                    "expr": "double(point.value) / double((point.time - point.start_time) / 1000000000)"
                },
                "route": {"expr": 'attributes["route"]'},
                "scope": {"expr": "scope.name"},
            }
        },
    )
    m = metric(
        "requests",
        "sum",
        {"value": 120, "start_time_unix_nano": T0 - 60_000_000_000, "attrs": {"route": "/"}},
    )
    [event] = events(engine(r).map_metrics(metrics_request(m), RECEIVED))
    assert event["data"] == {"per_second": 2.0, "route": "/", "scope": "my.meter"}


def test_histogram_and_summary_points_expose_their_fields() -> None:
    r = rule(
        signal="metrics",
        event={"data": {"p": {"expr": "point"}}},
    )
    h = metric(
        "h",
        "histogram",
        {"count": 3, "sum": 6.0, "min": 1.0, "bucket_counts": [1, 2], "explicit_bounds": [2.0]},
    )
    q = metric("q", "summary", {"count": 2, "sum": 4.0, "quantile_values": [{"quantile": 0.5, "value": 2.0}]})
    hist, summary = [e["data"]["p"] for e in events(engine(r).map_metrics(metrics_request(h, q), RECEIVED))]
    assert hist == {
        "attributes": {},
        "time": T0,
        "count": 3,
        "sum": 6.0,
        "value": 6.0,
        "min": 1.0,
        "bucket_counts": [1, 2],
        "explicit_bounds": [2.0],
    }
    assert summary["quantiles"] == [{"quantile": 0.5, "value": 2.0}]
    assert summary["value"] == 4.0


# --- load-time checks ----------------------------------------------------------------------------


def problems_of(*rules: dict[str, Any]) -> list[tuple[str, str]]:
    from otlp_meter.rules import RuleModel

    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=[], inline=[RuleModel.model_validate(r) for r in rules]))
    return info.value.problems


def test_syntax_errors_are_reported_with_the_yaml_path() -> None:
    [(path, message)] = problems_of(expr_rule("attributes[", n="1"))
    assert path == "rules.inline[0].match.expr"
    assert message.startswith("invalid expression: Failed to parse expression 'attributes['")


def test_unknown_variables_are_reported_at_load() -> None:
    assert problems_of(expr_rule(n='atributes["x"]')) == [
        (
            "rules.inline[0].event.data.n.expr",
            "invalid expression: unknown variable atributes; "
            "logs expressions can read resource, scope, attributes, record",
        )
    ]
    assert problems_of(rule(signal="metrics", match={"expr": "record.time > 0"}))[0][1].endswith(
        "metrics expressions can read resource, scope, attributes, metric, point"
    )


def test_names_bound_by_macros_are_not_unknown_variables() -> None:
    r = expr_rule('attributes.exists(k, k.startsWith("gen_ai."))', keys="[1, 2].map(x, x * 2)")
    assert data_of(r, log_record({"gen_ai.x": 1})) == {"keys": [2, 4]}


def test_an_empty_expression_is_a_shape_error(tmp_path: Path) -> None:
    file = tmp_path / "r.yaml"
    file.write_text(
        "rules:\n  - name: r\n    match: {signal: logs, expr: ' '}\n    event: {type: t, subject: s}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=[], files=[file]))
    assert info.value.problems == [("rules[0].match.expr", "must not be empty")]
