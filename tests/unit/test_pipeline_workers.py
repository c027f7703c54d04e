"""Cumulative streams billed once when several processes (``service.workers``) share one queue.

Each intake worker has its own pipeline and its own in-memory cache of stream state. A stream's
points can land on any of them (a reconnect goes to another worker), so a cache may be stale: an
append commits only if every state its mapping read (and the watermark) is still stored as it was
read; else it is refused, the cache reloaded and the request mapped again. Processes busy with
different streams never get in each other's way. Here a pipeline in this process and one in
another process share one queue directory.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.errors import StateConflictError
from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import MAX_STATE_CONFLICTS, Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from otlp_meter.rules.delta import KEY_PREFIX
from otlp_meter.telemetry.metrics import Metrics
from tests.support.rules import ACME_REQUESTS
from tests.support.watched_queue import WatchedQueue
from tests.unit.rules.otlp import T0, metric, metrics_request

SECOND = 1_000_000_000
DAY = 86_400 * SECOND
START = T0 - 3600 * SECOND
RULE = ACME_REQUESTS


def cumulative(value: int, at: int, customer: str = "") -> Any:
    """A cumulative point of the stream of ``customer`` (the stream with no attributes by default)."""
    point = {"value": value, "start_time_unix_nano": START, "time_unix_nano": at}
    m = metric("api.requests", "sum", {**point, "attrs": {"customer": customer}} if customer else point)
    m.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    return metrics_request(m)


def queue_config(directory: Path) -> QueueConfig:
    return QueueConfig.model_validate({"directory": directory, "sync": False})


def pipeline_over(q: LmdbQueue) -> Pipeline:
    rules = RulesConfig.model_validate(
        {"packs": [], "inline": [RuleModel.model_validate(RULE)], "cumulative": {"initial_value": "keep"}}
    )
    pipeline = Pipeline(RulesEngine.from_config(rules), q, Metrics(), clock_ns=lambda: T0)
    pipeline.open_streams()
    return pipeline


class OtherProcess:
    """A pipeline in a process of its own (an intake worker) over the same queue directory.

    LMDB environments are per process (py-lmdb refuses a second open of one path), exactly as the
    service runs them; ``ingest`` sends it one cumulative point and waits for its answer.
    """

    def __init__(self, directory: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(directory, child), daemon=True)
        self._process.start()
        assert self._conn.recv() == "ready"

    async def ingest(self, value: int, at: int, customer: str = "") -> None:
        answer = await asyncio.to_thread(self._call, (value, at, customer))
        if answer != "ok":
            raise AssertionError(f"the other process failed: {answer}")

    def _call(self, message: tuple[int, int, str] | None) -> str:
        self._conn.send(message)
        return str(self._conn.recv())

    def close(self) -> None:
        self._call(None)
        self._process.join(10)


def _serve(directory: Path, conn: Connection) -> None:
    async def main() -> None:
        q = LmdbQueue(queue_config(directory))
        q.open(owner=False)
        pipeline = pipeline_over(q)
        conn.send("ready")
        while (message := await asyncio.to_thread(conn.recv)) is not None:
            try:
                await pipeline.ingest_metrics(cumulative(*message))
                conn.send("ok")
            except Exception as exc:  # reported to the test
                conn.send(repr(exc))
        q.close()
        conn.send("closed")

    asyncio.run(main())


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Pipeline, LmdbQueue, OtherProcess]]:
    """The primary's pipeline and queue (owner) here, a worker's pipeline in another process."""
    primary = LmdbQueue(queue_config(tmp_path))
    primary.open()
    other = OtherProcess(tmp_path)
    yield pipeline_over(primary), primary, other
    other.close()
    primary.close()


def billed(q: LmdbQueue) -> list[int]:
    leased = q.lease(1000, 1 << 30)
    q.release([e.seq for e in leased])
    return [orjson.loads(e.payload)["data"]["n"] for e in leased]


async def test_points_of_one_stream_alternating_between_processes_are_billed_once(
    two: tuple[Pipeline, LmdbQueue, OtherProcess],
) -> None:
    a, q, b = two
    await a.ingest_metrics(cumulative(10, T0))
    await b.ingest(15, T0 + SECOND)  # b never saw the stream: loads it
    await a.ingest_metrics(cumulative(22, T0 + 2 * SECOND))  # a's cache says 10: stale
    await b.ingest(22, T0 + 2 * SECOND)  # the same export, retried, lands on b
    await a.ingest_metrics(cumulative(30, T0 + 3 * SECOND))
    await b.ingest(31, T0 + 4 * SECOND)
    assert billed(q) == [10, 5, 7, 8, 1]
    assert sum(billed(q)) == 31, "the sum of the deltas is the counter's true increase"


async def test_concurrent_commits_of_one_stream_bill_the_true_increase(
    two: tuple[Pipeline, LmdbQueue, OtherProcess],
) -> None:
    a, q, b = two
    await a.ingest_metrics(cumulative(10, T0))
    await b.ingest(12, T0 + SECOND)
    for n in range(2, 30, 2):
        # Both may map against the same stored state; whichever commits second conflicts, reloads
        # the stream and maps again (its point may then be out of order: no event).
        await asyncio.gather(
            a.ingest_metrics(cumulative(10 + 5 * n, T0 + n * SECOND)),
            b.ingest(10 + 5 * (n + 1), T0 + (n + 1) * SECOND),
        )
    # The last point is 10 + 5 * 29 at T0 + 29 s: every increase up to it billed exactly once.
    assert sum(billed(q)) == 10 + 5 * 29


async def test_the_same_point_sent_to_two_processes_at_once_is_billed_once(
    two: tuple[Pipeline, LmdbQueue, OtherProcess],
) -> None:
    a, q, b = two
    await a.ingest_metrics(cumulative(10, T0))
    await b.ingest(10, T0)  # b loads the stream: a duplicate, nothing billed
    for n in range(1, 10):
        await asyncio.gather(
            a.ingest_metrics(cumulative(10 + n, T0 + n * SECOND)), b.ingest(10 + n, T0 + n * SECOND)
        )
    assert billed(q) == [10] + [1] * 9


async def test_processes_busy_with_different_streams_never_conflict(tmp_path: Path) -> None:
    q = WatchedQueue(queue_config(tmp_path))
    q.open()
    a = pipeline_over(q)
    b = OtherProcess(tmp_path)
    try:
        await a.ingest_metrics(cumulative(0, T0, customer="a"))
        await b.ingest(0, T0, customer="b")  # b started before a wrote the first-start time: reloads
        q.conflicts = 0
        for n in range(1, 40):
            await asyncio.gather(
                a.ingest_metrics(cumulative(10 * n, T0 + n * SECOND, customer="a")),
                b.ingest(10 * n, T0 + n * SECOND, customer="b"),
            )
    finally:
        b.close()
    assert q.conflicts == 0
    assert sum(billed(q)) == 2 * 10 * 39
    q.close()


async def test_one_process_pays_no_reload_for_its_own_commits(tmp_path: Path) -> None:
    q = LmdbQueue(queue_config(tmp_path))
    q.open()
    pipeline = pipeline_over(q)
    reads: list[bytes] = []
    get_state = q.get_state

    def counting(key: bytes) -> bytes | None:
        reads.append(key)
        return get_state(key)

    q.get_state = counting  # type: ignore[method-assign]
    await pipeline.ingest_metrics(cumulative(10, T0))
    reads.clear()
    await pipeline.ingest_metrics(cumulative(15, T0 + SECOND))
    assert reads == [], "its cache is current: nothing read back, no reload"
    assert billed(q) == [10, 5]
    q.close()


class ContendedQueue(WatchedQueue):
    """Another process changes the streams' state between every read and every append."""

    changes = 0

    async def before_append(self, expect: Mapping[bytes, bytes | None]) -> None:
        stream_keys = [key for key in expect if key.startswith(KEY_PREFIX) and len(key) > 20]
        if stream_keys:  # a state the mapping read changes under it (unreadable here: no state)
            self.changes += 1
            await self.commit_elsewhere(dict.fromkeys(stream_keys, b"changed %d" % self.changes))


async def test_a_request_that_keeps_conflicting_is_refused_retryably_with_nothing_stored(
    tmp_path: Path,
) -> None:
    q = ContendedQueue(queue_config(tmp_path))
    q.open()
    pipeline = pipeline_over(q)
    with pytest.raises(StateConflictError) as refused:
        await pipeline.ingest_metrics(cumulative(10, T0))
    assert str(MAX_STATE_CONFLICTS) in str(refused.value)
    assert billed(q) == []
    q.close()


async def test_the_queue_refuses_an_append_whose_expectation_no_longer_holds(tmp_path: Path) -> None:
    q = LmdbQueue(queue_config(tmp_path))
    q.open()
    event = EncodedEvent(id="1", source="s", payload=b'{"id":"1","source":"s"}')
    await q.append((), (), {b"k": b"1"})
    with pytest.raises(StateConflictError):
        await q.append([event], (), {b"k": b"2"}, expect={b"k": None})
    assert q.get_state(b"k") == b"1"
    assert billed(q) == []
    result = await q.append([event], (), {b"k": b"2"}, expect={b"k": b"1"})
    assert result.appended == 1
    assert q.get_state(b"k") == b"2"
    q.close()


async def test_an_expiry_by_the_primary_reaches_every_process_s_cache(
    two: tuple[Pipeline, LmdbQueue, OtherProcess],
) -> None:
    """The primary expires a stream a worker has cached: the worker reloads (the expiry changed the
    stream's state and the watermark its commit expected) and treats the stream's next point as a
    forgotten stream's, billing none of its history again."""
    a, q, b = two
    await b.ingest(10, T0)
    await b.ingest(15, T0 + SECOND)
    rules = RulesConfig.model_validate(
        {"packs": [], "inline": [RuleModel.model_validate(RULE)], "cumulative": {"max_staleness": "1d"}}
    )
    primary = Pipeline(RulesEngine.from_config(rules), q, Metrics(), clock_ns=lambda: T0 + 2 * DAY)
    assert await primary.expire_streams() == 1
    await b.ingest(40, T0 + 2 * DAY)  # its cache said 15: that would bill 25
    await b.ingest(41, T0 + 2 * DAY + SECOND)
    await a.ingest_metrics(cumulative(43, T0 + 2 * DAY + 2 * SECOND))
    assert billed(q) == [10, 5, 1, 2]
