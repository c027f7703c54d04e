"""Fixtures for the exporter's tests: a real queue in a temp dir, fresh metrics, a wired exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.exporters.config import ExporterConfig
from otlp_meter.exporters.delivery import Exporter
from otlp_meter.exporters.retry import Backoff
from otlp_meter.exporters.sink import Sink
from otlp_meter.queue import QueueConfig
from otlp_meter.telemetry.metrics import Metrics
from tests.unit.exporters.helpers import Harness, ObservedQueue, VirtualTime, exporter_config

HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[Callable[..., ObservedQueue]]:
    """Opens a queue on the test's data directory (the same directory = the same queue after a restart)."""
    opened: list[ObservedQueue] = []

    def factory(**overrides: Any) -> ObservedQueue:
        on_append = overrides.pop("on_append", None)
        settings: dict[str, Any] = {"directory": tmp_path / "data", "sync": False, "dedupe_max_keys": 10_000}
        queue = ObservedQueue(QueueConfig.model_validate({**settings, **overrides}), on_append=on_append)
        queue.open()
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        queue.close()


@pytest.fixture
async def make_harness(make_queue: Callable[..., ObservedQueue]) -> AsyncIterator[HarnessFactory]:
    """``make_harness(sink, config, *, time=VirtualTime(), random=..., queue={...})`` → a started harness."""
    harnesses: list[Harness] = []

    def factory(
        sink: Sink,
        config: ExporterConfig | None = None,
        *,
        time: VirtualTime | None = None,
        random: Callable[[], float] = lambda: 0.5,  # no jitter unless a test asks for it
        queue: dict[str, Any] | None = None,
        start: bool = True,
    ) -> Harness:
        config = config or exporter_config()
        holder: list[Exporter] = []
        q = make_queue(on_append=lambda: holder[0].notify() if holder else None, **(queue or {}))
        metrics = Metrics()
        backoff = Backoff(config.retry, random=random)
        if time is None:
            exporter = Exporter(q, sink, config, metrics, backoff=backoff)
        else:
            exporter = Exporter(q, sink, config, metrics, backoff=backoff, clock=time.clock, sleep=time.sleep)
        holder.append(exporter)
        harness = Harness(q, metrics, sink, exporter)
        if start:
            exporter.start()
        harnesses.append(harness)
        return harness

    yield factory
    for harness in harnesses:
        if not harness.stopped:
            await harness.exporter.stop(0)
