"""The one path every input takes: rules → queue.append → result.

Receivers and sources call :class:`Pipeline`; it maps records to events with the rules engine, makes
them durable (events, dead letters for rejected records and any cursor update in one commit) and
reports what happened. It answers only after the commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.errors import ShuttingDownError
from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue.lmdb_queue import LmdbQueue
from otlp_meter.rules.delta import StreamStates
from otlp_meter.rules.engine import MappingResult, RulesEngine
from otlp_meter.telemetry.logging import ThrottledLog, get_logger
from otlp_meter.telemetry.metrics import Children, Metrics
from otlp_meter.telemetry.spec import rule_rejection_reason

log = get_logger("pipeline")

MAX_REASONS_IN_MESSAGE = 3
_MAX_DETAIL = 300
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one request: ``rejected`` records were dead-lettered, ``message`` says why."""

    records: int
    rejected: int
    message: str
    appended: int
    deduplicated: int


class Pipeline:
    """Rules, then one durable append per request. Safe to call from many tasks on one loop."""

    def __init__(
        self,
        engine: RulesEngine,
        queue: LmdbQueue,
        metrics: Metrics,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._engine = engine
        self._queue = queue
        self._metrics = metrics
        self._append_duration = metrics.queue_append_duration
        self._matched = Children(metrics.rules_matched)  # counted on every request
        self._unmatched = Children(metrics.rules_unmatched)
        self._cumulative = Children(metrics.rules_cumulative_points)
        # What the queue stored (appended, deduplicated, dead letters …) is counted by the queue's
        # own ledger, in the same transactions as the data; the metrics read it when scraped.
        metrics.observe_queue(queue.stats)
        self._clock_ns = clock_ns
        self._open = True
        self._rejections = ThrottledLog(log, "records_dead_lettered")
        self._streams: StreamStates | None = None
        # Cumulative-to-delta reads and advances per-stream state: mapping and committing one request
        # must finish before the next request's mapping reads that state.
        self._streams_lock = asyncio.Lock()

    def open_streams(self) -> None:
        """Load cumulative stream state from the queue (call once, after the queue is open)."""
        self._streams = self._engine.stream_states(self._queue.get_state, self._clock_ns())

    def close_intake(self) -> None:
        """From now on every ingest is refused with the retryable ShuttingDownError."""
        self._open = False

    async def ingest_logs(
        self, request: ExportLogsServiceRequest, state: Mapping[bytes, bytes | None] | None = None
    ) -> IngestResult:
        """Map ``request`` and commit its events (and ``state``); returns after the synced commit.

        Raises ShuttingDownError after :meth:`close_intake`, and what ``LmdbQueue.append`` raises
        (QueueFullError, StorageError); then nothing of the request was stored.
        """
        self._check_open()
        return await self._commit("logs", self._engine.map_logs(request, self._clock_ns()), state)

    async def ingest_metrics(
        self, request: ExportMetricsServiceRequest, state: Mapping[bytes, bytes | None] | None = None
    ) -> IngestResult:
        """Like :meth:`ingest_logs`, for metric data points.

        Requests with cumulative points are mapped and committed one at a time, so each sees the
        stream state the previous one committed; if the commit fails the state is rolled back, so
        the sender's retry is billed exactly once.
        """
        self._check_open()
        if self._streams is None or not _has_cumulative(request):
            return await self._commit("metrics", self._engine.map_metrics(request, self._clock_ns()), state)
        streams = self._streams
        async with self._streams_lock:
            mapped = self._engine.map_metrics(request, self._clock_ns(), streams)
            commit = asyncio.ensure_future(
                self._commit("metrics", mapped, {**(state or {}), **mapped.state_updates})
            )
            try:
                return await asyncio.shield(commit)
            except asyncio.CancelledError:
                # The caller went away; hold the lock until the commit settles either way.
                await asyncio.wait([commit])
                if (commit.cancelled() or commit.exception() is not None) and mapped.state_token is not None:
                    streams.rollback(mapped.state_token)
                raise
            except BaseException:
                if mapped.state_token is not None:
                    streams.rollback(mapped.state_token)
                raise

    async def ingest_events(
        self, events: Sequence[EncodedEvent], state: Mapping[bytes, bytes | None] | None = None
    ) -> IngestResult:
        """Commit ready CloudEvents (the events API) as they are, with their own ids; returns after
        the synced commit. Copies within the dedupe window are dropped and counted.

        They do not go through the rules: the rules map OTLP records, and an event that arrives as
        a CloudEvent is already what OpenMeter takes. Raises like :meth:`ingest_logs`.
        """
        self._check_open()
        mapped = MappingResult(events=list(events), rejected=[], records=len(events), unmatched=0, matched={})
        return await self._commit("events", mapped, state)

    def _check_open(self) -> None:
        if not self._open:
            raise ShuttingDownError("otlp-meter is shutting down", retry_after=5.0)

    async def _commit(
        self, signal: str, mapped: MappingResult, state: Mapping[bytes, bytes | None] | None
    ) -> IngestResult:
        if mapped.events or mapped.rejected or state:
            started = time.perf_counter()
            appended = await self._queue.append(mapped.events, mapped.rejected, state or {})
            self._append_duration.observe(time.perf_counter() - started)
            n_appended, n_dedup = appended.appended, appended.deduplicated
        else:
            n_appended = n_dedup = 0
        for rule, count in mapped.matched.items():
            self._matched[(rule,)].inc(count)
        if mapped.unmatched:
            self._unmatched[(signal,)].inc(mapped.unmatched)
        for outcome, count in mapped.cumulative.items():
            self._cumulative[(outcome,)].inc(count)
        message = ""
        if mapped.rejected:
            self._report_rejections(signal, mapped.rejected)
            reasons = [f"{r.rule}: {r.reason}" for r in mapped.rejected[:MAX_REASONS_IN_MESSAGE]]
            more = len(mapped.rejected) - len(reasons)
            message = "; ".join(reasons) + (f"; and {more} more" if more > 0 else "")
        return IngestResult(mapped.records, mapped.rejected_records, message, n_appended, n_dedup)

    def _report_rejections(self, signal: str, rejected: Sequence[Rejection]) -> None:
        """Count rejections by rule and reason; log them (they are now dead letters), at most once
        per rule and reason every few seconds, since a sender decides how many it sends."""
        counts: dict[tuple[str, str], int] = {}
        first: dict[tuple[str, str], str] = {}
        for rejection in rejected:
            key = (rejection.rule, rule_rejection_reason(rejection.reason))
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, rejection.reason)
        for (rule, reason), count in counts.items():
            self._metrics.rules_rejected.labels(rule, reason).inc(count)
            self._rejections.warning(
                f"{rule}/{reason}",
                signal=signal,
                rule=rule,
                reason=reason,
                detail=first[(rule, reason)][:_MAX_DETAIL],
                records=count,
                action="kept as dead letters (otlp-meter dlq list)",
            )


def _has_cumulative(request: ExportMetricsServiceRequest) -> bool:
    """True when any sum or histogram in ``request`` is cumulative (cheap: per metric, not per point)."""
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if (
                    kind in ("sum", "histogram", "exponential_histogram")
                    and getattr(metric, kind).aggregation_temporality == _CUMULATIVE
                ):
                    return True
    return False
