"""A watch-based cache of pods: list, then watch from the list's resourceVersion, relist on 410 Gone.

One :class:`PodWatcher` per scope (all namespaces, or one namespace) keeps its part of the shared
:class:`PodCache` current. The cache remembers what billing needs beyond the pod object itself: the
earliest container start seen (a restart replaces a container's start time) and when a pod went
away — a pod deleted while the source runs stays in the cache until every tick of its lifetime has
been billed (:meth:`PodCache.prune`). Nothing else depends on when the collector saw a pod: a list
after downtime must bill the same windows the watch would have.

The tick code asks :meth:`PodCache.healthy`: a tick is computed only from a cache that is listed and
watching, so a pod deleted while the API server was unreachable is never billed as running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from otlp_meter.sources.base import BackoffConfig, Clock, SourceStats, Wait, wait_or_stop
from otlp_meter.sources.k8s_client import Obj, ResourceGoneError
from otlp_meter.sources.k8s_pods import first_container_start
from otlp_meter.telemetry.logging import get_logger

log = get_logger("sources.kubernetes")


class PodApi(Protocol):
    """What a watcher needs from the API (:class:`~otlp_meter.sources.k8s_client.KubeClient`)."""

    async def list_pods(
        self,
        namespace: str | None,
        *,
        field_selector: str | None,
        label_selector: str | None,
        limit: int,
        continue_token: str | None = None,
    ) -> Obj: ...

    def watch_pods(
        self,
        namespace: str | None,
        *,
        field_selector: str | None,
        label_selector: str | None,
        resource_version: str,
        timeout_seconds: int,
    ) -> Any: ...


@dataclass(slots=True)
class PodEntry:
    """A pod as last seen, with the times the pod object alone cannot tell (Unix seconds)."""

    pod: Obj
    scope: str
    earliest_start: Fraction | None = None
    gone_at: Fraction | None = None

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])


class PodCache:
    """Pods by uid, shared by the watchers of one source."""

    def __init__(self) -> None:
        self._entries: dict[str, PodEntry] = {}
        self._healthy: dict[str, bool] = {}
        self._healthy_event = asyncio.Event()

    def __iter__(self) -> Iterator[PodEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, scope: str) -> None:
        """A watcher for ``scope`` exists; the cache is unhealthy until it has listed."""
        self._healthy[scope] = False

    def set_healthy(self, scope: str, healthy: bool) -> None:
        self._healthy[scope] = healthy
        if self.healthy():
            self._healthy_event.set()
        else:
            self._healthy_event.clear()

    async def wait_healthy(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for :meth:`healthy`; returns whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._healthy_event.wait(), seconds)
        return self.healthy()

    def healthy(self) -> bool:
        """Every scope is listed and its watch is connected."""
        return bool(self._healthy) and all(self._healthy.values())

    def scope_healthy(self, scope: str) -> bool:
        return self._healthy.get(scope, False)

    def upsert(self, pod: Obj, scope: str) -> None:
        """A pod as listed or watched (ADDED/MODIFIED)."""
        uid = str(pod["metadata"]["uid"])
        entry = self._entries.get(uid)
        if entry is None:
            entry = self._entries[uid] = PodEntry(pod, scope)
        entry.pod, entry.gone_at = pod, None
        start = first_container_start(pod)
        if start is not None and (entry.earliest_start is None or start < entry.earliest_start):
            entry.earliest_start = start

    def delete(self, pod: Obj, scope: str, now: Fraction) -> None:
        """A DELETED event: keep the final object, and when it went."""
        self.upsert(pod, scope)
        self._entries[str(pod["metadata"]["uid"])].gone_at = now

    def replace(self, scope: str, pods: list[Obj], lost_since: Fraction) -> int:
        """After a (re)list: these are the pods of ``scope``. Pods of the scope missing from the list were
        deleted while we were not watching; they count as gone at ``lost_since`` (the last time we
        knew they existed). Returns how many went."""
        listed = set()
        for pod in pods:
            self.upsert(pod, scope)
            listed.add(str(pod["metadata"]["uid"]))
        gone = 0
        for entry in self._entries.values():
            if entry.scope == scope and entry.uid not in listed and entry.gone_at is None:
                entry.gone_at = lost_since
                gone += 1
        return gone

    def prune(self, before: Fraction) -> None:
        """Forget pods that went before ``before`` (every tick they ran in is billed)."""
        for uid in [u for u, e in self._entries.items() if e.gone_at is not None and e.gone_at < before]:
            del self._entries[uid]


@dataclass
class PodWatcher:
    """Keeps one scope of the cache current: list (paged), then watch; relist on 410."""

    api: PodApi
    cache: PodCache
    namespace: str | None
    field_selector: str | None
    label_selector: str | None
    clock: Clock
    stats: SourceStats
    page_size: int = 500
    watch_timeout: int = 300
    backoff: BackoffConfig = field(default_factory=lambda: BackoffConfig(initial=1.0, max=30.0))
    wait: Wait = wait_or_stop
    resource_version: str | None = None

    @property
    def scope(self) -> str:
        return self.namespace or "*"

    def _now(self) -> Fraction:
        return Fraction(self.clock())

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: list and watch; on errors mark the scope unhealthy and retry with backoff."""
        self.cache.register(self.scope)
        self.resource_version = None
        lost_since = self._now()
        delays = self.backoff.delays()
        while not stop.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = await self._list(lost_since)
                await self._watch(self.resource_version, stop)
                delays = self.backoff.delays()
            except ResourceGoneError as gone:
                # The resourceVersion is older than the API server keeps (the watch was live until
                # now, or just ended cleanly): list again, then watch.
                log.info("pod_watch_expired", scope=self.scope, error=str(gone))
                self.stats.add("pod_relists")
                lost_since = self._now()
                self.cache.set_healthy(self.scope, False)
                self.resource_version = None
            except Exception as error:  # any API or network failure: back off, list again
                # Changes may have been missed while the connection was down: only a fresh list makes
                # the cache trustworthy again (a resumed watch could answer 410 only after a tick
                # had used the stale cache).
                if self.cache.scope_healthy(self.scope):
                    lost_since = self._now()
                self.cache.set_healthy(self.scope, False)
                self.resource_version = None
                self.stats.add("pod_watch_errors")
                delay = next(delays)
                log.warning(
                    "pod_watch_failed",
                    scope=self.scope,
                    error=f"{type(error).__name__}: {error}",
                    retry_in=round(delay, 3),
                )
                if await self.wait(stop, delay):
                    break
        self.cache.set_healthy(self.scope, False)

    async def _list(self, lost_since: Fraction) -> str:
        pods: list[Obj] = []
        continue_token: str | None = None
        while True:
            page = await self.api.list_pods(
                self.namespace,
                field_selector=self.field_selector,
                label_selector=self.label_selector,
                limit=self.page_size,
                continue_token=continue_token,
            )
            pods.extend(page.get("items") or ())
            metadata = page.get("metadata") or {}
            continue_token = metadata.get("continue") or None
            if continue_token is None:
                break
        gone = self.cache.replace(self.scope, pods, lost_since)
        self.stats.add("pod_lists")
        self.stats.set("pods_cached", len(self.cache))
        self.cache.set_healthy(self.scope, True)
        log.info("pod_list_done", scope=self.scope, pods=len(pods), gone_while_not_watching=gone)
        return str(metadata.get("resourceVersion") or "")

    async def _watch(self, resource_version: str, stop: asyncio.Event) -> None:
        """Apply watch events until the server ends the watch or ``stop``; every event (and bookmark)
        moves ``self.resource_version``, so a broken watch resumes where it got to."""
        stream = self.api.watch_pods(
            self.namespace,
            field_selector=self.field_selector,
            label_selector=self.label_selector,
            resource_version=resource_version,
            timeout_seconds=self.watch_timeout,
        )
        stopping = asyncio.ensure_future(stop.wait())
        try:
            iterator = stream.__aiter__()
            while True:
                next_event = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({next_event, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if next_event not in done:
                    next_event.cancel()
                    await asyncio.gather(next_event, return_exceptions=True)
                    return
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    return
                self._apply(event)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _apply(self, event: Obj) -> None:
        kind, obj = event.get("type"), event["object"]
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            self.stats.add("pod_watch_bookmarks")
            return
        self.stats.add("pod_watch_events")
        if kind in ("ADDED", "MODIFIED"):
            self.cache.upsert(obj, self.scope)
        elif kind == "DELETED":
            self.cache.delete(obj, self.scope, self._now())
        self.stats.set("pods_cached", len(self.cache))
