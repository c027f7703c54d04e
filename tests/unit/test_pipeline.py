"""The pipeline: rules, then one durable append per request, then the result — never the other way
round. Events, dead letters for rejected records and the caller's state commit together or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from otlp_meter.errors import QueueFullError, ShuttingDownError
from otlp_meter.pipeline import IngestResult, Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from otlp_meter.telemetry.metrics import Metrics
from tests.unit.rules.otlp import log_record, logs_request, metric, metrics_request

NOW_NS = 1_717_200_000_123_000_000  # 2024-06-01T00:00:00.123Z
CURSOR = b"source:test:cursor"
TOKENS_RULE = {
    "name": "token-usage",
    "match": {"signal": "logs", "where": [{"path": "attributes.tokens", "exists": True}]},
    "event": {
        "type": "prompt",
        "subject": {"path": "attributes.customer"},
        "data": {"tokens": {"path": "attributes.tokens", "as": "int"}},
    },
}
COUNTER_RULE = {
    "name": "requests",
    "match": {"signal": "metrics", "metric": "api.requests"},
    "event": {"type": "api", "subject": "acme", "data": {"n": {"path": "point.value"}}},
}


class Harness:
    def __init__(self, queue: LmdbQueue) -> None:
        self.queue = queue
        self.metrics = Metrics()
        rules = RulesConfig(
            packs=[], inline=[RuleModel.model_validate(r) for r in (TOKENS_RULE, COUNTER_RULE)]
        )
        self.pipeline = Pipeline(RulesEngine.from_config(rules), queue, self.metrics, clock_ns=lambda: NOW_NS)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"otlp_meter_{name}", labels) or 0.0

    def events(self) -> list[dict[str, Any]]:
        leased = self.queue.lease(1000, 1 << 30)
        self.queue.release([e.seq for e in leased])
        return [orjson.loads(e.payload) for e in leased]


def make_queue(tmp_path: Path, **overrides: Any) -> LmdbQueue:
    queue = LmdbQueue(QueueConfig.model_validate({"directory": tmp_path, "sync": False, **overrides}))
    queue.open()
    return queue


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    queue = make_queue(tmp_path)
    yield Harness(queue)
    queue.close()


def usage(customer: str, tokens: Any, **fields: Any) -> Any:
    return log_record({"customer": customer, "tokens": tokens}, **fields)


async def test_events_are_committed_before_the_result_is_returned(harness: Harness) -> None:
    result = await harness.pipeline.ingest_logs(logs_request(usage("acme", 5), usage("globex", 7)))

    assert result == IngestResult(records=2, rejected=0, message="", appended=2, deduplicated=0)
    assert harness.queue.stats().depth == 2
    assert [(e["subject"], e["data"]) for e in harness.events()] == [
        ("acme", {"tokens": 5}),
        ("globex", {"tokens": 7}),
    ]
    assert harness.value("queue_appended_events_total") == 2
    assert harness.value("rules_matched_records_total", rule="token-usage") == 2


async def test_the_same_request_twice_is_stored_once(harness: Harness) -> None:
    request = logs_request(usage("acme", 5))

    first = await harness.pipeline.ingest_logs(request)
    second = await harness.pipeline.ingest_logs(request)

    assert (first.appended, first.deduplicated) == (1, 0)
    assert (second.appended, second.deduplicated) == (0, 1)
    assert harness.queue.stats().depth == 1
    assert harness.value("queue_deduplicated_events_total") == 1


async def test_records_no_rule_matches_are_counted_and_nothing_is_written(harness: Harness) -> None:
    result = await harness.pipeline.ingest_logs(logs_request(log_record({"other": 1}), log_record({})))

    assert result == IngestResult(records=2, rejected=0, message="", appended=0, deduplicated=0)
    assert harness.queue.stats().commits_total == 0
    assert harness.value("rules_unmatched_records_total", signal="logs") == 2


async def test_rejected_records_are_dead_lettered_and_explained(harness: Harness) -> None:
    request = logs_request(usage("acme", 5), usage("acme", "lots"), usage("globex", 2.5))

    result = await harness.pipeline.ingest_logs(request)

    assert (result.records, result.rejected, result.appended) == (3, 2, 1)
    assert result.message.count("token-usage: ") == 2
    assert harness.queue.stats().dead_letters == 2
    assert [entry.rule for entry in harness.queue.list_dead()] == ["token-usage", "token-usage"]
    labels = {"rule": "token-usage", "reason": "invalid_value"}
    assert harness.value("rules_rejected_records_total", **labels) == 2


async def test_the_message_names_three_reasons_and_counts_the_rest(harness: Harness) -> None:
    request = logs_request(*[usage(f"c{i}", "not a number") for i in range(5)])

    result = await harness.pipeline.ingest_logs(request)

    assert result.rejected == 5
    assert result.message.count("token-usage: ") == 3
    assert result.message.endswith("; and 2 more")


async def test_metrics_data_points_are_records_too(harness: Harness) -> None:
    request = metrics_request(
        metric("api.requests", "sum", {"value": 3}, {"value": 4}), metric("other", "gauge", {"value": 1})
    )

    result = await harness.pipeline.ingest_metrics(request)

    assert (result.records, result.appended) == (3, 2)
    assert sorted(e["data"]["n"] for e in harness.events()) == [3, 4]
    assert harness.value("rules_unmatched_records_total", signal="metrics") == 1


async def test_state_commits_with_the_events(harness: Harness) -> None:
    await harness.pipeline.ingest_logs(logs_request(usage("acme", 5)), state={CURSOR: b"offset=10"})

    assert harness.queue.get_state(CURSOR) == b"offset=10"
    assert harness.queue.stats().depth == 1


async def test_state_alone_is_committed_even_when_no_record_makes_an_event(harness: Harness) -> None:
    await harness.pipeline.ingest_logs(logs_request(log_record({"other": 1})), state={CURSOR: b"offset=11"})
    assert harness.queue.get_state(CURSOR) == b"offset=11"

    await harness.pipeline.ingest_metrics(metrics_request(), state={CURSOR: None})
    assert harness.queue.get_state(CURSOR) is None


async def test_the_injected_clock_is_the_time_of_records_that_have_none(harness: Harness) -> None:
    await harness.pipeline.ingest_logs(logs_request(usage("acme", 5, time=0)))

    assert harness.events()[0]["time"] == "2024-06-01T00:00:00.123Z"


async def test_after_close_intake_nothing_is_taken(harness: Harness) -> None:
    harness.pipeline.close_intake()

    with pytest.raises(ShuttingDownError) as caught:
        await harness.pipeline.ingest_logs(logs_request(usage("acme", 5)), state={CURSOR: b"x"})
    with pytest.raises(ShuttingDownError):
        await harness.pipeline.ingest_metrics(metrics_request())

    assert 1 <= caught.value.retry_after <= 30
    assert harness.queue.stats().depth == 0
    assert harness.queue.get_state(CURSOR) is None


async def test_a_full_queue_refuses_everything_of_the_request_including_its_state(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, max_bytes=64)
    try:
        harness = Harness(queue)
        with pytest.raises(QueueFullError):
            await harness.pipeline.ingest_logs(
                logs_request(usage("acme", 5), usage("acme", "bad")), state={CURSOR: b"offset=12"}
            )
        stats = queue.stats()
        assert (stats.depth, stats.dead_letters) == (0, 0)
        assert queue.get_state(CURSOR) is None
        assert harness.value("queue_appended_events_total") == 0
    finally:
        queue.close()
