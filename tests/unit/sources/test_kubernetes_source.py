"""The kubernetes source end to end in-process: fake API server → source → real pipeline and LMDB queue.

Time is a :class:`FakeTime`: the source's clock, and every wait of its tick loop parks until the test
advances it, so ticks are deterministic. Events are asserted exactly as the shipped pack makes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otlp_meter.errors import ConfigError
from otlp_meter.sources.base import cursor_key
from otlp_meter.sources.kubernetes import REQUIRED_RBAC, KubernetesSource, KubernetesSourceConfig, build
from tests.support.fake_kubernetes import FakeKubernetes, FakeTime, container, make_pod, rfc3339
from tests.support.source_sink import PipelineSink

T = 1_700_000_040.0  # a tick boundary (a multiple of 60)
CURSOR = cursor_key("kubernetes", "kubernetes", "tick")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(token="t0ken") as server:
        server.add_node(
            "node-1", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "kubernetes.io/os": "linux"}
        )
        yield server


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[PipelineSink]:
    s = PipelineSink(tmp_path / "queue", packs=("kubernetes",))
    yield s
    s.close()


class Harness:
    def __init__(self, fake: FakeKubernetes, sink: PipelineSink, time: FakeTime) -> None:
        self.fake, self.sink, self.time = fake, sink, time
        self.runs: list[tuple[KubernetesSource, asyncio.Event, asyncio.Task[None]]] = []

    def start(self, **overrides: Any) -> KubernetesSource:
        settings: dict[str, Any] = {
            "api_url": self.fake.url,
            "token": "t0ken",
            "cluster_name": "prod",
            "backoff": {"initial": 0.05, "max": 0.4},
        }
        settings.update(overrides)
        config = KubernetesSourceConfig.model_validate(settings)
        source = KubernetesSource(config, "node-1", clock=self.time, wait=self.time.wait)
        source.ready_timeout = 5.0
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(self.sink, stop))
        self.runs.append((source, stop, task))
        return source

    async def stop(self) -> None:
        for _, stop, task in self.runs:
            stop.set()
            await asyncio.wait_for(task, 10)
        self.runs.clear()

    def events(self) -> list[dict[str, Any]]:
        return self.sink.events_queued()

    def by_pod(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Events by (pod, event time); a duplicate would be a billing bug."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for event in self.events():
            key = (event["data"]["pod"], event["time"])
            assert key not in out, f"billed twice: {key}"
            out[key] = event
        return out


@pytest.fixture
async def harness(fake: FakeKubernetes, sink: PipelineSink) -> AsyncIterator[Harness]:
    h = Harness(fake, sink, FakeTime(T + 30))
    yield h
    await h.stop()


async def until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def iso(seconds: float) -> str:
    return rfc3339(seconds)


async def test_each_running_pod_is_billed_per_tick_with_exact_quantities(harness: Harness) -> None:
    fake = harness.fake
    fake.add_pod(
        make_pod(
            "trainer",
            namespace="ml",
            started=T - 90,
            containers=[
                container(
                    "gpu", {"cpu": "3500m", "memory": "30Gi", "nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"}
                ),
                container("log", {"cpu": "100m", "memory": "128Mi"}, {"cpu": "200m", "memory": "128Mi"}),
            ],
            init_containers=[container("fetch", {"cpu": "8", "memory": "1Gi"})],
            labels={"team": "research"},
            annotations={
                "openmeter.io/subject": "acme",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
            owner=("StatefulSet", "trainer"),
        )
    )
    fake.add_pod(
        make_pod(
            "late-starter",
            started=T - 30,
            owner=("ReplicaSet", "web-5d9c8"),
            labels={"pod-template-hash": "5d9c8"},
        )
    )
    fake.add_pod(make_pod("finished", started=T - 100, finished=T - 45, phase="Succeeded"))
    fake.add_pod(make_pod("waiting", phase="Pending"))
    fake.add_pod(make_pod("other-node", node="node-2", started=T - 90))
    fake.add_pod(make_pod("future", started=T + 10))

    harness.start()
    assert await harness.time.parked() == 32  # tick [T-60, T) done; next one ends at T+60, runs at T+62
    events = harness.by_pod()
    assert sorted(events) == [("finished", iso(T)), ("late-starter", iso(T)), ("trainer", iso(T))]

    trainer = events[("trainer", iso(T))]
    assert (trainer["type"], trainer["subject"], trainer["source"]) == ("kube-pod", "acme", "otlp-meter")
    # Effective requests: CPU max(init 8, apps 3.6) = 8 cores; memory max(1Gi, 30Gi+128Mi).
    assert trainer["data"] == {
        "seconds": 60,
        "core_seconds": 480,
        "byte_seconds": 60 * (30 * 2**30 + 128 * 2**20),
        "gpu_seconds": 120,
        "cpu_request_cores": 8,
        "memory_request_bytes": 30 * 2**30 + 128 * 2**20,
        "gpu_request": 2,
        "gpu_limit": 2,
        "gpu_resource": "nvidia.com/gpu",
        "gpu_type": "NVIDIA-H100-80GB-HBM3",
        "phase": "Running",
        "namespace": "ml",
        "pod": "trainer",
        "pod_uid": trainer["data"]["pod_uid"],
        "node": "node-1",
        "cluster": "prod",
        "workload": "trainer",
    }
    late = events[("late-starter", iso(T))]["data"]
    assert (late["seconds"], late["core_seconds"], late["byte_seconds"], late["gpu_seconds"]) == (
        30,
        15,
        30 * 2**30,
        0,
    )
    assert (
        late["workload"] == "web"
    )  # the Deployment behind ReplicaSet web-5d9c8 (pod-template-hash absent: RS name)
    assert events[("finished", iso(T))]["data"]["seconds"] == 15
    assert harness.sink.get_state(CURSOR) == str(int(T)).encode()

    assert await harness.time.advance() == 60  # tick [T, T+60)
    events = harness.by_pod()
    assert {k[0] for k in events if k[1] == iso(T + 60)} == {"trainer", "late-starter", "future"}
    assert events[("future", iso(T + 60))]["data"]["seconds"] == 50
    assert harness.sink.get_state(CURSOR) == str(int(T + 60)).encode()
    [(source, _, _)] = harness.runs
    assert source.stats.counts["ticks_completed"] == 2
    assert source.stats.counts["points"] == 6  # pod x tick records committed


async def test_a_pod_deleted_mid_tick_is_billed_until_it_went(harness: Harness) -> None:
    harness.fake.add_pod(make_pod("short", started=T - 10))
    harness.fake.add_pod(make_pod("graceful", started=T - 10))
    source = harness.start()
    await harness.time.parked()
    harness.time.now = T + 40
    harness.fake.delete_pod("default", "short")  # observed at T+40, no container finish times
    harness.fake.delete_pod(
        "default",
        "graceful",
        final=lambda p: p["status"].update(
            phase="Succeeded",
            containerStatuses=[
                {
                    "name": "app",
                    "state": {"terminated": {"startedAt": iso(T - 10), "finishedAt": iso(T + 25)}},
                }
            ],
        ),
    )
    await until(lambda: sum(e.gone_at is not None for e in source.cache) == 2, "both deletions seen")
    await harness.time.advance()
    events = harness.by_pod()
    assert events[("short", iso(T + 60))]["data"]["seconds"] == 40
    assert events[("graceful", iso(T + 60))]["data"]["seconds"] == 25
    await harness.time.advance()
    assert not [k for k in harness.by_pod() if k[1] == iso(T + 120)]  # gone: not billed again
    assert len(source.cache) == 0  # and forgotten once every tick of their life was committed


async def test_a_restart_resumes_after_the_committed_tick_and_catches_up_from_the_cache(
    harness: Harness,
) -> None:
    harness.fake.add_pod(make_pod("steady", started=T - 600))
    harness.start()
    await harness.time.parked()
    await harness.stop()  # the committed cursor is T

    harness.fake.add_pod(make_pod("while-down", started=T + 130))
    harness.fake.add_pod(make_pod("lived-and-died-while-down", started=T + 70))
    harness.fake.delete_pod("default", "lived-and-died-while-down")  # the documented limitation
    harness.time.now = T + 250  # down for three ticks: T+60, T+120, T+180 are due (T+240 too)
    source = harness.start()
    await harness.time.parked()
    ticks = sorted({k[1] for k in harness.by_pod()})
    assert ticks == [iso(T + i * 60) for i in range(5)]  # each tick exactly once across the restart
    steady = [k for k in harness.by_pod() if k[0] == "steady"]
    assert len(steady) == 5
    assert harness.by_pod()[("while-down", iso(T + 180))]["data"]["seconds"] == 50
    assert not [k for k in harness.by_pod() if k[0] == "lived-and-died-while-down"]
    assert source.stats.counts["ticks_caught_up"] == 4


async def test_downtime_beyond_max_catch_up_is_skipped_and_counted(harness: Harness) -> None:
    harness.fake.add_pod(make_pod("steady", started=T - 600))
    harness.start(max_catch_up=2)
    await harness.time.parked()
    await harness.stop()
    harness.time.now = T + 600 + 30
    source = harness.start(max_catch_up=2)
    await harness.time.parked()
    assert sorted({k[1] for k in harness.by_pod()}) == [iso(T), iso(T + 540), iso(T + 600)]
    assert source.stats.counts["ticks_skipped"] == 8


async def test_a_full_queue_keeps_the_cursor_and_retries_the_same_tick(harness: Harness) -> None:
    harness.fake.add_pod(make_pod("p", started=T - 600))
    harness.sink.refuse = 2
    source = harness.start()
    assert await harness.time.parked() == 0.05  # backoff after the first refusal
    assert harness.sink.get_state(CURSOR) is None
    assert await harness.time.advance() == 0.1
    await harness.time.advance()
    assert list(harness.by_pod()) == [("p", iso(T))]
    assert source.stats.counts["commits_retried"] == 2
    assert harness.sink.get_state(CURSOR) == str(int(T)).encode()


async def test_ticks_wait_for_the_pod_cache(harness: Harness) -> None:
    harness.fake.add_pod(make_pod("p", started=T - 600))
    harness.fake.down(503)
    source = harness.start()
    source.ready_timeout = 0.2
    assert await harness.time.parked() == 1  # not ready: wait a second, try again
    assert source.stats.counts["ticks_waiting"] >= 1
    assert harness.events() == []
    harness.fake.down(None)
    await until(lambda: source.cache.healthy(), "the cache lists once the API answers")
    while harness.sink.get_state(CURSOR) is None:
        await harness.time.advance()
    assert list(harness.by_pod()) == [("p", iso(T))]


async def test_filters_and_pending_are_configurable(harness: Harness) -> None:
    harness.fake.add_pod(make_pod("kept", namespace="prod", labels={"billing": "yes"}, started=T - 600))
    harness.fake.add_pod(make_pod("unlabelled", namespace="prod", started=T - 600))
    harness.fake.add_pod(
        make_pod("system", namespace="kube-system", labels={"billing": "yes"}, started=T - 600)
    )
    pending = make_pod("pulling", namespace="prod", labels={"billing": "yes"}, phase="Pending")
    pending["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": iso(T - 20)}
    ]
    harness.fake.add_pod(pending)
    harness.start(exclude_namespaces=["kube-system"], label_selector="billing=yes", include_pending=True)
    await harness.time.parked()
    assert {k[0]: v["data"]["seconds"] for k, v in harness.by_pod().items()} == {"kept": 60, "pulling": 20}
    [watch] = [r for r in harness.fake.requests if "watch" in r.query]
    assert watch.query["fieldSelector"] == ["spec.nodeName=node-1,metadata.namespace!=kube-system"]
    assert watch.query["labelSelector"] == ["billing=yes"]


def test_the_node_comes_from_config_or_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(ConfigError, match="NODE_NAME"):
        build(KubernetesSourceConfig())
    monkeypatch.setenv("NODE_NAME", "node-7")
    source = build(KubernetesSourceConfig())
    assert isinstance(source, KubernetesSource)
    assert source.field_selector() == "spec.nodeName=node-7"
    assert build(KubernetesSourceConfig(node_name="node-9")).node_name == "node-9"  # type: ignore[attr-defined]
    assert KubernetesSource(KubernetesSourceConfig(cluster_wide=True), None).field_selector() is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"interval": "90.5s"}, "whole number of seconds"),
        ({"interval": 0}, "whole number of seconds"),
        ({"namespaces": ["a"], "exclude_namespaces": ["b"]}, "not both"),
        ({"intervall": 60}, "Extra inputs"),
    ],
)
def test_config_is_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KubernetesSourceConfig.model_validate(settings)


def test_the_chart_grants_exactly_what_the_source_uses() -> None:
    documents = list(yaml.safe_load_all((REPO / "deploy/kubernetes/rbac.yaml").read_text()))
    [role] = [d for d in documents if d and d["kind"] == "ClusterRole"]
    granted = {
        (g, r): frozenset(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert granted == REQUIRED_RBAC


def rejected(name: str, start: float) -> dict[str, Any]:
    """A pod the kubelet refused at admission: Failed, with a start time, no container statuses."""
    pod = make_pod(name, phase="Failed", created=start - 1)
    pod["status"].update(startTime=iso(start), reason="OutOfcpu", message="Pod was rejected: no cpu")
    return pod


async def test_a_pod_rejected_at_admission_is_billed_neither_at_start_nor_after_a_restart(
    harness: Harness,
) -> None:
    harness.fake.add_pod(rejected("rejected", T - 86_400))
    harness.fake.add_pod(make_pod("steady", started=T - 600))
    harness.start()
    await harness.time.parked()
    await harness.stop()  # the committed cursor is T
    harness.time.now = T + 3600 + 30  # down for an hour: every tick up to T+3600 is caught up
    source = harness.start()
    await harness.time.parked()
    assert source.stats.counts["ticks_caught_up"] == 60
    assert len([k for k in harness.by_pod() if k[0] == "steady"]) == 61
    assert not [k for k in harness.by_pod() if k[0] == "rejected"]


async def test_container_restarts_while_down_do_not_shorten_the_caught_up_ticks(harness: Harness) -> None:
    harness.fake.add_pod(make_pod("crashy", started=T - 600))
    harness.start()
    await harness.time.parked()
    await harness.stop()  # the committed cursor is T

    def restarted_twice(pod: dict[str, Any]) -> None:  # at T+100 and at T+200, while we were down
        [status] = pod["status"]["containerStatuses"]
        status["restartCount"] = 2
        status["state"] = {"running": {"startedAt": iso(T + 200)}}
        status["lastState"] = {
            "terminated": {"startedAt": iso(T + 100), "finishedAt": iso(T + 200), "exitCode": 137}
        }

    harness.fake.update_pod("default", "crashy", restarted_twice)
    harness.time.now = T + 250
    harness.start()
    await harness.time.parked()
    billed = {k[1]: v["data"]["seconds"] for k, v in harness.by_pod().items() if k[0] == "crashy"}
    assert billed == {iso(T + i * 60): 60 for i in range(5)}
