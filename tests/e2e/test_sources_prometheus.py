"""The prometheus source against a real Prometheus server scraping an exporter the test runs.

Prometheus keeps real time, so the source ticks every second and the tests wait for ticks to pass
(bounded waits on what arrived, never fixed sleeps). One Prometheus serves the module: it takes a
few seconds before its first scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Gauge

from otlp_meter.sources.prometheus import PrometheusSource, PrometheusSourceConfig
from tests.e2e.conftest import ServiceFactory
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.prometheus import Exporter, PrometheusServer, require_prometheus
from tests.support.service import wait_until
from tests.support.source_sink import PipelineSink

pytestmark = pytest.mark.e2e

USAGE = "sum by (customer) (usage_units)"
VALUES = {"acme": 5.0, "globex": 7.0}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    require_prometheus()
    exporter = Exporter()
    gauge = Gauge("usage_units", "Units used, per customer.", ["customer"], registry=exporter.registry)
    for customer, value in VALUES.items():
        gauge.labels(customer).set(value)
    try:
        with PrometheusServer(tmp_path_factory.mktemp("prometheus"), [exporter.target]) as server:
            server.wait_for_series("usage_units", count=len(VALUES))
            yield server
    finally:
        exporter.close()


def source_config(prometheus: PrometheusServer, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "e2e",
        "url": prometheus.url,
        "interval": "1s",
        "query_offset": "0s",
        "max_catch_up": 100,
        "queries": [{"name": "units", "promql": USAGE}],
        "backoff": {"initial": "100ms", "max": "500ms"},
        **overrides,
    }


class Enough:
    """A SourceObserver that sets ``reached`` once every count in ``targets`` is reached."""

    def __init__(self, targets: dict[str, float]) -> None:
        self.targets = targets
        self.counts: dict[str, float] = {}
        self.reached = asyncio.Event()

    def count(self, kind: str, name: str, what: str, amount: float) -> None:
        self.counts[what] = self.counts.get(what, 0.0) + amount
        if all(self.counts.get(k, 0.0) >= v for k, v in self.targets.items()):
            self.reached.set()

    def gauge(self, kind: str, name: str, what: str, value: float) -> None:
        pass


def tick_of(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp())


def by_tick(events: list[dict[str, Any]]) -> dict[int, dict[str, set[str]]]:
    """tick → subject → the ids delivered for it."""
    ticks: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for event in events:
        ticks[tick_of(event)][event["subject"]].add(event["id"])
    return ticks


def contiguous_through(openmeter: FakeOpenMeter, last: float) -> bool:
    """Every tick from the first delivered to one at or after ``last`` arrived, for every customer."""
    ticks = by_tick(openmeter.events)
    if not ticks or max(ticks) < last:
        return False
    return all(set(ticks.get(t, {})) == set(VALUES) for t in range(min(ticks), max(ticks) + 1))


def test_each_series_is_an_event_per_tick_and_a_restart_catches_up_the_missed_ticks(
    prometheus: PrometheusServer, service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    config = {"rules": {"packs": ["prometheus"]}, "sources": {"prometheus": [source_config(prometheus)]}}
    service = service_factory(config).start()
    wait_until(lambda: len(by_tick(openmeter.events)) >= 2, timeout=15, what="two ticks delivered")
    service.stop()
    stopped = time.time()
    wait_until(lambda: time.time() >= stopped + 3.2, timeout=5, what="three ticks missed")
    service.start()
    restarted = time.time()
    wait_until(lambda: contiguous_through(openmeter, restarted + 1), timeout=20, what="catch-up delivered")
    service.stop()

    ticks = by_tick(openmeter.events)
    assert any(stopped < t < restarted - 1 for t in ticks), "the ticks of the downtime were caught up"
    for subjects in ticks.values():
        assert all(len(ids) == 1 for ids in subjects.values())  # one event per tick and customer
    assert openmeter.duplicates() == []
    sample = openmeter.events[0]
    assert (sample["type"], sample["data"]["value"]) == ("units", VALUES[sample["subject"]])
    assert sample["data"]["prometheus.query.name"] == "units"
    assert sample["data"]["customer"] == sample["subject"]


async def test_failures_and_non_numbers_from_a_real_server_are_counted_not_fatal(
    prometheus: PrometheusServer, tmp_path: Path
) -> None:
    config = PrometheusSourceConfig.model_validate(
        source_config(
            prometheus,
            queries=[
                {"name": "units", "promql": USAGE},
                {"name": "nan", "promql": "vector(0) / 0"},
                {"name": "inf", "promql": "sum(usage_units) / 0"},
                {"name": "scalar", "promql": "1 + 1"},
                {"name": "typo", "promql": "sum(usage_units"},
            ],
        )
    )
    enough = Enough({"ticks_completed": 9, "ticks_failed": 4})
    source = PrometheusSource(config, observer=enough)
    sink = PipelineSink(tmp_path, packs=["prometheus"])
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(sink, stop))
    try:
        await asyncio.wait_for(enough.reached.wait(), 15)  # ticks follow the real clock
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    try:
        subjects = {(e["type"], e["subject"]) for e in sink.events_queued()}
        assert subjects == {("units", "acme"), ("units", "globex")}
        assert source.stats.counts["points_rejected"] >= 2  # NaN and +Inf, each tick
        state = {
            q: sink.get_state(f"source/prometheus/e2e/query/{q}".encode()) for q in ("scalar", "typo", "nan")
        }
        assert state["scalar"] is None  # failing queries keep their cursor
        assert state["typo"] is None
        assert state["nan"] is not None  # a tick of only NaNs still completes
    finally:
        sink.close()
