"""The engine's own contract: construction, empty input, and a failing rule never failing a request."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.events import EncodedEvent
from otlp_meter.rules import CompiledRule, RuleModel, RulesEngine, compile_rule
from otlp_meter.rules.paths import RecordView
from tests.unit.rules.otlp import RECEIVED, log_record, logs_request, rule


def compiled(name: str = "r") -> CompiledRule:
    return compile_rule(RuleModel.model_validate(rule(name)))


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate rule names: a"):
        RulesEngine([compiled("a"), compiled("b"), compiled("a")])


def test_empty_requests_map_to_nothing() -> None:
    engine = RulesEngine([compiled()])
    for result in (
        engine.map_logs(ExportLogsServiceRequest(), RECEIVED),
        engine.map_metrics(ExportMetricsServiceRequest(), RECEIVED),
    ):
        assert (result.events, result.rejected, result.records, result.unmatched, result.matched) == (
            [],
            [],
            0,
            0,
            {},
        )


def test_a_bug_in_a_rule_rejects_the_record_instead_of_failing_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(view: RecordView) -> EncodedEvent:
        raise KeyError("boom")

    good = compile_rule(RuleModel.model_validate(rule("good")))
    bad = dataclasses.replace(
        compile_rule(RuleModel.model_validate(rule("bad", continue_=True))), build=broken, native=None
    )
    with caplog.at_level(logging.ERROR, logger="otlp_meter.rules"):
        result = RulesEngine([bad, good]).map_logs(logs_request(log_record()), RECEIVED)
    assert [r.reason for r in result.rejected] == ["internal error: KeyError: 'boom'"]
    assert len(result.events) == 1
    (logged,) = [r for r in caplog.records if r.getMessage() == "rule_internal_error"]
    assert logged.__dict__["fields"]["rule"] == "bad"


def test_rule_names_in_evaluation_order() -> None:
    assert RulesEngine([compiled("b"), compiled("a")]).rule_names == ["b", "a"]


def test_a_rule_bug_hitting_every_record_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(view: RecordView) -> EncodedEvent:
        raise KeyError("boom")

    bad = dataclasses.replace(compile_rule(RuleModel.model_validate(rule("bad"))), build=broken, native=None)
    engine = RulesEngine([bad])
    with caplog.at_level(logging.ERROR, logger="otlp_meter.rules"):
        for _ in range(3):
            result = engine.map_logs(logs_request(log_record(), log_record(), log_record()), RECEIVED)
            assert len(result.rejected) == 3
    assert [r.getMessage() for r in caplog.records] == ["rule_internal_error"]
