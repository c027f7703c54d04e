"""The one path every input takes: rules → queue.append → result.

Receivers and sources call :class:`Pipeline`; it maps records to events with the rules engine, makes
them durable (events, dead letters for rejected records and any cursor update in one commit) and
reports what happened. It answers only after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.errors import ShuttingDownError, StateConflictError
from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue.lmdb_queue import LmdbQueue
from otlp_meter.queue.writer import PRUNE_BATCH
from otlp_meter.rules import delta
from otlp_meter.rules.delta import StreamStates
from otlp_meter.rules.engine import MappingResult, RulesEngine
from otlp_meter.telemetry.logging import ThrottledLog, get_logger
from otlp_meter.telemetry.metrics import Children, Metrics
from otlp_meter.telemetry.spec import rule_rejection_reason

log = get_logger("pipeline")

MAX_REASONS_IN_MESSAGE = 3
_MAX_DETAIL = 300
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

MAX_STATE_CONFLICTS = 5
"""Tries of one request whose streams' state another process keeps changing; then it is refused
(retryable)."""
EXPIRY_INTERVAL = 3600.0
"""Seconds between stream expiry passes (``rules.cumulative.max_staleness`` if shorter)."""
EXPIRY_BATCH = PRUNE_BATCH
"""Stream states read (so at most deleted) per transaction of an expiry pass."""


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
        self._streams_stale = False
        """Reload ``_streams`` before the next cumulative mapping (another process, or this one's
        expiry, changed what it caches)."""
        # Cumulative-to-delta reads and advances per-stream state: mapping and committing one request
        # must finish before the next request's mapping reads that state.
        self._streams_lock = asyncio.Lock()
        self._expired = metrics.rules_cumulative_streams_expired
        self._expiry: asyncio.Task[None] | None = None

    def open_streams(self) -> None:
        """Load cumulative stream state from the queue (after the queue is open; again to forget
        what is cached, e.g. after another process changed it)."""
        self._streams = self._engine.stream_states(self._queue.get_state, self._clock_ns())
        self._streams_stale = False

    async def expire_streams(self) -> int:
        """One expiry pass: delete the states of streams last seen more than
        ``rules.cumulative.max_staleness`` ago (by the pipeline's clock), in transactions of at
        most :data:`EXPIRY_BATCH` states read; returns how many. The primary alone runs it.

        Each transaction that deletes also raises the watermark (``delta.expire_streams``). An
        append mapped with a cache from before (this process's or a worker's) expects the states
        and the watermark it read, so it is refused (StateConflictError, the cache reloaded, the
        request mapped again) and no stale state is written back.
        """
        staleness_ns = int(self._engine.max_staleness * 1e9)
        if staleness_ns <= 0:
            return 0
        horizon_ns = self._clock_ns() - staleness_ns
        start: bytes | None = delta.KEY_PREFIX
        total = 0
        while start is not None:
            expired, start = await self._queue.sweep_state(partial(_expiry_plan, horizon_ns, start))
            if expired:
                total += expired
                self._expired.inc(expired)
        if total:
            log.info("cumulative_streams_expired", streams=total, last_point_before_ns=horizon_ns)
            self._streams_stale = True  # the next cumulative request reloads, and is not refused
        return total

    def start_expiry(self) -> None:
        """Run :meth:`expire_streams` every :data:`EXPIRY_INTERVAL` from now on (if
        ``max_staleness`` is set), on the running loop, until :meth:`stop_expiry`."""
        if self._expiry is None and self._engine.max_staleness > 0:
            self._expiry = asyncio.get_running_loop().create_task(
                self._expire_periodically(), name="otlp-meter-stream-expiry"
            )

    async def stop_expiry(self) -> None:
        task, self._expiry = self._expiry, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _expire_periodically(self) -> None:
        # The first pass waits one interval too: after downtime longer than max_staleness, the
        # streams still alive report (and so are kept) before anything is judged stale.
        interval = min(EXPIRY_INTERVAL, max(1.0, self._engine.max_staleness))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire_streams()
            except ShuttingDownError:
                return
            except Exception:
                log.exception("stream_expiry_failed", action=f"tried again in {interval:g}s")

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
        async with self._streams_lock:
            for _attempt in range(MAX_STATE_CONFLICTS):
                try:
                    return await self._commit_cumulative(request, state)
                except StateConflictError:
                    log.debug("stream_state_conflict", action="reloading stream state and mapping again")
                    self._streams_stale = True
            raise StateConflictError(
                f"stream state kept changing under this request ({MAX_STATE_CONFLICTS} tries); retry",
                retry_after=1.0,
            )

    async def _commit_cumulative(
        self, request: ExportMetricsServiceRequest, state: Mapping[bytes, bytes | None] | None
    ) -> IngestResult:
        """Map and commit one request with cumulative points (under the streams lock).

        Another process appending to the same queue (an intake worker) may advance the same
        streams, so the cache may be stale: the append commits only if every state the mapping
        read is still what it read (``MappingResult.state_expect``); else StateConflictError,
        nothing stored, and the caller reloads the cache and maps again.
        """
        if self._streams is None or self._streams_stale:
            self.open_streams()  # read lazily from the queue from now on
        streams = self._streams
        assert streams is not None
        mapped = self._engine.map_metrics(request, self._clock_ns(), streams)
        updates = {**(state or {}), **mapped.state_updates}
        expect = mapped.state_expect or None
        commit = asyncio.ensure_future(self._commit("metrics", mapped, updates, expect))
        try:
            result = await asyncio.shield(commit)
        except asyncio.CancelledError:
            # The caller went away; hold the lock until the commit settles either way.
            await asyncio.wait([commit])
            if commit.cancelled() or commit.exception() is not None:
                self._forget(streams, mapped.state_token)
            raise
        except BaseException:
            self._forget(streams, mapped.state_token)
            raise
        return result

    def _forget(self, streams: StreamStates, token: int | None) -> None:
        """The append failed (or may have): memory must not keep what it did not commit."""
        if token is not None:
            streams.rollback(token)
        # Whether it committed is unknown: the streams it touched are read back from the queue when
        # next seen (another process won: the caller drops the whole cache).

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
        self,
        signal: str,
        mapped: MappingResult,
        state: Mapping[bytes, bytes | None] | None,
        expect: Mapping[bytes, bytes | None] | None = None,
    ) -> IngestResult:
        if mapped.events or mapped.rejected or state:
            started = time.perf_counter()
            appended = await self._queue.append(mapped.events, mapped.rejected, state or {}, expect=expect)
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


def _expiry_plan(
    horizon_ns: int,
    start: bytes,
    get: Callable[[bytes], bytes | None],
    scan: Callable[[bytes], Iterator[tuple[bytes, bytes]]],
) -> tuple[dict[bytes, bytes | None], tuple[int, bytes | None]]:
    """One expiry transaction (inside the queue's writer): its updates, how many expired, where next."""
    expiry = delta.expire_streams(get, scan, horizon_ns, start, EXPIRY_BATCH)
    return expiry.updates, (expiry.expired, expiry.next_key)
