"""The kubernetes source: what each pod held (CPU, memory, GPUs) and for how long, per aligned tick.

Node-local by default: each DaemonSet pod watches the pods of its own node (field selector
``spec.nodeName=$NODE_NAME``), so no leader election is needed and work scales with the cluster;
``cluster_wide: true`` watches every node's pods (run one replica). A watch-based cache
(:mod:`otlp_meter.sources.k8s_watch`) follows the API; at each tick the source emits, per pod that ran
in the tick, one point of the delta sum ``k8s.pod.runtime`` (seconds) whose attributes carry the
pod's effective requests and limits and their products with the seconds (core-, byte- and
GPU-seconds, exact: :mod:`otlp_meter.sources.k8s_pods`). The shipped ``kubernetes`` pack turns each
point into one ``kube-pod`` CloudEvent. The tick's events and cursor commit together
(:mod:`otlp_meter.sources.ticking`).

After downtime, missed ticks are computed from the pods the API still has (their start and finish
times, never when the collector saw them: a pod's window is the same live and caught up); a pod
deleted while the collector was down is not in the API any more and is not billed for those ticks
(documented; counted as caught-up ticks).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from pydantic import Field, SecretStr, field_validator, model_validator

from otlp_meter.config_types import Duration, Section
from otlp_meter.errors import ConfigError
from otlp_meter.sources.base import (
    WALL_CLOCK,
    BackoffConfig,
    Clock,
    Source,
    SourceObserver,
    SourceSink,
    SourceStats,
    Wait,
    wait_or_stop,
)
from otlp_meter.sources.k8s_client import KubeClient
from otlp_meter.sources.k8s_pods import Allocation, overlap, pod_allocation, run_window
from otlp_meter.sources.k8s_watch import PodApi, PodCache, PodEntry, PodWatcher
from otlp_meter.sources.otlp_values import Value, add_delta_sum, add_resource, prefixed
from otlp_meter.sources.ticking import NotReady, TickLoop
from otlp_meter.telemetry.logging import get_logger

log = get_logger("sources.kubernetes")

KIND = "kubernetes"
REQUIRED_RBAC = {("", "pods"): frozenset({"get", "list", "watch"}), ("", "nodes"): frozenset({"get"})}
"""What this source does with the Kubernetes API (the chart's ClusterRole grants exactly this)."""

READY_TIMEOUT = 10.0  # real seconds a due tick waits for the pod cache before backing off
_CRONJOB_JOB = re.compile(r"(.+)-\d{8,}")  # a CronJob names its Jobs <cronjob>-<scheduled minute>


class KubernetesSourceConfig(Section):
    name: str = Field("kubernetes", description="Instance name; part of the cursor key, keep it stable.")
    interval: Duration = Field(
        60.0, description="Tick length, whole seconds; ticks are multiples of it since the epoch."
    )
    delay: Duration = Field(
        2.0,
        description="Wait after a tick ends before computing it (whole seconds), so the watch has "
        "delivered the changes up to its end.",
    )
    max_catch_up: int = Field(
        1440,
        ge=1,
        description="After downtime, most missed ticks computed; older ones are reported as skipped.",
    )
    node_name: str | None = Field(
        None, description="Node whose pods are metered. Unset: $NODE_NAME (set it from spec.nodeName)."
    )
    cluster_wide: bool = Field(False, description="Meter the pods of every node (run a single replica).")
    cluster_name: str | None = Field(None, description="Sets k8s.cluster.name on every pod.")
    namespaces: list[str] = Field(default_factory=list, description="Only these namespaces (default: all).")
    exclude_namespaces: list[str] = Field(default_factory=list, description="Never these namespaces.")
    label_selector: str | None = Field(None, description="Only pods matching this label selector.")
    include_pending: bool = Field(
        False,
        description="Also bill pods from when they were bound to the node, before the kubelet starts them.",
    )
    gpu_resources: list[str] = Field(
        default_factory=lambda: ["nvidia.com/gpu", "amd.com/gpu"],
        description="Extended resources summed as GPUs.",
    )
    label_keys: list[str] = Field(
        default_factory=lambda: ["*"], description="Pod labels (globs) copied as k8s.pod.label.<key>."
    )
    annotation_keys: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Pod annotations (globs) copied as k8s.pod.annotation.<key>.",
    )
    exclude_annotation_keys: list[str] = Field(
        default_factory=lambda: ["kubectl.kubernetes.io/last-applied-configuration"],
        description="Pod annotations (globs) never copied.",
    )
    node_labels: list[str] = Field(
        default_factory=lambda: [
            "node.kubernetes.io/instance-type",
            "nvidia.com/gpu.product",
            "topology.kubernetes.io/zone",
        ],
        description="Node labels (exact keys) copied as k8s.node.label.<key> (needs RBAC get nodes).",
    )
    node_labels_ttl: Duration = Field(600.0, description="How long a node's labels are cached.")
    kubeconfig: str | None = Field(
        None, description="Kubeconfig path. Unset: in-cluster service account, else $KUBECONFIG."
    )
    context: str | None = Field(None, description="Kubeconfig context. Unset: its current context.")
    api_url: str | None = Field(None, description="Talk to this API server directly (kubectl proxy, tests).")
    token: SecretStr | None = Field(None, description="Bearer token for api_url (use ${ENV}).")
    page_size: int = Field(500, ge=1, description="Pods per list page.")
    watch_timeout: Duration = Field(300.0, ge=1, description="Server-side timeout of one watch request.")
    backoff: BackoffConfig = Field(
        default_factory=BackoffConfig, description="Waits between retries of a failed tick or watch."
    )

    @field_validator("interval", "delay")
    @classmethod
    def _whole_seconds(cls, value: float, info: Any) -> float:
        # Whole seconds keep tick arithmetic exact in floats (a tick read back from its cursor is the
        # same number aligned_ticks computes).
        if not value.is_integer() or (info.field_name == "interval" and value < 1):
            raise ValueError(
                "must be a whole number of seconds"
                + (", at least 1s" if info.field_name == "interval" else "")
            )
        return value

    @model_validator(mode="after")
    def _one_namespace_filter(self) -> KubernetesSourceConfig:
        if self.namespaces and self.exclude_namespaces:
            raise ValueError("set namespaces or exclude_namespaces, not both")
        return self


def owner_attributes(pod: Mapping[str, Any]) -> dict[str, Value]:
    """The pod's controller as semantic-convention attributes (deployment from its ReplicaSet's name)."""
    metadata = pod.get("metadata") or {}
    out: dict[str, Value] = {}
    for ref in metadata.get("ownerReferences") or ():
        if not ref.get("controller"):
            continue
        kind, name = ref.get("kind"), str(ref.get("name") or "")
        if kind == "ReplicaSet":
            out["k8s.replicaset.name"] = name
            template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
            if template_hash and name.endswith("-" + template_hash):
                out["k8s.deployment.name"] = name[: -len(template_hash) - 1]
        elif kind == "StatefulSet":
            out["k8s.statefulset.name"] = name
        elif kind == "DaemonSet":
            out["k8s.daemonset.name"] = name
        elif kind == "Job":
            out["k8s.job.name"] = name
            if m := _CRONJOB_JOB.fullmatch(name):
                out["k8s.cronjob.name"] = m[1]
    return out


def allocation_attributes(
    allocation: Allocation, seconds: Fraction, gpu_resources: list[str]
) -> dict[str, Value]:
    """The point attributes: raw requests and limits, and requests times seconds."""
    out: dict[str, Value] = {}
    for short, names in (("cpu", ["cpu"]), ("memory", ["memory"]), ("gpu", gpu_resources)):
        request = allocation.request(names)
        out[f"k8s.pod.{short}.request"] = request
        out[f"k8s.pod.{short}.request.time"] = request * seconds
        limit = allocation.limit(names)
        if limit is not None:
            out[f"k8s.pod.{short}.limit"] = limit
    used = [name for name in gpu_resources if allocation.requests.get(name)]
    if used:
        out["k8s.pod.gpu.resource"] = ",".join(used)
    return out


class NodeLabels:
    """Labels of nodes by name, read with ``get nodes`` and cached for ``ttl`` seconds."""

    def __init__(
        self, client: KubeClient, keys: list[str], ttl: float, clock: Clock, stats: SourceStats
    ) -> None:
        self._client, self._keys, self._ttl, self._clock, self._stats = client, keys, ttl, clock, stats
        self._cache: dict[str, tuple[float, dict[str, Value]]] = {}

    async def get(self, node: str) -> dict[str, Value]:
        if not self._keys or not node:
            return {}
        cached = self._cache.get(node)
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return cached[1]
        try:
            labels = ((await self._client.get_node(node)).get("metadata") or {}).get("labels") or {}
        except Exception as error:  # labels describe, they do not bill: keep the last known, count it
            self._stats.add("node_read_errors")
            log.warning("kubernetes_node_read_failed", node=node, error=f"{type(error).__name__}: {error}")
            return cached[1] if cached else {}
        found: dict[str, Value] = {
            f"k8s.node.label.{key}": str(labels[key]) for key in self._keys if key in labels
        }
        self._cache[node] = (self._clock(), found)
        return found


class KubernetesSource:
    """The running source (see the module docstring)."""

    kind = KIND

    def __init__(
        self,
        config: KubernetesSourceConfig,
        node_name: str | None,
        *,
        observer: SourceObserver | None = None,
        clock: Clock = WALL_CLOCK,
        wait: Wait = wait_or_stop,
    ) -> None:
        self.name = config.name
        self.config = config
        self.node_name = node_name
        self.clock = clock
        self.wait = wait
        self.stats = SourceStats(KIND, config.name, observer)
        self.cache = PodCache()
        self.ready_timeout = READY_TIMEOUT
        self._nodes: NodeLabels | None = None

    def field_selector(self) -> str | None:
        """``spec.nodeName=<node>`` (node-local) and ``metadata.namespace!=<ns>`` for excluded namespaces."""
        parts = [] if self.config.cluster_wide else [f"spec.nodeName={self.node_name}"]
        parts += [f"metadata.namespace!={ns}" for ns in self.config.exclude_namespaces]
        return ",".join(parts) or None

    async def _connect(self, stop: asyncio.Event) -> KubeClient | None:
        delays = self.config.backoff.delays()
        while not stop.is_set():
            token = self.config.token.get_secret_value() if self.config.token else None
            try:
                return await KubeClient.connect(
                    api_url=self.config.api_url,
                    token=token,
                    kubeconfig=self.config.kubeconfig,
                    context=self.config.context,
                )
            except Exception as error:  # a kubeconfig unreadable now may be fixed later: retry
                self.stats.add("connect_errors")
                delay = next(delays)
                log.error(
                    "kubernetes_client_config_failed",
                    source=self.name,
                    error=f"{type(error).__name__}: {error}",
                    retry_in=round(delay, 3),
                )
                if await self.wait(stop, delay):
                    return None
        return None

    async def run(self, sink: SourceSink, stop: asyncio.Event) -> None:
        """Watch pods and emit each tick until ``stop``."""
        client = await self._connect(stop)
        if client is None:
            return
        self._nodes = NodeLabels(
            client, self.config.node_labels, self.config.node_labels_ttl, self.clock, self.stats
        )
        watchers_stop = asyncio.Event()
        namespaces: list[str | None] = [*self.config.namespaces] or [None]
        watchers = [self._watcher(client, namespace) for namespace in namespaces]
        tasks = [asyncio.create_task(w.run(watchers_stop), name=f"pod-watch-{w.scope}") for w in watchers]
        loop = TickLoop(
            kind=KIND,
            name=self.name,
            interval=self.config.interval,
            delay=self.config.delay,
            max_catch_up=self.config.max_catch_up,
            produce=self.produce,
            stats=self.stats,
            backoff=self.config.backoff,
            clock=self.clock,
            wait=self.wait,
            on_committed=lambda end: self.cache.prune(Fraction(end)),
        )
        try:
            await loop.run(sink, stop)
        finally:
            watchers_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    def _watcher(self, api: PodApi, namespace: str | None) -> PodWatcher:
        return PodWatcher(
            api=api,
            cache=self.cache,
            namespace=namespace,
            field_selector=self.field_selector(),
            label_selector=self.config.label_selector,
            clock=self.clock,
            stats=self.stats,
            page_size=self.config.page_size,
            watch_timeout=int(self.config.watch_timeout),
            backoff=self.config.backoff,  # real waits: the watch follows the API, not the tick clock
        )

    async def produce(self, start: float, end: float) -> ExportMetricsServiceRequest:
        """The request of the tick ``[start, end)``: one resource per pod that ran in it."""
        if not await self.cache.wait_healthy(self.ready_timeout):
            raise NotReady("the pod cache is not listed and watching (API server unreachable?)")
        tick_start, tick_end = Fraction(start), Fraction(end)
        request = ExportMetricsServiceRequest()
        for entry in sorted(self.cache, key=_pod_order):
            window = run_window(
                entry.pod,
                include_pending=self.config.include_pending,
                earliest_start=entry.earliest_start,
                gone_at=entry.gone_at,
            )
            seconds = overlap(window, tick_start, tick_end) if window else Fraction(0)
            if seconds <= 0:
                continue
            await self._add_pod(request, entry, seconds, tick_start, tick_end)
        return request

    async def _add_pod(
        self,
        request: ExportMetricsServiceRequest,
        entry: PodEntry,
        seconds: Fraction,
        start: Fraction,
        end: Fraction,
    ) -> None:
        pod, config = entry.pod, self.config
        metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        resource: dict[str, Value] = {
            "k8s.namespace.name": str(metadata.get("namespace") or ""),
            "k8s.pod.name": str(metadata.get("name") or ""),
            "k8s.pod.uid": entry.uid,
        }
        if config.cluster_name:
            resource["k8s.cluster.name"] = config.cluster_name
        node = str(spec.get("nodeName") or "")
        if node:
            resource["k8s.node.name"] = node
        resource.update(owner_attributes(pod))
        resource.update(prefixed("k8s.pod.label.", metadata.get("labels"), config.label_keys, ()))
        resource.update(
            prefixed(
                "k8s.pod.annotation.",
                metadata.get("annotations"),
                config.annotation_keys,
                config.exclude_annotation_keys,
            )
        )
        if self._nodes is not None:
            resource.update(await self._nodes.get(node))
        attributes = allocation_attributes(pod_allocation(pod), seconds, config.gpu_resources)
        attributes["k8s.pod.phase"] = str((pod.get("status") or {}).get("phase") or "Unknown")
        scope = add_resource(request, KIND, resource)
        add_delta_sum(
            scope,
            "k8s.pod.runtime",
            "s",
            "Seconds the pod ran in the interval.",
            seconds,
            start,
            end,
            attributes,
        )


def _pod_order(entry: PodEntry) -> tuple[str, str, str]:
    metadata = entry.pod.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""), entry.uid)


def build(config: KubernetesSourceConfig, *, observer: SourceObserver | None = None) -> Source:
    """Create the running source for ``config``; the node comes from config or $NODE_NAME."""
    node_name = config.node_name or os.environ.get("NODE_NAME") or None
    if not config.cluster_wide and not node_name:
        raise ConfigError(
            [
                (
                    "sources.kubernetes.node_name",
                    "unset and $NODE_NAME is empty; set it (downward API "
                    "spec.nodeName) or set cluster_wide: true",
                )
            ]
        )
    return KubernetesSource(config, node_name, observer=observer)
