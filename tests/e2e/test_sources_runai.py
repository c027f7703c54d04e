"""The runai source in the running service, against the fake Run:ai control plane.

Two workloads hold GPUs; every 1 s tick bills their GPU-seconds from Run:ai's allocation metric. The
service is SIGKILLed and restarted: Run:ai keeps metric history, so the missed ticks are read back,
and no tick is billed twice.
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ServiceFactory
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.fake_runai import FakeRunai, workload
from tests.support.service import wait_until

pytestmark = pytest.mark.e2e


def samples(gpus: float) -> Any:
    def sample(metric_type: str, at: float) -> float:
        return gpus if metric_type == "GPU_ALLOCATION" else 40.0

    return sample


@pytest.fixture
def runai() -> Iterator[FakeRunai]:
    server = FakeRunai()
    long_ago = time.time() - 3600
    server.workloads = [
        workload("w-a", "train-a", created=long_ago, gpus=2),
        workload("w-b", "serve-b", created=long_ago, project="inference", workload_type="inference", gpus=1),
    ]
    server.clusters = [{"uuid": "c1", "name": "dgx"}]
    server.series = {"w-a": samples(gpus=2), "w-b": samples(gpus=0.5)}
    with server:
        yield server


def config(runai: FakeRunai) -> dict[str, Any]:
    source = {
        "url": runai.url,
        "app_id": runai.app_id,
        "app_secret": "${RUNAI_SECRET}",
        "interval": "1s",
        "delay": "0s",
        "step": "250ms",
        "metrics": ["GPU_ALLOCATION", "GPU_UTILIZATION"],
        "backoff": {"initial": "100ms", "max": "500ms"},
    }
    return {"rules": {"packs": ["runai"]}, "sources": {"runai": [source]}}


def ticks(openmeter: FakeOpenMeter) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in openmeter.events:
        out[(event["data"]["workload"], event["time"])].add(event["id"])
    return out


def seconds_of(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def test_workloads_are_billed_every_tick_once_across_a_sigkill(
    runai: FakeRunai, service_factory: ServiceFactory, openmeter: FakeOpenMeter, tmp_path: Any
) -> None:
    env = {"RUNAI_SECRET": runai.app_secret}
    workdir = tmp_path / "svc"
    first = service_factory(config(runai), env, workdir).start()
    wait_until(lambda: len(ticks(openmeter)) >= 6, timeout=20, what="three ticks of two workloads")
    first.kill()
    before = max(seconds_of(t) for _, t in ticks(openmeter))
    time.sleep(2.5)  # down for a couple of ticks: the point of the test is the time that passes

    second = service_factory(config(runai), env, workdir).start()
    wait_until(
        lambda: max(seconds_of(t) for _, t in ticks(openmeter)) >= before + 5,
        timeout=20,
        what="ticks after restart",
    )
    second.stop()

    billed = ticks(openmeter)
    assert all(len(ids) == 1 for ids in billed.values()), "a tick was billed twice"
    for name in ("train-a", "serve-b"):
        seen = sorted(seconds_of(t) for w, t in billed if w == name)
        assert seen == list(range(seen[0], seen[-1] + 1)), f"{name}: missed ticks were not read back"
    train = next(e for e in openmeter.events if e["data"]["workload"] == "train-a")
    assert (train["type"], train["subject"]) == ("runai-gpu", "llm-team")
    assert {
        k: train["data"][k]
        for k in ("gpu_seconds", "seconds", "gpu_allocation", "gpu_utilization", "cluster")
    } == {
        "gpu_seconds": 2,
        "seconds": 1,
        "gpu_allocation": 2,
        "gpu_utilization": 40,
        "cluster": "dgx",
    }
    serve = next(e for e in openmeter.events if e["data"]["workload"] == "serve-b")
    assert (serve["subject"], serve["data"]["gpu_seconds"]) == ("inference", 0.5)
    assert runai.tokens_issued >= 2  # one per process: the token is not persisted
