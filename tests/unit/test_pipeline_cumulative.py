"""Cumulative sums through the pipeline: each increase is billed once, across restarts and failed commits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter import pipeline as pipeline_module
from otlp_meter.errors import QueueFullError
from otlp_meter.pipeline import Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from otlp_meter.rules.delta import EXPIRED_BEFORE_KEY, KEY_PREFIX, StreamState
from otlp_meter.telemetry.metrics import Metrics
from tests.support.rules import ACME_REQUESTS
from tests.support.watched_queue import WatchedQueue
from tests.unit.rules.otlp import T0, metric, metrics_request

SECOND = 1_000_000_000
START = T0 - 3600 * SECOND  # the stream started an hour before the first point we see
RULE = ACME_REQUESTS


def cumulative(value: int, at: int, *customers: str) -> Any:
    points = [
        {"value": value, "start_time_unix_nano": START, "time_unix_nano": at, "attrs": {"customer": c}}
        for c in customers or ("acme",)
    ]
    m = metric("api.requests", "sum", *points)
    m.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    return metrics_request(m)


def open_pipeline(
    directory: Path,
    clock: Callable[[], int] = lambda: T0,
    queue_type: type[LmdbQueue] = LmdbQueue,
    **cumulative: Any,
) -> tuple[Pipeline, LmdbQueue]:
    q = queue_type(QueueConfig.model_validate({"directory": directory, "sync": False}))
    q.open()
    rules = RulesConfig.model_validate(
        {
            "packs": [],
            "inline": [RuleModel.model_validate(RULE)],
            "cumulative": {"initial_value": "keep", **cumulative},
        }
    )
    pipeline = Pipeline(RulesEngine.from_config(rules), q, Metrics(), clock_ns=clock)
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
    q = LmdbQueue(QueueConfig.model_validate({"directory": tmp_path, "sync": False, "max_bytes": 600}))
    q.open()
    rules = RulesConfig.model_validate(
        {"packs": [], "inline": [RuleModel.model_validate(RULE)], "cumulative": {"initial_value": "keep"}}
    )
    pipeline = Pipeline(RulesEngine.from_config(rules), q, Metrics(), clock_ns=lambda: T0)
    pipeline.open_streams()
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


# --- expiry (rules.cumulative.max_staleness) -----------------------------------------------------

HOUR = 3600 * SECOND


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def stream_states(q: LmdbQueue) -> dict[bytes, StreamState]:
    """Every stream state stored (read in a writer transaction, like the expiry itself)."""

    def plan(
        get: Callable[[bytes], bytes | None], scan: Callable[[bytes], Iterator[tuple[bytes, bytes]]]
    ) -> tuple[dict[bytes, bytes | None], dict[bytes, StreamState]]:
        found = {}
        for key, raw in scan(KEY_PREFIX):
            if not key.startswith(KEY_PREFIX):
                break
            state = StreamState.decode(raw)
            if state is not None and len(key) == len(KEY_PREFIX) + 16:
                found[key] = state
        return {}, found

    return await q.sweep_state(plan)


def expired_total(pipeline: Pipeline) -> float:
    registry = pipeline._metrics.registry
    return registry.get_sample_value("otlp_meter_rules_cumulative_streams_expired_total") or 0.0


async def test_a_stream_forgotten_after_max_staleness_never_bills_its_history_again(tmp_path: Path) -> None:
    clock = Clock()
    pipeline, q = open_pipeline(tmp_path, clock, max_staleness="1h")
    await pipeline.ingest_metrics(cumulative(10, T0))
    await pipeline.ingest_metrics(cumulative(15, T0 + SECOND))
    clock.now = T0 + HOUR + SECOND
    assert await pipeline.expire_streams() == 0, "last seen exactly max_staleness ago: kept"
    clock.now = T0 + 2 * HOUR
    assert await pipeline.expire_streams() == 1
    assert await stream_states(q) == {}
    assert q.get_state(EXPIRED_BEFORE_KEY) == (T0 + HOUR).to_bytes(8, "big")
    assert expired_total(pipeline) == 1
    q.close()

    pipeline, q = open_pipeline(tmp_path, clock, max_staleness="1h")  # across a restart too
    await pipeline.ingest_metrics(cumulative(25, T0 + 2 * HOUR))  # it was only silent
    await pipeline.ingest_metrics(cumulative(27, T0 + 2 * HOUR + SECOND))
    assert billed(q) == [10, 5, 2], "the 10 of its silence are lost, its history is not billed again"
    q.close()


async def test_the_primary_s_own_cache_forgets_expired_streams(tmp_path: Path) -> None:
    clock = Clock()
    pipeline, q = open_pipeline(tmp_path, clock, max_staleness="1h")
    await pipeline.ingest_metrics(cumulative(10, T0))
    clock.now = T0 + 2 * HOUR
    await pipeline.expire_streams()
    await pipeline.ingest_metrics(cumulative(30, T0 + 2 * HOUR))
    assert billed(q) == [10], "the cached state is not used (nor written back) after the expiry"
    [state] = (await stream_states(q)).values()
    assert state.value == 30
    q.close()


async def test_expiry_runs_in_bounded_batches_and_keeps_live_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "EXPIRY_BATCH", 4)
    clock = Clock()
    pipeline, q = open_pipeline(tmp_path, clock, max_staleness="1h")
    await pipeline.ingest_metrics(cumulative(1, T0, *[f"c{n}" for n in range(10)]))
    await pipeline.ingest_metrics(cumulative(1, T0 + 90 * 60 * SECOND, "live"))
    transactions = 0
    sweep = q.sweep_state

    async def counting(plan: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return await sweep(plan)

    q.sweep_state = counting  # type: ignore[method-assign]
    clock.now = T0 + 2 * HOUR
    assert await pipeline.expire_streams() == 10
    assert transactions >= 3  # 11 streams and the first-start key, at most 4 read each
    assert [s.time for s in (await stream_states(q)).values()] == [T0 + 90 * 60 * SECOND]
    q.close()


async def test_max_staleness_zero_never_expires(tmp_path: Path) -> None:
    clock = Clock()
    pipeline, q = open_pipeline(tmp_path, clock, max_staleness=0)
    await pipeline.ingest_metrics(cumulative(10, T0))
    clock.now = T0 + 10_000 * HOUR
    assert await pipeline.expire_streams() == 0
    assert len(await stream_states(q)) == 1
    q.close()


class ExpiringQueue(WatchedQueue):
    """An expiry (of another pipeline: the primary's) commits between a mapping and its append."""

    expire: Callable[[], Any] | None = None

    async def before_append(self, expect: Mapping[bytes, bytes | None]) -> None:
        if expect:
            expire, self.expire = self.expire, None
            if expire is not None:
                await expire()


async def test_a_mapping_that_raced_an_expiry_is_mapped_again_without_the_expired_state(
    tmp_path: Path,
) -> None:
    clock = Clock()
    pipeline, q = open_pipeline(tmp_path, clock, ExpiringQueue, max_staleness="1h")
    assert isinstance(q, ExpiringQueue)
    await pipeline.ingest_metrics(cumulative(10, T0))
    await pipeline.ingest_metrics(cumulative(15, T0 + SECOND))
    clock.now = T0 + 2 * HOUR
    q.expire = pipeline.expire_streams
    q.appends_with_expect = 0
    # Mapped with the cache (15 → bills 15), but the stream expires before the append commits:
    # the generation check refuses the append, and the point is mapped again, as a forgotten one.
    await pipeline.ingest_metrics(cumulative(30, T0 + 2 * HOUR))
    assert q.appends_with_expect == 2
    assert billed(q) == [10, 5]
    [state] = (await stream_states(q)).values()
    assert (state.time, state.value) == (T0 + 2 * HOUR, 30)
    await pipeline.ingest_metrics(cumulative(31, T0 + 2 * HOUR + SECOND))
    assert billed(q) == [10, 5, 1]
    q.close()


async def test_start_expiry_runs_passes_until_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "EXPIRY_INTERVAL", 0.0)
    clock = Clock()
    pipeline, q = open_pipeline(tmp_path, clock, max_staleness="1h")
    await pipeline.ingest_metrics(cumulative(10, T0))
    clock.now = T0 + 2 * HOUR
    passes: list[int] = []
    done = asyncio.Event()
    expire = pipeline.expire_streams

    async def counting() -> int:
        passes.append(await expire())
        done.set()
        return passes[-1]

    pipeline.expire_streams = counting  # type: ignore[method-assign]
    pipeline.start_expiry()
    await asyncio.wait_for(done.wait(), 10)
    await pipeline.stop_expiry()
    assert passes[0] == 1
    assert expired_total(pipeline) == 1
    await pipeline.stop_expiry()  # idempotent
    q.close()
