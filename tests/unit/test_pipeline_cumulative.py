"""Cumulative sums through the pipeline: each increase is billed once, across restarts and failed commits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.errors import QueueFullError
from otlp_meter.pipeline import Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from otlp_meter.telemetry.metrics import Metrics
from tests.unit.rules.otlp import T0, metric, metrics_request

SECOND = 1_000_000_000
START = T0 - 3600 * SECOND  # the stream started an hour before the first point we see
RULE = {
    "name": "requests",
    "match": {"signal": "metrics", "metric": "api.requests"},
    "event": {"type": "api", "subject": "acme", "data": {"n": {"path": "point.value", "as": "int"}}},
}


def cumulative(value: int, at: int) -> Any:
    m = metric("api.requests", "sum", {"value": value, "start_time_unix_nano": START, "time_unix_nano": at})
    m.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    return metrics_request(m)


def open_pipeline(directory: Path, **queue: Any) -> tuple[Pipeline, LmdbQueue]:
    q = LmdbQueue(QueueConfig.model_validate({"directory": directory, "sync": False, **queue}))
    q.open()
    rules = RulesConfig.model_validate(
        {"packs": [], "inline": [RuleModel.model_validate(RULE)], "cumulative": {"initial_value": "keep"}}
    )
    pipeline = Pipeline(RulesEngine.from_config(rules), q, Metrics(), clock_ns=lambda: T0)
    pipeline.open_streams()
    return pipeline, q


def billed(q: LmdbQueue) -> list[int]:
    leased = q.lease(1000, 1 << 30)
    q.release([e.seq for e in leased])
    return [orjson.loads(e.payload)["data"]["n"] for e in leased]


async def test_each_increase_is_billed_once_across_a_restart(tmp_path: Path) -> None:
    pipeline, q = open_pipeline(tmp_path)
    await pipeline.ingest_metrics(cumulative(10, T0))
    await pipeline.ingest_metrics(cumulative(15, T0 + SECOND))
    await pipeline.ingest_metrics(cumulative(15, T0 + SECOND))  # a retried export: no new usage
    q.close()

    pipeline, q = open_pipeline(tmp_path)  # the stream state was committed with the events
    await pipeline.ingest_metrics(cumulative(22, T0 + 2 * SECOND))
    assert billed(q) == [10, 5, 7]
    q.close()


async def test_a_commit_that_fails_leaves_the_increase_for_the_senders_retry(tmp_path: Path) -> None:
    pipeline, q = open_pipeline(tmp_path, max_bytes=600)
    await pipeline.ingest_metrics(cumulative(10, T0))
    refused_at = 0
    for i in range(1, 50):  # fill the queue until an append is refused
        try:
            await pipeline.ingest_metrics(cumulative(10 + i, T0 + i * SECOND))
        except QueueFullError:
            refused_at = i
            break
    assert refused_at == len(billed(q)), "the refused request left no event behind"
    leased = q.lease(1000, 1 << 30)
    await q.ack([e.seq for e in leased])  # the exporter drains
    # The refused request is retried by its sender and billed in full, exactly once.
    await pipeline.ingest_metrics(cumulative(10 + refused_at, T0 + refused_at * SECOND))
    assert billed(q) == [1]
    q.close()
