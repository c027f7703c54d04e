"""Aligned ticks: which intervals a periodic source (Kubernetes pods, Run:ai) bills, and that a
change of ``interval`` neither bills a stretch twice nor leaves one out, nor bills the future."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.pipeline import IngestResult
from otlp_meter.sources.base import SourceStats, aligned_ticks
from otlp_meter.sources.ticking import TickLoop, encode_tick

H = 3600.0
T = 1_700_006_400.0  # a multiple of an hour


def test_the_first_run_takes_the_latest_completed_tick_only() -> None:
    assert aligned_ticks(None, T + 61, 60, 10).due == [T + 60]


def test_after_downtime_the_missed_ticks_run_oldest_first_up_to_max_catch_up() -> None:
    plan = aligned_ticks(T, T + 5 * 60 + 1, 60, 3)
    assert (plan.due, plan.skipped) == ([T + 180, T + 240, T + 300], 2)


@pytest.mark.parametrize("now", [T + 2 * H + 2, T + 2 * H + 1700, T + 3 * H - 1])
def test_a_cursor_off_the_new_grid_is_followed_by_grid_ticks_that_never_end_in_the_future(now: float) -> None:
    last = T + 5 * 60  # committed with interval 60 s; the interval is now an hour
    plan = aligned_ticks(last, now, H, 100)
    assert plan.due == [T + H, T + 2 * H]
    assert all(end <= now for end in plan.due)


class Sink:
    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}

    async def metrics(self, request: ExportMetricsServiceRequest, cursor: dict[bytes, bytes]) -> IngestResult:
        self.state.update(cursor)
        return IngestResult(records=0, rejected=0, message="", appended=0, deduplicated=0)

    def get_state(self, key: bytes) -> bytes | None:
        return self.state.get(key)


async def test_the_first_tick_after_a_change_of_interval_starts_where_the_last_one_ended() -> None:
    windows: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def produce(start: float, end: float) -> ExportMetricsServiceRequest:
        windows.append((start, end))
        if len(windows) == 2:
            stop.set()
        return ExportMetricsServiceRequest()

    async def no_wait(event: asyncio.Event, seconds: float) -> bool:
        return event.is_set()

    stats = SourceStats("kubernetes", "test")
    now = T + 2 * H + 5
    loop = TickLoop("kubernetes", "test", H, 0, 100, produce, stats, clock=lambda: now, wait=no_wait)
    sink = Sink()
    sink.state[loop.key] = encode_tick(T + 300)  # the last tick of the old, 60 s interval
    await loop.run(sink, stop)  # type: ignore[arg-type]
    assert windows == [(T + 300, T + H), (T + H, T + 2 * H)]  # nothing twice, nothing left out
