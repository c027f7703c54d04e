"""The runai source: GPU allocation and usage of Run:ai workloads (or pods), per aligned tick.

Each tick ``[start, end)`` runs ``delay`` seconds after it ends (Run:ai's metrics arrive late) and:

1. lists the resources (``resource_type``: workloads, or pods) that may have run in it — the active
   ones and those deleted since ``start`` — with anchored paging (no gaps, no duplicates:
   :mod:`otlp_meter.sources.runai_client`);
2. fetches, per resource, the configured ``metrics`` over the tick (``numberOfSamples`` = interval /
   ``step``), a few metric types per request (``metrics_per_request``), ``concurrency`` resources at
   a time;
3. emits per resource that ran one point of the delta sum ``runai.workload.gpu.allocation.time`` (or
   ``runai.pod.gpu.allocation.time``), in GPU-seconds, whose attributes hold the time-weighted
   average of every fetched metric over the tick (``runai.<metric type in lower case>``, e.g.
   ``runai.gpu_utilization``) and ``runai.seconds``, the seconds it ran.

GPU-seconds: workloads integrate their ``GPU_ALLOCATION`` samples (each sample holds until the next,
at most one step); pods (whose metrics have no allocation) multiply their allocated GPUs by the
seconds they ran (containers' start to completion or deletion). The resource attributes are the
Run:ai identifiers (cluster, department, project, workload name/id/type, pod, node).

Failures are retried (per request, then the whole tick with backoff) and counted; a tick is never
skipped because of them. A resource whose metrics answer 404 (deleted between listing and fetching)
is left out of the tick and counted as ``resources_gone``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Literal

import httpx
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from pydantic import Field, SecretStr, field_validator, model_validator

from otlp_meter.config_types import Duration, Section, check_http_url
from otlp_meter.errors import ConfigError
from otlp_meter.sources.base import (
    WALL_CLOCK,
    BackoffConfig,
    Clock,
    Source,
    SourceObserver,
    SourceSink,
    SourceStats,
    TlsClientConfig,
    Wait,
    wait_or_stop,
)
from otlp_meter.sources.k8s_pods import overlap
from otlp_meter.sources.otlp_values import Value, add_delta_sum, add_resource
from otlp_meter.sources.runai_client import GrantType, Row, RunaiClient, RunaiNotFoundError
from otlp_meter.sources.runai_usage import (
    allocated_gpus,
    integrate,
    iso,
    may_have_run,
    pod_window,
    series_by_type,
)
from otlp_meter.sources.ticking import TickLoop
from otlp_meter.telemetry.logging import get_logger

KIND = "runai"
log = get_logger("sources.runai")

DEFAULT_METRICS = (
    "GPU_UTILIZATION",
    "GPU_MEMORY_USAGE_BYTES",
    "GPU_ALLOCATION",
    "CPU_USAGE_CORES",
    "CPU_MEMORY_USAGE_BYTES",
)
ALLOCATION = "GPU_ALLOCATION"
_METRIC_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")


class RunaiSourceConfig(Section):
    name: str = Field("runai", description="Instance name; part of the cursor key, keep it stable.")
    url: str = Field("", description="Base URL of the Run:ai control plane, e.g. https://acme.run.ai.")
    app_id: str = Field("", description="Application (service account) client ID.")
    app_secret: SecretStr | None = Field(
        None, description="Application secret; use ${ENV}. Unset: $RUNAI_APP_SECRET."
    )
    grant_type: GrantType = Field(
        "app_token", description="Token grant: app_token (appID/appSecret) or client_credentials."
    )
    resource_type: Literal["workload", "pod"] = Field("workload", description="Meter workloads or pods.")
    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Run:ai metric types fetched per resource; each becomes a tick-average attribute.",
    )
    interval: Duration = Field(60.0, description="Tick length, whole seconds; ticks are multiples of it.")
    delay: Duration = Field(
        60.0, description="Wait after a tick ends before reading it (whole seconds): metrics arrive late."
    )
    step: Duration = Field(15.0, gt=0, description="Sampling resolution: numberOfSamples = interval / step.")
    max_catch_up: int = Field(
        1440, ge=1, description="After downtime, most missed ticks read (Run:ai keeps metric history)."
    )
    page_size: int = Field(100, ge=2, le=500, description="Rows per list page (Run:ai allows 1..500).")
    metrics_per_request: int = Field(5, ge=1, description="Metric types asked for in one request.")
    concurrency: int = Field(4, ge=1, description="Resources whose metrics are fetched at once.")
    filter_by: list[str] = Field(
        default_factory=list,
        description="Run:ai filterBy expressions for the lists, e.g. projectName==team-a.",
    )
    timeout: Duration = Field(30.0, gt=0, description="Timeout of one API request.")
    max_attempts: int = Field(5, ge=1, description="Attempts of one request before the tick is retried.")
    token_refresh_margin: Duration = Field(60.0, description="Refresh the token this long before it expires.")
    tls: TlsClientConfig = Field(default_factory=TlsClientConfig, description="TLS to the control plane.")
    backoff: BackoffConfig = Field(
        default_factory=BackoffConfig, description="Waits between retries of a request or a tick."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value) if value else value

    @field_validator("interval", "delay")
    @classmethod
    def _whole_seconds(cls, value: float, info: Any) -> float:
        # Whole seconds keep tick arithmetic exact in floats.
        if not value.is_integer() or (info.field_name == "interval" and value < 1):
            raise ValueError("must be a whole number of seconds (interval at least 1s)")
        return value

    @field_validator("step")
    @classmethod
    def _divides_interval(cls, value: float, info: Any) -> float:
        # Each sample holds for at most one step: samples spaced wider than that (an interval that is
        # no whole number of steps) would leave part of every tick unbilled.
        interval = info.data.get("interval")
        if interval is not None and Fraction(repr(interval)) % Fraction(repr(value)) != 0:
            raise ValueError(f"must divide interval ({interval:g}s) into whole steps, got {value:g}s")
        return value

    @field_validator("metrics")
    @classmethod
    def _metric_types(cls, value: list[str]) -> list[str]:
        if bad := [m for m in value if not _METRIC_TYPE.fullmatch(m)]:
            raise ValueError(f"not Run:ai metric types: {', '.join(bad)}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _complete(self) -> RunaiSourceConfig:
        if not self.url or not self.app_id:
            raise ValueError("url and app_id are required")
        if not 1 <= self.interval / self.step <= 1000:
            raise ValueError("interval / step must be between 1 and 1000 (Run:ai's numberOfSamples)")
        return self

    @property
    def samples(self) -> int:
        return max(1, round(self.interval / self.step))


class RunaiSource:
    """The running source (see the module docstring)."""

    kind = KIND

    def __init__(
        self,
        config: RunaiSourceConfig,
        app_secret: str,
        *,
        observer: SourceObserver | None = None,
        clock: Clock = WALL_CLOCK,
        wait: Wait = wait_or_stop,
        retry_wait: Wait | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.stats = SourceStats(KIND, config.name, observer)
        self._secret = app_secret
        self._clock = clock
        self._wait = wait
        self._retry_wait = retry_wait or wait
        self._transport = transport
        self._client: RunaiClient | None = None

    async def run(self, sink: SourceSink, stop: asyncio.Event) -> None:
        """Run the tick loop until ``stop``."""
        c = self.config
        http = httpx.AsyncClient(
            timeout=c.timeout,
            verify=c.tls.ssl_context() if c.url.startswith("https:") else True,
            transport=self._transport,
        )
        async with http:
            self._client = RunaiClient(
                http=http,
                base_url=c.url,
                app_id=c.app_id,
                app_secret=self._secret,
                stats=self.stats,
                grant_type=c.grant_type,
                clock=self._clock,
                wait=self._retry_wait,
                backoff=c.backoff,
                max_attempts=c.max_attempts,
                refresh_margin=c.token_refresh_margin,
                stop=stop,
            )
            loop = TickLoop(
                kind=KIND,
                name=self.name,
                interval=c.interval,
                delay=c.delay,
                max_catch_up=c.max_catch_up,
                produce=self.produce,
                stats=self.stats,
                backoff=c.backoff,
                clock=self._clock,
                wait=self._wait,
            )
            await loop.run(sink, stop)

    async def _list(
        self, path: str, key: str, start: Fraction, extra: Sequence[tuple[str, str]] = ()
    ) -> list[Row]:
        """Active rows, then rows deleted since ``start`` (they may have run in the tick)."""
        assert self._client is not None
        filters = [("filterBy", f) for f in self.config.filter_by]
        size = self.config.page_size
        active = await self._client.list_all(path, key, [*extra, *filters], size)
        deleted_filter = ("filterBy", f"deletedAt>={iso(start)}")
        deleted = await self._client.list_all(
            path, key, [*extra, *filters, ("deleted", "true"), deleted_filter], size
        )
        rows = {str(r["id"]): r for r in deleted}
        rows.update((str(r["id"]), r) for r in active)
        return list(rows.values())

    async def _clusters(self) -> dict[str, str]:
        assert self._client is not None
        body = await self._client.get_json("/api/v1/clusters")
        clusters = body if isinstance(body, list) else []
        return {
            str(c.get("uuid")): str(c.get("name")) for c in clusters if isinstance(c, dict) and c.get("name")
        }

    async def _measurements(
        self, path: str, types: Sequence[str], start: Fraction, end: Fraction
    ) -> list[Row]:
        assert self._client is not None
        per = self.config.metrics_per_request
        out: list[Row] = []
        for i in range(0, len(types), per):
            out += await self._client.metrics(
                path, types[i : i + per], iso(start), iso(end), self.config.samples
            )
        return out

    async def produce(self, start_s: float, end_s: float) -> ExportMetricsServiceRequest:
        """The request of the tick ``[start, end)``."""
        start, end = Fraction(start_s), Fraction(end_s)
        clusters = await self._clusters()
        workloads = await self._list("/api/v1/workloads", "workloads", start)
        by_id = {str(w["id"]): w for w in workloads}
        if self.config.resource_type == "workload":
            candidates = [w for w in workloads if may_have_run(w, start, end)]
        else:
            pods = await self._list("/api/v1/workloads/pods", "pods", start, [("verbosity", "full")])
            candidates = [p for p in pods if may_have_run(p, start, end)]
        candidates.sort(key=lambda r: str(r["id"]))
        self.stats.set("resources_listed", len(candidates))
        semaphore = asyncio.Semaphore(self.config.concurrency)

        async def one(row: Row) -> tuple[Row, dict[str, Value], Fraction] | None:
            async with semaphore:
                try:
                    if self.config.resource_type == "workload":
                        return await self._workload_point(row, start, end)
                    return await self._pod_point(row, start, end)
                except RunaiNotFoundError:
                    self.stats.add("resources_gone")
                    log.warning("runai_resource_gone", resource_id=str(row.get("id")), tick=iso(end))
                    return None

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(row)) for row in candidates]
        except ExceptionGroup as failed:
            # The first failure says why the tick failed (the others were cancelled with it).
            raise failed.exceptions[0] from None
        request = ExportMetricsServiceRequest()
        metric = f"runai.{self.config.resource_type}.gpu.allocation.time"
        for task in tasks:
            if (point := task.result()) is None:
                continue
            row, attributes, gpu_seconds = point
            scope = add_resource(request, KIND, self._resource(row, by_id, clusters))
            add_delta_sum(
                scope, metric, "{gpu}.s", "GPUs allocated times seconds.", gpu_seconds, start, end, attributes
            )
        return request

    async def _workload_point(
        self, workload: Row, start: Fraction, end: Fraction
    ) -> tuple[Row, dict[str, Value], Fraction] | None:
        types = list(dict.fromkeys([*self.config.metrics, ALLOCATION]))
        path = f"/api/v1/workloads/{workload['id']}/metrics"
        series = series_by_type(await self._measurements(path, types, start, end), self.stats)
        step = Fraction(self.config.step)
        attributes: dict[str, Value] = {}
        seconds = Fraction(0)
        gpu_seconds = Fraction(0)
        for metric_type in types:
            integral, covered = integrate(series.get(metric_type, {}), start, end, step)
            seconds = max(seconds, covered)
            if metric_type == ALLOCATION:
                gpu_seconds = integral
            if covered:
                attributes[f"runai.{metric_type.lower()}"] = integral / covered
        if seconds <= 0:
            return None
        attributes["runai.seconds"] = seconds
        return workload, attributes, gpu_seconds

    async def _pod_point(
        self, pod: Row, start: Fraction, end: Fraction
    ) -> tuple[Row, dict[str, Value], Fraction] | None:
        window = pod_window(pod)
        seconds = overlap(window, start, end) if window else Fraction(0)
        if seconds <= 0:
            return None
        gpus = allocated_gpus(pod)
        attributes: dict[str, Value] = {"runai.seconds": seconds, "runai.gpu_allocation": gpus}
        types = [t for t in self.config.metrics if t != ALLOCATION]
        if types:
            path = f"/api/v1/workloads/{pod['workloadId']}/pods/{pod['id']}/metrics"
            series = series_by_type(await self._measurements(path, types, start, end), self.stats)
            for metric_type in types:
                integral, covered = integrate(
                    series.get(metric_type, {}), start, end, Fraction(self.config.step)
                )
                if covered:
                    attributes[f"runai.{metric_type.lower()}"] = integral / covered
        return pod, attributes, gpus * seconds

    def _resource(
        self, row: Row, workloads: Mapping[str, Row], clusters: Mapping[str, str]
    ) -> dict[str, Value]:
        """Run:ai identifiers of a workload, or of a pod and its workload."""
        is_pod = self.config.resource_type == "pod"
        workload = (workloads.get(str(row.get("workloadId"))) or {}) if is_pod else row
        cluster_id = str(row.get("clusterId") or workload.get("clusterId") or "")
        attributes: dict[str, Value] = {}
        pairs: list[tuple[str, object]] = [
            ("runai.cluster.id", cluster_id),
            ("runai.cluster.name", clusters.get(cluster_id)),
            ("runai.department.id", workload.get("departmentId")),
            ("runai.department.name", workload.get("departmentName")),
            ("runai.project.id", row.get("projectId") or workload.get("projectId")),
            ("runai.project.name", row.get("projectName") or workload.get("projectName")),
            ("runai.workload.id", workload.get("id") or row.get("workloadId")),
            ("runai.workload.name", workload.get("name") or row.get("workloadName")),
            ("runai.workload.type", workload.get("type")),
            ("k8s.namespace.name", workload.get("namespace")),
        ]
        if is_pod:
            pairs += [
                ("runai.pod.id", row.get("id")),
                ("k8s.pod.name", row.get("name")),
                ("k8s.node.name", row.get("nodeName")),
                ("runai.nodepool.name", row.get("currentNodePool")),
            ]
        for key, value in pairs:
            if value not in (None, ""):
                attributes[key] = str(value)
        return attributes


def build(config: RunaiSourceConfig, *, observer: SourceObserver | None = None) -> Source:
    """Create the running source for ``config``; the secret comes from config or $RUNAI_APP_SECRET."""
    secret = (
        config.app_secret.get_secret_value() if config.app_secret else os.environ.get("RUNAI_APP_SECRET", "")
    )
    if not secret:
        raise ConfigError(
            [(f"sources.runai[{config.name}].app_secret", "unset and $RUNAI_APP_SECRET is empty")]
        )
    return RunaiSource(config, secret, observer=observer)
