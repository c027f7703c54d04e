"""The prometheus source's schedule, cursors and failures, on a clock the test moves.

Prometheus is answered by an ``httpx.MockTransport`` (the real server is in
tests/e2e/test_sources_prometheus.py); the pipeline and the LMDB queue are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from otlp_meter.sources.base import cursor_key
from otlp_meter.sources.prometheus import PrometheusSource, PrometheusSourceConfig
from tests.support.fake_openmeter import validate_event
from tests.support.fake_time import FakeTime
from tests.support.source_sink import PipelineSink

MINUTE = 60.0
T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z, a multiple of 60
USAGE = "sum by (customer) (increase(api_requests_total[1m]))"
STORAGE = "sum by (customer) (storage_bytes)"

Answer = Callable[[float], httpx.Response]


def vector(*points: tuple[str, str]) -> Answer:
    """An answer of one series per (customer, value)."""

    def respond(at: float) -> httpx.Response:
        result = [{"metric": {"customer": c}, "value": [at, v]} for c, v in points]
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    return respond


def failing(status: int = 503, error_type: str = "unavailable") -> Answer:
    return lambda at: httpx.Response(status, json={"status": "error", "errorType": error_type, "error": "x"})


class FakePrometheus:
    """``POST /api/v1/query`` answered per query text; every call is recorded."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer | list[Answer]] = {}
        self.calls: list[tuple[str, float]] = []
        self.headers: list[httpx.Headers] = []
        self.forms: list[dict[str, list[str]]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/api/v1/query")
        form = parse_qs(request.content.decode())
        query, at = form["query"][0], float(form["time"][0])
        self.calls.append((query, at))
        self.forms.append(form)
        self.headers.append(request.headers)
        answer = self.answers[query]
        if isinstance(answer, list):  # a script: one answer per call, the last one repeats
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        return answer(at)

    def times(self, query: str) -> list[float]:
        return [at for q, at in self.calls if q == query]


def config(**overrides: Any) -> PrometheusSourceConfig:
    base: dict[str, Any] = {
        "name": "prom",
        "url": "http://prometheus.test:9090",
        "interval": "1m",
        "query_offset": "30s",
        "max_catch_up": 10,
        "queries": [{"name": "api-requests", "promql": USAGE}],
        "backoff": {"initial": "1s", "max": "8s"},
    }
    return PrometheusSourceConfig.model_validate({**base, **overrides})


TWO_QUERIES = [{"name": "api-requests", "promql": USAGE}, {"name": "storage", "promql": STORAGE}]


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[PipelineSink]:
    sink = PipelineSink(tmp_path)
    yield sink
    sink.close()


@pytest.fixture
def prometheus() -> FakePrometheus:
    fake = FakePrometheus()
    fake.answers[USAGE] = vector(("acme", "12"), ("globex", "3.5"))
    fake.answers[STORAGE] = vector(("acme", "1024"))
    return fake


class Harness:
    def __init__(self, sink: PipelineSink, prometheus: FakePrometheus, time: FakeTime) -> None:
        self.sink, self.prometheus, self.time = sink, prometheus, time

    def source(self, cfg: PrometheusSourceConfig) -> PrometheusSource:
        transport = httpx.MockTransport(self.prometheus.handle)
        return PrometheusSource(cfg, clock=self.time.clock, wait=self.time.wait, transport=transport)

    @asynccontextmanager
    async def running(self, source: PrometheusSource) -> AsyncIterator[PrometheusSource]:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(self.sink, stop))
        try:
            yield source
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)

    def cursor(self, query: str) -> bytes | None:
        return self.sink.get_state(cursor_key("prometheus", "prom", f"query/{query}"))

    def events(self) -> list[dict[str, Any]]:
        return self.sink.events_queued()


@pytest.fixture
def harness(sink: PipelineSink, prometheus: FakePrometheus) -> Harness:
    return Harness(sink, prometheus, FakeTime(T0 + 30))


def ticks(events: list[dict[str, Any]], kind: str = "api-requests") -> list[tuple[str, str]]:
    return [(e["time"], e["subject"]) for e in events if e["type"] == kind]


async def test_the_first_run_evaluates_the_latest_tick_at_its_offset(harness: Harness) -> None:
    async with harness.running(harness.source(config())):
        await harness.time.settle(1)
    assert harness.prometheus.calls == [(USAGE, T0 - 30)]
    events = harness.events()
    name = {"prometheus.query.name": "api-requests"}
    assert [(e["type"], e["subject"], e["time"], e["data"]) for e in events] == [
        ("api-requests", "acme", "2024-06-01T00:00:00Z", {"customer": "acme", **name, "value": 12}),
        ("api-requests", "globex", "2024-06-01T00:00:00Z", {"customer": "globex", **name, "value": 3.5}),
    ]
    assert harness.cursor("api-requests") == str(int(T0)).encode()
    assert harness.time.waited == [30.0]  # until the next tick, no sooner


async def test_each_tick_runs_once_as_time_passes(harness: Harness) -> None:
    async with harness.running(source := harness.source(config())):
        for _ in range(3):
            await harness.time.settle(1)
            await harness.time.advance(MINUTE)
        await harness.time.settle(1)
    assert harness.prometheus.times(USAGE) == [T0 - 30 + i * MINUTE for i in range(4)]
    assert len(ticks(harness.events())) == 8
    assert harness.cursor("api-requests") == str(int(T0 + 3 * MINUTE)).encode()
    assert source.stats.counts == {"ticks_completed": 4, "points": 8}
    assert source.stats.gauges["cursor_lag_seconds"] == 30.0


async def test_a_restart_after_downtime_runs_the_missed_ticks_oldest_first(harness: Harness) -> None:
    async with harness.running(harness.source(config())):
        await harness.time.settle(1)
    await harness.time.advance(3 * MINUTE + 15)  # down through three ticks
    async with harness.running(source := harness.source(config())):
        await harness.time.settle(1)
    assert harness.prometheus.times(USAGE) == [T0 - 30 + i * MINUTE for i in range(4)]
    times = [t for t, _ in ticks(harness.events())]
    assert times == [f"2024-06-01T00:0{i}:00Z" for i in range(4) for _ in range(2)]
    assert source.stats.counts == {"ticks_completed": 3, "ticks_caught_up": 2, "points": 6}


async def test_catch_up_is_bounded_and_the_skipped_ticks_are_counted(harness: Harness) -> None:
    async with harness.running(harness.source(config(max_catch_up=2))):
        await harness.time.settle(1)
    await harness.time.advance(5 * MINUTE)
    async with harness.running(source := harness.source(config(max_catch_up=2))):
        await harness.time.settle(1)
    assert harness.prometheus.times(USAGE) == [T0 - 30, T0 + 4 * MINUTE - 30, T0 + 5 * MINUTE - 30]
    assert source.stats.counts["ticks_skipped"] == 3


async def test_a_failing_query_keeps_its_cursor_and_retries_while_the_others_go_on(harness: Harness) -> None:
    cfg = config(queries=TWO_QUERIES)
    prometheus = harness.prometheus
    async with harness.running(source := harness.source(cfg)):
        await harness.time.settle(2)
        prometheus.answers[STORAGE] = [failing(), failing(), failing(), vector(("acme", "2048"))]
        await harness.time.advance(MINUTE)  # tick 1: storage fails, waits 1s
        await harness.time.settle(2)
        assert harness.cursor("storage") == str(int(T0)).encode()
        assert harness.cursor("api-requests") == str(int(T0 + MINUTE)).encode()
        await harness.time.advance(1)  # storage fails again, waits 2s
        await harness.time.settle(2)
        await harness.time.advance(MINUTE)  # tick 2 for api-requests; storage's 2s wait ends: fails, 4s
        await harness.time.settle(2)
        await harness.time.advance(4)  # storage recovers: runs tick 1, then tick 2
        await harness.time.settle(2)
    assert prometheus.times(USAGE) == [T0 - 30, T0 + 30, T0 + 90]
    storage_times = prometheus.times(STORAGE)
    assert storage_times == [T0 - 30] + [T0 + 30] * 4 + [T0 + 90]
    assert ticks(harness.events(), "storage") == [
        ("2024-06-01T00:00:00Z", "acme"),
        ("2024-06-01T00:01:00Z", "acme"),
        ("2024-06-01T00:02:00Z", "acme"),
    ]
    assert harness.cursor("storage") == str(int(T0 + 2 * MINUTE)).encode()
    assert source.stats.counts["ticks_failed"] == 3
    assert harness.time.waited.count(1.0) == 1
    assert 2.0 in harness.time.waited
    assert 4.0 in harness.time.waited


@pytest.mark.parametrize("result_type", ["scalar", "string", "matrix"])
async def test_a_query_answering_another_result_type_fails_without_crashing(
    harness: Harness, result_type: str
) -> None:
    result: Any = [] if result_type == "matrix" else [T0, "1"]
    harness.prometheus.answers[STORAGE] = lambda at: httpx.Response(
        200, json={"status": "success", "data": {"resultType": result_type, "result": result}}
    )
    async with harness.running(source := harness.source(config(queries=TWO_QUERIES))):
        await harness.time.settle(2)
        await harness.time.advance(MINUTE)
        await harness.time.settle(2)
    assert len(ticks(harness.events())) == 4  # the other query went on
    assert harness.cursor("storage") is None
    assert source.stats.counts["ticks_failed"] >= 2


async def test_nan_and_infinite_samples_are_rejected_and_counted(harness: Harness) -> None:
    harness.prometheus.answers[USAGE] = vector(("a", "NaN"), ("b", "+Inf"), ("c", "-Inf"), ("d", "4"))
    async with harness.running(source := harness.source(config())):
        await harness.time.settle(1)
    assert ticks(harness.events()) == [("2024-06-01T00:00:00Z", "d")]
    assert source.stats.counts == {"ticks_completed": 1, "points": 1, "points_rejected": 3}
    assert harness.cursor("api-requests") == str(int(T0)).encode()


async def test_a_full_queue_pauses_the_query_and_the_same_points_are_offered_again(harness: Harness) -> None:
    harness.sink.refuse = 2
    async with harness.running(source := harness.source(config())):
        await harness.time.settle(1)
        assert harness.cursor("api-requests") is None
        await harness.time.advance(1)
        await harness.time.settle(1)
        await harness.time.advance(2)
        await harness.time.settle(1)
    assert harness.sink.refused == 2
    assert len(harness.prometheus.calls) == 1  # not queried again: the answer waits for the queue
    assert len(harness.events()) == 2
    assert source.stats.counts["commits_retried"] == 2
    assert harness.cursor("api-requests") == str(int(T0)).encode()


async def test_network_errors_are_retried(harness: Harness) -> None:
    attempts = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise httpx.ConnectError("connection refused")
        if attempts == 2:
            raise httpx.ReadTimeout("slow")
        return harness.prometheus.handle(request)

    transport = httpx.MockTransport(flaky)
    source = PrometheusSource(config(), clock=harness.time.clock, wait=harness.time.wait, transport=transport)
    async with harness.running(source):
        await harness.time.settle(1)
        await harness.time.advance(1)
        await harness.time.settle(1)
        await harness.time.advance(2)
        await harness.time.settle(1)
    assert len(harness.events()) == 2
    assert source.stats.counts["ticks_failed"] == 2


async def test_headers_are_sent_and_stay_out_of_the_configs_text(harness: Harness) -> None:
    cfg = config(headers={"Authorization": "Bearer s3cret-token", "X-Scope-OrgID": "tenant-1"})
    async with harness.running(harness.source(cfg)):
        await harness.time.settle(1)
    [headers] = harness.prometheus.headers
    assert (headers["authorization"], headers["x-scope-orgid"]) == ("Bearer s3cret-token", "tenant-1")
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg.model_dump())


async def test_stopping_interrupts_a_backoff(harness: Harness) -> None:
    harness.prometheus.answers[USAGE] = failing(422, "execution")
    source = harness.source(config(backoff={"initial": "1h", "max": "1h"}))
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(harness.sink, stop))
    await harness.time.settle(1)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert source.stats.counts == {"ticks_failed": 1}


async def test_queued_events_are_valid_openmeter_events(harness: Harness) -> None:
    async with harness.running(harness.source(config())):
        await harness.time.settle(1)
    for event in harness.events():
        assert validate_event(orjson.loads(orjson.dumps(event)), None, "v1") == []


def partial(*points: tuple[str, str]) -> Answer:
    """What Thanos answers when a store gateway is down and partial responses are allowed."""

    def respond(at: float) -> httpx.Response:
        result = [{"metric": {"customer": c}, "value": [at, v]} for c, v in points]
        data = {"resultType": "vector", "result": result}
        warnings = ["partial response: store gateway eu-1 unavailable"]
        return httpx.Response(200, json={"status": "success", "data": data, "warnings": warnings})

    return respond


async def test_a_partial_answer_is_retried_not_billed(harness: Harness) -> None:
    """A tick is committed once: billing what a partial answer holds would lose the rest for good."""
    harness.prometheus.answers[USAGE] = [partial(("acme", "5")), vector(("acme", "12"))]
    async with harness.running(source := harness.source(config())):
        await harness.time.settle(1)
        await harness.time.advance(1)  # the backoff after the partial answer
        await harness.time.settle(1)
    assert [e["data"]["value"] for e in harness.events()] == [12]
    assert source.stats.counts["ticks_failed"] == 1


async def test_partial_answers_are_billed_when_the_config_accepts_them(harness: Harness) -> None:
    harness.prometheus.answers[USAGE] = [partial(("acme", "5"))]
    async with harness.running(harness.source(config(partial_answers="accept"))):
        await harness.time.settle(1)
    assert [e["data"]["value"] for e in harness.events()] == [5]
    assert "partial_response" not in harness.prometheus.forms[0]


async def test_thanos_is_asked_not_to_answer_partially(harness: Harness) -> None:
    harness.prometheus.answers[USAGE] = vector(("acme", "12"))
    async with harness.running(harness.source(config())):
        await harness.time.settle(1)
    assert harness.prometheus.forms[0]["partial_response"] == ["false"]
