"""The prometheus source: instant queries at aligned ticks, each series a gauge point.

Every ``interval`` (ticks are multiples of it since the Unix epoch, so ``1h`` runs on the hour and
``24h`` at midnight UTC) each query is evaluated at ``tick - query_offset`` through the HTTP API
(``POST /api/v1/query``). Each series of the answer becomes one point of the gauge
``prometheus.query`` (labels and ``prometheus.query.name`` as attributes, time = the tick), handed
to the sink with that query's cursor, the last completed tick, so points and cursor commit together.

Queries are independent: each has its own cursor and loop, so a failing query is retried with
backoff (its cursor stays, its ticks wait) while the others go on. After downtime each query runs
the ticks it missed, oldest first, at most ``max_catch_up`` of them (older ones are skipped, logged
and counted). A tick is never run twice once committed: the cursor moves in the commit itself.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from datetime import UTC, datetime
from typing import Literal

import httpx
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from pydantic import Field, SecretStr, field_validator, model_validator

from otlp_meter.config_types import Duration, Section, check_http_url
from otlp_meter.sources.base import (
    WALL_CLOCK,
    BackoffConfig,
    Clock,
    Cursor,
    Source,
    SourceObserver,
    SourceSink,
    SourceStats,
    TlsClientConfig,
    Wait,
    aligned_ticks,
    cursor_key,
    deliver,
    run_until_stopped,
    wait_or_stop,
)
from otlp_meter.sources.promql import Answer, QueryFailed, parse_answer, points_request, static_result_type
from otlp_meter.telemetry.logging import get_logger

KIND = "prometheus"
log = get_logger("sources.prometheus")

_NAME = re.compile(r"[A-Za-z0-9_.:/-]+")
_PARTIAL = re.compile(r"partial", re.IGNORECASE)
"""How Thanos ("partial response"), Mimir and Cortex word a warning about data they could not read."""

# Failures that retrying cannot fix without a config change: logged as errors, not warnings.
_CONFIG_FAILURES = frozenset({"result_type", "api", "http"})


class PrometheusQueryConfig(Section):
    """One query of a prometheus source."""

    name: str = Field(
        "",
        validate_default=True,
        description="Query name: the event type (point attribute prometheus.query.name) and part of the "
        "query's cursor key, so keep it stable. Letters, digits and _ . : / -.",
    )
    promql: str = Field(
        "",
        validate_default=True,
        description="PromQL returning an instant vector of usage per interval, e.g. "
        "sum by (customer) (increase(api_requests_total[1m])) for a 1m interval.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a query needs a name of letters, digits and _ . : / -")
        return value

    @field_validator("promql")
    @classmethod
    def _instant_vector(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a query needs its promql")
        if (kind := static_result_type(value)) is not None:
            raise ValueError(
                f"this query returns a {kind}, not an instant vector: each series must have one value "
                "per tick (e.g. sum by (customer) (increase(x[5m])) rather than x[5m])"
            )
        return value


class PrometheusSourceConfig(Section):
    """One Prometheus-compatible server (Prometheus, Thanos, Mimir, VictoriaMetrics) and its queries."""

    name: str = Field("prometheus", description="Instance name; part of the cursor key, keep it stable.")
    url: str = Field(
        "http://localhost:9090",
        description="Base URL of the Prometheus HTTP API; queries go to {url}/api/v1/query.",
    )
    queries: list[PrometheusQueryConfig] = Field(
        default_factory=list, description="The queries run at every tick; names must be unique."
    )
    interval: Duration = Field(
        60.0, description="Time between ticks, whole seconds; ticks are multiples of it since the epoch."
    )
    query_offset: Duration = Field(
        60.0,
        description="Each tick evaluates its queries this long before the tick, so late scrapes are in.",
    )
    max_catch_up: int = Field(
        60, ge=1, description="Most missed ticks run per query after downtime (the newest); 1: none."
    )
    timeout: Duration = Field(30.0, gt=0, description="Timeout of one query (sent to Prometheus too).")
    partial_answers: Literal["retry", "accept"] = Field(
        "retry",
        description="An answer Thanos, Mimir or Cortex marks partial (a warning naming a store or "
        "ingester it could not reach): retry the tick (default), or bill what it holds.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. Authorization: Bearer ${PROMETHEUS_TOKEN}.",
    )
    tls: TlsClientConfig = Field(default_factory=TlsClientConfig, description="TLS to the server.")
    backoff: BackoffConfig = Field(
        default_factory=BackoffConfig, description="Waits between retries of a failed query or commit."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("interval")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        # Whole seconds keep tick arithmetic exact in floats: a tick read back from its cursor is
        # the same number aligned_ticks computes, never one ulp off (which would re-run or stall it).
        if value < 1 or not value.is_integer():
            raise ValueError("must be a whole number of seconds, at least 1s")
        return value

    @model_validator(mode="after")
    def _unique_query_names(self) -> PrometheusSourceConfig:
        names = [q.name for q in self.queries]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"query names must be unique: {', '.join(duplicates)}")
        return self


class PrometheusSource:
    """Runs the queries of one :class:`PrometheusSourceConfig`; see the module docstring."""

    kind = KIND

    def __init__(
        self,
        config: PrometheusSourceConfig,
        *,
        observer: SourceObserver | None = None,
        clock: Clock = WALL_CLOCK,
        wait: Wait = wait_or_stop,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.stats = SourceStats(KIND, config.name, observer)
        self._clock = clock
        self._wait = wait
        self._transport = transport
        self._lag: dict[str, float] = {}

    async def run(self, sink: SourceSink, stop: asyncio.Event) -> None:
        """Run every query's loop until ``stop`` is set."""
        c = self.config
        client = httpx.AsyncClient(
            headers={k: v.get_secret_value() for k, v in c.headers.items()},
            timeout=c.timeout + 5.0,  # Prometheus gives up first and says why
            verify=c.tls.ssl_context() if c.url.startswith("https:") else True,
            transport=self._transport,
        )
        async with client:
            loops = [functools.partial(self._run_query, client, q, sink, stop) for q in c.queries]
            await run_until_stopped(stop, *loops, restart=c.backoff, wait=self._wait)

    async def _run_query(
        self, client: httpx.AsyncClient, query: PrometheusQueryConfig, sink: SourceSink, stop: asyncio.Event
    ) -> None:
        interval = self.config.interval
        key = cursor_key(KIND, self.name, f"query/{query.name}")
        last = _decode_tick(sink.get_state(key))
        delays = self.config.backoff.delays()
        while not stop.is_set():
            now = self._clock()
            plan = aligned_ticks(last, now, interval, self.config.max_catch_up)
            if not plan.due:
                assert last is not None  # the first plan always has the latest tick
                self._set_lag(query.name, now - last)
                if await self._wait(stop, last + interval - now):
                    return
                continue
            tick = plan.due[0]
            try:
                request, answer = await self._evaluate(client, query, tick)
            except QueryFailed as exc:
                delay = next(delays)
                self._failed(query, tick, exc, delay)
                if last is not None:  # a stuck query shows as a growing lag
                    self._set_lag(query.name, self._clock() - last)
                if await self._wait(stop, delay):
                    return
                continue
            cursor: Cursor = {key: _encode_tick(tick)}
            result = await deliver(
                functools.partial(sink.metrics, request, cursor),
                stop,
                backoff=self.config.backoff,
                wait=self._wait,
                on_retry=lambda exc, delay: self._busy(query, exc, delay),
            )
            if result is None:
                return
            self._done(query, tick, last, answer, late=len(plan.due) > 1)
            last = tick
            delays = self.config.backoff.delays()

    async def _evaluate(
        self, client: httpx.AsyncClient, query: PrometheusQueryConfig, tick: float
    ) -> tuple[ExportMetricsServiceRequest, Answer]:
        at = tick - self.config.query_offset
        form = {"query": query.promql, "time": f"{at:.3f}", "timeout": f"{self.config.timeout:g}s"}
        if self.config.partial_answers == "retry":
            form["partial_response"] = "false"  # Thanos then fails the query itself; others ignore it
        try:
            response = await client.post(f"{self.config.url}/api/v1/query", data=form)
        except httpx.TimeoutException as exc:
            raise QueryFailed("timeout", f"no answer within {self.config.timeout:g}s ({exc!r})") from None
        except httpx.HTTPError as exc:
            raise QueryFailed("network", f"{type(exc).__name__}: {exc}") from None
        answer = parse_answer(response.status_code, response.content)
        partial = [w for w in answer.warnings if _PARTIAL.search(w)]
        if partial and self.config.partial_answers == "retry":
            # A tick is committed once: billing what a partial answer holds would lose the rest for good.
            raise QueryFailed("partial", f"the answer is partial: {partial[0][:300]}")
        resource = {"otlp_meter.source.name": self.name}
        return points_request(query.name, int(tick) * 1_000_000_000, answer.series, resource), answer

    def _done(
        self, query: PrometheusQueryConfig, tick: float, last: float | None, answer: Answer, *, late: bool
    ) -> None:
        self.stats.add("ticks_completed")
        if late:  # a newer tick was already due: this one ran to catch up after downtime or failures
            self.stats.add("ticks_caught_up")
        self.stats.add("points", len(answer.series))
        rejected = answer.non_finite + answer.unsupported
        self.stats.add("points_rejected", rejected)
        if last is not None and (skipped := round((tick - last) / self.config.interval) - 1) > 0:
            self.stats.add("ticks_skipped", skipped)
            log.warning(
                "prometheus_ticks_skipped",
                source=self.name,
                query=query.name,
                skipped=skipped,
                after=_iso(last),
                resumed_at=_iso(tick),
                hint="downtime beyond max_catch_up ticks; raise it to catch up further",
            )
        if rejected:
            log.warning(
                "prometheus_points_rejected",
                source=self.name,
                query=query.name,
                tick=_iso(tick),
                non_finite=answer.non_finite,
                native_histograms=answer.unsupported,
            )
        for warning in answer.warnings:
            log.warning("prometheus_query_warning", source=self.name, query=query.name, warning=warning)
        self._set_lag(query.name, self._clock() - tick)
        log.debug("prometheus_tick_done", source=self.name, query=query.name, tick=_iso(tick))

    def _failed(self, query: PrometheusQueryConfig, tick: float, exc: QueryFailed, delay: float) -> None:
        self.stats.add("ticks_failed")
        log_at = log.error if exc.reason in _CONFIG_FAILURES else log.warning
        log_at(
            "prometheus_query_failed",
            source=self.name,
            query=query.name,
            tick=_iso(tick),
            reason=exc.reason,
            error=str(exc),
            retry_in=round(delay, 3),
        )

    def _busy(self, query: PrometheusQueryConfig, exc: Exception, delay: float) -> None:
        self.stats.add("commits_retried")
        log.warning(
            "prometheus_commit_retry", source=self.name, query=query.name, error=str(exc), retry_in=delay
        )

    def _set_lag(self, query: str, lag: float) -> None:
        self._lag[query] = max(0.0, lag)
        self.stats.set("cursor_lag_seconds", max(self._lag.values()))


def _encode_tick(tick: float) -> bytes:
    return str(int(tick)).encode()


def _decode_tick(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.decode())
    except (UnicodeDecodeError, ValueError):
        log.error("prometheus_cursor_unreadable", value=raw[:64].decode("utf-8", "replace"))
        return None
    return value if math.isfinite(value) else None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(config: PrometheusSourceConfig, *, observer: SourceObserver | None = None) -> Source:
    """Create the running source for ``config`` (``observer`` receives its counts and gauges)."""
    return PrometheusSource(config, observer=observer)
