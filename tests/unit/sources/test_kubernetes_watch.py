"""The pod cache against a fake API server: list, watch, bookmarks, 410 Gone, relist, selectors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.sources.base import BackoffConfig, SourceStats
from otlp_meter.sources.k8s_client import KubeApiError, KubeClient
from otlp_meter.sources.k8s_watch import PodCache, PodWatcher
from tests.support.fake_kubernetes import FakeKubernetes, make_pod

T0 = 1_700_000_040.0
TOKEN = "s3cr3t-token"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(token=TOKEN) as server:
        yield server


@pytest.fixture
async def client(fake: FakeKubernetes, tmp_path: Path) -> AsyncIterator[KubeClient]:
    kube = await KubeClient.connect(kubeconfig=fake.kubeconfig(str(tmp_path / "kubeconfig")))
    yield kube
    await kube.close()


class Running:
    """A watcher running in the background for one test."""

    def __init__(self, watcher: PodWatcher) -> None:
        self.watcher = watcher
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(watcher.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def start(client: KubeClient) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def starter(**kwargs: Any) -> Running:
        settings: dict[str, Any] = {
            "api": client,
            "cache": PodCache(),
            "namespace": None,
            "field_selector": "spec.nodeName=node-1",
            "label_selector": None,
            "clock": Clock(),
            "stats": SourceStats("kubernetes", "test"),
            "backoff": BackoffConfig(initial=0.05, max=0.2),
        }
        settings.update(kwargs)
        running.append(Running(PodWatcher(**settings)))
        return running[-1]

    yield starter
    for r in running:
        await r.close()


def names(cache: PodCache) -> set[str]:
    return {e.pod["metadata"]["name"] for e in cache if e.gone_at is None}


async def test_lists_then_watches_the_pods_of_its_node(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    fake.add_pod(make_pod("a", started=T0))
    fake.add_pod(make_pod("b", started=T0))
    fake.add_pod(make_pod("elsewhere", node="node-2", started=T0))
    clock = Clock()
    r = start(clock=clock)
    cache = r.watcher.cache
    await until(lambda: cache.healthy() and fake.watches_open == 1, "list and watch")
    assert names(cache) == {"a", "b"}

    [listing] = [q for q in fake.requests if "watch" not in q.query]
    assert listing.path == "/api/v1/pods"
    assert listing.authorization == f"Bearer {TOKEN}"
    assert listing.query["fieldSelector"] == ["spec.nodeName=node-1"]
    assert listing.query["limit"] == ["500"]
    [watch] = [q for q in fake.requests if "watch" in q.query]
    assert watch.query["resourceVersion"] == ["103"]  # the list's version: the fake's 100 + three pods
    assert watch.query["allowWatchBookmarks"] in (["true"], ["True"])

    fake.add_pod(make_pod("c", started=T0 + 5))
    fake.add_pod(make_pod("other-node", node="node-2", started=T0 + 5))
    await until(lambda: names(cache) == {"a", "b", "c"}, "ADDED")
    fake.update_pod("default", "c", lambda p: p["metadata"]["labels"].update(team="search"))
    await until(lambda: any(e.pod["metadata"]["labels"].get("team") for e in cache), "MODIFIED")
    clock.now = T0 + 42
    fake.delete_pod("default", "a")
    await until(lambda: names(cache) == {"b", "c"}, "DELETED")
    [gone] = [e for e in cache if e.gone_at is not None]
    assert (gone.pod["metadata"]["name"], gone.gone_at) == ("a", Fraction(T0 + 42))
    assert r.watcher.stats.counts["pod_watch_events"] == 3


async def test_lists_are_paged_with_continue_tokens(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    for i in range(5):
        fake.add_pod(make_pod(f"p{i}", started=T0))
    r = start(page_size=2)
    await until(lambda: r.watcher.cache.healthy(), "listed")
    assert names(r.watcher.cache) == {f"p{i}" for i in range(5)}
    lists = [q for q in fake.requests if "watch" not in q.query]
    assert [q.query.get("continue") is not None for q in lists] == [False, True, True]
    assert all(q.query["limit"] == ["2"] for q in lists)


async def test_bookmarks_move_the_resource_version_the_next_watch_starts_from(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    fake.add_pod(make_pod("a", started=T0))
    r = start(watch_timeout=1)
    await until(lambda: fake.watches_open == 1, "watching")
    fake.add_pod(make_pod("unrelated", node="node-2", started=T0))  # moves the version, not our pods
    fake.bookmark()
    await until(lambda: r.watcher.stats.counts.get("pod_watch_bookmarks") == 1, "bookmark")
    await until(lambda: fake.count(watch=True) == 2, "the server ends the watch after 1s; watching again")
    first, second = [q for q in fake.requests if "watch" in q.query]
    assert (first.query["resourceVersion"], second.query["resourceVersion"]) == (["101"], ["102"])
    assert first.query["timeoutSeconds"] == ["1"]
    assert fake.count(watch=False) == 1  # no relist: the watch ended cleanly and its version is good
    assert r.watcher.cache.healthy()


@pytest.mark.parametrize("as_status", [False, True])
async def test_410_gone_lists_again(
    fake: FakeKubernetes, start: Callable[..., Running], as_status: bool
) -> None:
    fake.gone_as_status = as_status
    fake.add_pod(make_pod("a", started=T0))
    r = start(watch_timeout=1)
    await until(lambda: fake.watches_open == 1, "watching")
    fake.add_pod(make_pod("unrelated", node="node-2", started=T0))  # a change our watch does not see
    fake.compact()  # the server forgets every version up to now; the next watch from ours is too old
    await until(lambda: fake.count(watch=False) == 2 and r.watcher.cache.healthy(), "listed again")
    assert r.watcher.stats.counts["pod_relists"] == 1
    assert names(r.watcher.cache) == {"a"}


async def test_pods_deleted_while_the_api_was_unreachable_end_when_the_watch_was_lost(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    fake.add_pod(make_pod("stays", started=T0))
    fake.add_pod(make_pod("goes", started=T0))
    clock = Clock()
    r = start(clock=clock)
    cache = r.watcher.cache
    await until(lambda: cache.healthy() and fake.watches_open == 1, "watching")

    fake.down(503)
    clock.now = T0 + 30
    fake.drop_watches()  # the connection breaks at T0+30 ...
    await until(lambda: fake.count(watch=False) >= 2, "a refused list")
    assert not cache.healthy()
    fake.delete_pod("default", "goes")  # ... the pod goes while we cannot watch ...
    clock.now = T0 + 90
    fake.down(None)
    await until(lambda: cache.healthy(), "listed again")

    assert names(cache) == {"stays"}
    [gone] = [e for e in cache if e.gone_at is not None]
    assert gone.gone_at == Fraction(T0 + 30)  # the last time we knew it existed, not the relist time
    assert r.watcher.stats.counts["pod_watch_errors"] >= 2


async def test_each_namespace_has_its_own_list_and_watch(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    fake.add_pod(make_pod("a1", namespace="team-a", started=T0))
    fake.add_pod(make_pod("b1", namespace="team-b", started=T0))
    cache = PodCache()
    first = start(cache=cache, namespace="team-a")
    second = start(cache=cache, namespace="team-b")
    await until(lambda: cache.healthy() and fake.watches_open == 2, "both watching")
    assert names(cache) == {"a1", "b1"}
    assert {q.path for q in fake.requests} == {
        "/api/v1/namespaces/team-a/pods",
        "/api/v1/namespaces/team-b/pods",
    }
    await first.close()
    assert not cache.healthy()
    assert second.watcher.cache is cache


async def test_a_pod_that_stops_matching_the_label_selector_leaves_the_cache(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    fake.add_pod(make_pod("metered", labels={"billing": "on"}, started=T0))
    fake.add_pod(make_pod("ignored", labels={"billing": "off"}, started=T0))
    r = start(label_selector="billing in (on)")
    await until(lambda: r.watcher.cache.healthy() and fake.watches_open == 1, "watching")
    assert names(r.watcher.cache) == {"metered"}
    fake.update_pod("default", "metered", lambda p: p["metadata"]["labels"].update(billing="off"))
    await until(lambda: names(r.watcher.cache) == set(), "DELETED by selector")


async def test_server_errors_back_off_and_keep_the_cache_unhealthy(
    fake: FakeKubernetes, start: Callable[..., Running]
) -> None:
    fake.fail_next("/api/v1/pods", 500, count=2)
    r = start()
    await until(lambda: r.watcher.cache.healthy(), "listed after two failures")
    assert r.watcher.stats.counts["pod_watch_errors"] == 2
    assert fake.count(watch=False) == 3


async def test_the_fake_refuses_what_the_api_server_refuses(client: KubeClient) -> None:
    with pytest.raises(KubeApiError, match=r"field label not supported: spec\.gpu"):
        await client.list_pods(None, field_selector="spec.gpu=1", label_selector=None, limit=10)
    with pytest.raises(KubeApiError) as info:
        await client.get_node("missing")
    assert info.value.status == 404


async def test_wrong_credentials_are_refused(fake: FakeKubernetes) -> None:
    kube = await KubeClient.connect(api_url=fake.url, token="wrong")
    try:
        with pytest.raises(KubeApiError) as info:
            await kube.list_pods(None, field_selector=None, label_selector=None, limit=1)
        assert info.value.status == 401
    finally:
        await kube.close()
