"""The kubernetes source in the running service, against the fake Kubernetes API.

Pods on the service's node are billed once per 1 s tick; the service is SIGKILLed, stays down for a
few ticks and comes back: the missed ticks are billed from the pods the API still has, and no tick
is billed twice (one event id per pod and tick, whatever the exporter re-sent after the crash).
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ServiceFactory
from tests.support.fake_kubernetes import FakeKubernetes, container, make_pod
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import wait_until

pytestmark = pytest.mark.e2e

K8S_TOKEN = "e2e-service-account-token"


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(token=K8S_TOKEN) as server:
        server.add_node("node-1", {"nvidia.com/gpu.product": "NVIDIA-L4"})
        yield server


def config(kube: FakeKubernetes, **overrides: Any) -> dict[str, Any]:
    source = {
        "api_url": kube.url,
        "token": "${K8S_TOKEN}",
        "node_name": "node-1",
        "cluster_name": "e2e",
        "interval": "1s",
        "delay": "0s",
        "backoff": {"initial": "100ms", "max": "500ms"},
        **overrides,
    }
    return {"rules": {"packs": ["kubernetes"]}, "sources": {"kubernetes": source}}


def ticks_by_pod(openmeter: FakeOpenMeter) -> dict[tuple[str, str], set[str]]:
    """(pod, tick time) → the event ids received for it (copies of one id are fine, two ids are not)."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in openmeter.events:
        out[(event["data"]["pod"], event["time"])].add(event["id"])
    return out


def seconds_of(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def test_pods_are_billed_every_tick_once_across_a_sigkill(
    kube: FakeKubernetes, service_factory: ServiceFactory, openmeter: FakeOpenMeter, tmp_path: Any
) -> None:
    long_ago = time.time() - 3600
    gpu = container("train", {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"})
    kube.add_pod(
        make_pod("trainer", started=long_ago, containers=[gpu], annotations={"openmeter.io/subject": "acme"})
    )
    kube.add_pod(make_pod("web", namespace="shop", started=long_ago))
    kube.add_pod(make_pod("elsewhere", node="node-2", started=long_ago))
    env = {"K8S_TOKEN": K8S_TOKEN}
    workdir = tmp_path / "svc"

    first = service_factory(config(kube), env, workdir).start()
    wait_until(lambda: len(ticks_by_pod(openmeter)) >= 6, timeout=20, what="three ticks of two pods")
    first.kill()
    before = {t for _, t in ticks_by_pod(openmeter)}
    time.sleep(2.5)  # down for a couple of ticks: the point of the test is the time that passes

    second = service_factory(config(kube), env, workdir).start()
    wait_until(
        lambda: max(seconds_of(t) for _, t in ticks_by_pod(openmeter)) >= max(map(seconds_of, before)) + 5,
        timeout=20,
        what="ticks after the restart",
    )
    second.stop()

    billed = ticks_by_pod(openmeter)
    assert {pod for pod, _ in billed} == {"trainer", "web"}
    assert all(len(ids) == 1 for ids in billed.values()), "a tick was billed twice"
    for pod in ("trainer", "web"):
        ticks = sorted(seconds_of(t) for p, t in billed if p == pod)
        assert ticks == list(range(ticks[0], ticks[-1] + 1)), f"{pod}: missed ticks were not caught up"
    trainer = next(e for e in openmeter.events if e["data"]["pod"] == "trainer")
    assert (trainer["type"], trainer["subject"]) == ("kube-pod", "acme")
    assert {
        k: trainer["data"][k] for k in ("seconds", "core_seconds", "byte_seconds", "gpu_seconds", "gpu_type")
    } == {
        "seconds": 1,
        "core_seconds": 2,
        "byte_seconds": 4 * 2**30,
        "gpu_seconds": 1,
        "gpu_type": "NVIDIA-L4",
    }
    web = next(e for e in openmeter.events if e["data"]["pod"] == "web")
    assert (web["subject"], web["data"]["cluster"]) == ("shop", "e2e")
    assert all(r.authorization == f"Bearer {K8S_TOKEN}" for r in kube.requests)
    assert {r.query.get("fieldSelector", [""])[0] for r in kube.requests if r.path == "/api/v1/pods"} == {
        "spec.nodeName=node-1"
    }
