"""The runai source end to end in-process: fake control plane → source → real pipeline and LMDB queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.errors import ConfigError
from otlp_meter.sources.base import cursor_key
from otlp_meter.sources.runai import RunaiSource, RunaiSourceConfig, build
from otlp_meter.sources.runai_usage import iso
from tests.support.fake_kubernetes import FakeTime
from tests.support.fake_runai import FakeRunai, pod, workload
from tests.support.source_sink import PipelineSink

T = 1_700_000_040.0  # a tick boundary
GIB = 2**30
CURSOR = cursor_key("runai", "runai", "tick")


def series(**per_type: Any) -> Any:
    """``series(GPU_ALLOCATION=2, GPU_UTILIZATION=lambda t: ...)``: constants or functions of time."""

    def sample(metric_type: str, at: float) -> float | None:
        value = per_type.get(metric_type)
        return value(at) if callable(value) else value

    return sample


def between(value: float, start: float = float("-inf"), end: float = float("inf")) -> Any:
    return lambda at: value if start <= at < end else None


@pytest.fixture
def fake() -> Iterator[FakeRunai]:
    server = FakeRunai(clock=lambda: T + 90)
    w1 = workload("w1", "finetune", created=T - 1000)
    w2 = workload("w2", "late", created=T - 40, project="vision", department="perception")
    w3 = workload("w3", "done-long-ago", created=T - 1000, completed=T - 200)
    w4 = workload("w4", "deleted-mid-tick", created=T - 1000, gpus=4)
    w4["deletedAt"] = iso(T - 20)
    w5 = workload("w5", "future", created=T + 5)
    w6 = workload("w6", "cpu-only", created=T - 1000, workload_type="workspace", gpus=0)
    server.workloads = [w1, w2, w3, w4, w5, w6]
    server.clusters = [{"uuid": "c1", "name": "dgx-cluster"}]
    server.series = {
        "w1": series(
            GPU_ALLOCATION=2,
            GPU_UTILIZATION=50.0,
            GPU_MEMORY_USAGE_BYTES=10 * GIB,
            CPU_USAGE_CORES=1.5,
            CPU_MEMORY_USAGE_BYTES=4 * GIB,
        ),
        "w2": series(GPU_ALLOCATION=between(1, start=T - 30), GPU_UTILIZATION=between(90.0, start=T - 30)),
        "w4": series(GPU_ALLOCATION=between(4, end=T - 20)),
        "w5": series(GPU_ALLOCATION=1),
        "w6": series(GPU_ALLOCATION=0, CPU_USAGE_CORES=2),
    }
    with server:
        yield server


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[PipelineSink]:
    s = PipelineSink(tmp_path / "queue", packs=("runai",))
    yield s
    s.close()


class Harness:
    def __init__(self, fake: FakeRunai, sink: PipelineSink) -> None:
        self.fake, self.sink = fake, sink
        self.time = FakeTime(T + 90)  # tick [T-60, T) is due at T+60 (delay 60)
        self.retry_waits: list[float] = []
        self.runs: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def _retry_wait(self, stop: asyncio.Event, seconds: float) -> bool:
        self.retry_waits.append(seconds)
        return stop.is_set()

    def start(self, **overrides: Any) -> RunaiSource:
        settings: dict[str, Any] = {
            "url": self.fake.url,
            "app_id": self.fake.app_id,
            "metrics_per_request": 2,
            "concurrency": 2,
            "page_size": 2,
            "timeout": 5,
            "backoff": {"initial": 0.5, "max": 4},
        }
        settings.update(overrides)
        config = RunaiSourceConfig.model_validate(settings)
        source = RunaiSource(
            config, self.fake.app_secret, clock=self.time, wait=self.time.wait, retry_wait=self._retry_wait
        )
        stop = asyncio.Event()
        self.runs.append((stop, asyncio.create_task(source.run(self.sink, stop))))
        return source

    async def stop(self) -> None:
        for stop, task in self.runs:
            stop.set()
            await asyncio.wait_for(task, 10)
        self.runs.clear()

    def billed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Events by (workload or pod, event time); a duplicate would be a billing bug."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for event in self.sink.events_queued():
            key = (event["data"].get("pod") or event["data"]["workload"], event["time"])
            assert key not in out, f"billed twice: {key}"
            out[key] = event
        return out


@pytest.fixture
async def harness(fake: FakeRunai, sink: PipelineSink) -> AsyncIterator[Harness]:
    h = Harness(fake, sink)
    yield h
    await h.stop()


def at(seconds: float) -> str:
    return iso(seconds).replace(".000Z", "Z")


async def test_each_workload_that_ran_is_billed_in_gpu_seconds(harness: Harness) -> None:
    source = harness.start()
    assert await harness.time.parked() == 30  # next tick [T, T+60) is read at T+120
    billed = harness.billed()
    assert sorted(billed) == [(name, at(T)) for name in ("cpu-only", "deleted-mid-tick", "finetune", "late")]
    common = {"cluster": "dgx-cluster", "workload_type": "training"}
    finetune = billed[("finetune", at(T))]
    assert (finetune["type"], finetune["subject"]) == ("runai-gpu", "llm-team")
    assert finetune["data"] == {
        "gpu_seconds": 120,
        "seconds": 60,
        "gpu_allocation": 2,
        "gpu_utilization": 50,
        "gpu_memory_bytes": 10 * GIB,
        "cpu_cores": 1.5,
        "memory_bytes": 4 * GIB,
        "project": "llm-team",
        "department": "research",
        "workload": "finetune",
        "workload_id": "w1",
        **common,
    }
    late = billed[("late", at(T))]
    assert late["subject"] == "vision"
    assert {k: late["data"][k] for k in ("gpu_seconds", "seconds", "gpu_allocation", "gpu_utilization")} == {
        "gpu_seconds": 30,
        "seconds": 30,
        "gpu_allocation": 1,
        "gpu_utilization": 90,
    }
    # Deleted at T-20, sampled every 15 s: the samples at T-60, T-45 and T-30 hold 15 s each.
    assert billed[("deleted-mid-tick", at(T))]["data"]["gpu_seconds"] == 180
    cpu_only = billed[("cpu-only", at(T))]["data"]
    assert (cpu_only["gpu_seconds"], cpu_only["seconds"], cpu_only["cpu_cores"]) == (0, 60, 2)

    metric_calls = harness.fake.calls(r"/api/v1/workloads/w1/metrics")
    assert [c.query["metricType"] for c in metric_calls] == [
        ["GPU_UTILIZATION", "GPU_MEMORY_USAGE_BYTES"],
        ["GPU_ALLOCATION", "CPU_USAGE_CORES"],
        ["CPU_MEMORY_USAGE_BYTES"],
    ]
    assert {
        (c.query["start"][0], c.query["end"][0], c.query["numberOfSamples"][0]) for c in metric_calls
    } == {(iso(T - 60), iso(T), "4")}
    assert not harness.fake.calls(r"/api/v1/workloads/(w3|w5)/metrics")  # could not have run in the tick
    lists = harness.fake.calls("/api/v1/workloads")
    assert {c.query.get("deleted", ["false"])[0] for c in lists} == {"false", "true"}
    assert next(c.query["filterBy"] for c in lists if "deleted" in c.query) == [f"deletedAt>={iso(T - 60)}"]
    assert harness.sink.get_state(CURSOR) == str(int(T)).encode()
    assert source.stats.counts["points"] == 4


async def test_ticks_follow_each_other_and_a_restart_bills_no_tick_twice(harness: Harness) -> None:
    harness.start()
    await harness.time.parked()
    await harness.time.advance()  # tick [T, T+60)
    assert harness.billed()[("finetune", at(T + 60))]["data"]["gpu_seconds"] == 120
    assert harness.billed()[("late", at(T + 60))]["data"]["gpu_seconds"] == 60
    assert ("deleted-mid-tick", at(T + 60)) not in harness.billed()
    await harness.stop()

    harness.time.now += 250  # down for a while: Run:ai keeps history, so the missed ticks are read
    source = harness.start()
    await harness.time.parked()
    ticks = sorted({k[1] for k in harness.billed() if k[0] == "finetune"})
    assert ticks == [at(T + i * 60) for i in range(6)]
    assert source.stats.counts["ticks_caught_up"] == 4


async def test_a_failing_tick_is_retried_whole_and_billed_once(harness: Harness) -> None:
    harness.fake.fail_next(r"/api/v1/workloads/w1/metrics", 500, count=5)  # max_attempts
    source = harness.start()
    assert await harness.time.parked() == 0.5  # the tick failed: back off, then read it again
    assert harness.billed() == {}
    assert harness.sink.get_state(CURSOR) is None
    assert harness.retry_waits == [0.5, 1.0, 2.0, 4.0]  # the client's own retries, between its 5 attempts
    await harness.time.advance()
    assert len(harness.billed()) == 4
    assert source.stats.counts["ticks_failed"] == 1


async def test_a_resource_gone_before_its_metrics_were_read_is_counted(harness: Harness) -> None:
    harness.fake.fail_next(r"/api/v1/workloads/w2/metrics", 404)
    source = harness.start()
    await harness.time.parked()
    assert ("late", at(T)) not in harness.billed()
    assert len(harness.billed()) == 3
    assert source.stats.counts["resources_gone"] == 1


async def test_an_expired_token_between_ticks_is_replaced(harness: Harness) -> None:
    harness.start()
    await harness.time.parked()
    harness.fake.expire_tokens()
    await harness.time.advance()
    assert sorted(k[0] for k in harness.billed() if k[1] == at(T + 60)) == [
        "cpu-only",
        "finetune",
        "future",
        "late",
    ]
    assert harness.fake.tokens_issued == 2


async def test_pods_are_billed_by_allocated_gpus_times_their_run(harness: Harness) -> None:
    w1, w2 = harness.fake.workloads[0], harness.fake.workloads[1]
    harness.fake.pods = [
        pod("p1", "finetune-0", w1, created=T - 100, started=T - 90, gpus=0.5),
        pod("p2", "late-0", w2, created=T - 40, started=T - 20, gpus=2, node="dgx-2"),
        pod("p3", "pending-0", w1, created=T - 10, started=None, phase="Pending"),
        pod("p4", "finished-0", w1, created=T - 300, started=T - 200, completed=T - 50, phase="Succeeded"),
    ]
    harness.fake.series["p1"] = series(GPU_UTILIZATION=70.0, CPU_USAGE_CORES=0.5)
    harness.start(resource_type="pod")
    await harness.time.parked()
    billed = harness.billed()
    assert sorted(billed) == [(name, at(T)) for name in ("finetune-0", "finished-0", "late-0")]
    assert billed[("finetune-0", at(T))]["data"] == {
        "gpu_seconds": 30,
        "seconds": 60,
        "gpu_allocation": 0.5,
        "gpu_utilization": 70,
        "cpu_cores": 0.5,
        "project": "llm-team",
        "department": "research",
        "workload": "finetune",
        "workload_id": "w1",
        "workload_type": "training",
        "pod": "finetune-0",
        "node": "dgx-1",
        "cluster": "dgx-cluster",
    }
    assert billed[("late-0", at(T))]["data"]["gpu_seconds"] == 40
    assert billed[("finished-0", at(T))]["data"]["gpu_seconds"] == 10
    for call in harness.fake.calls(r"/api/v1/workloads/.+/pods/.+/metrics"):
        assert "GPU_ALLOCATION" not in call.query["metricType"]  # not a pod metric: the fake would refuse it
    assert {c.query["verbosity"][0] for c in harness.fake.calls("/api/v1/workloads/pods")} == {"full"}


def test_the_secret_comes_from_config_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunaiSourceConfig(url="https://acme.run.ai", app_id="meter")
    monkeypatch.delenv("RUNAI_APP_SECRET", raising=False)
    with pytest.raises(ConfigError, match="RUNAI_APP_SECRET"):
        build(config)
    monkeypatch.setenv("RUNAI_APP_SECRET", "from-env")
    assert isinstance(build(config), RunaiSource)
    configured = RunaiSourceConfig.model_validate(
        {"url": "https://acme.run.ai", "app_id": "m", "app_secret": "sup3r-s3cret-value"}
    )
    assert "sup3r-s3cret-value" not in repr(configured)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"app_id": "m"}, "url and app_id are required"),
        ({"url": "ftp://x", "app_id": "m"}, "http"),
        ({"url": "https://x", "app_id": "m", "metrics": ["gpu utilization"]}, "not Run:ai metric types"),
        ({"url": "https://x", "app_id": "m", "interval": 60, "step": 0.01}, "between 1 and 1000"),
        # samples 25 s apart would each be held for at most 25 s of the 30 between them: unbilled
        ({"url": "https://x", "app_id": "m", "interval": 60, "step": 25}, "must divide interval"),
        ({"url": "https://x", "app_id": "m", "interval": "1.5s"}, "whole number"),
        ({"url": "https://x", "app_id": "m", "page_size": 1}, "greater than or equal to 2"),
        ({"url": "https://x", "app_id": "m", "resource_type": "node"}, "workload"),
    ],
)
def test_config_is_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunaiSourceConfig.model_validate(settings)
