"""The tick loop of a periodic source: each aligned interval once, its cursor committed with its events.

A tick is the interval ``[end - interval, end)`` named by its ``end`` (a multiple of ``interval``, Unix
seconds). The cursor — the end of the last committed tick — is written in the same transaction as the
tick's events, so a tick is billed exactly once across crashes and restarts. A tick runs ``delay``
seconds after it ends (the data behind it arrives late). After downtime the missed ticks run oldest
first, at most ``max_catch_up`` of them; older ones are skipped, logged and counted, never silently.

Failures never skip a tick: a producer error keeps the cursor, waits with backoff and computes the
same tick again; a sink that refuses for now (``RetryableError``: queue full, shutting down) is
offered the same request again (:func:`~otlp_meter.sources.base.deliver`).

Counters (``SourceStats``): ``ticks_completed``, ``ticks_caught_up`` (run late, after downtime),
``ticks_skipped``, ``ticks_failed``, ``ticks_waiting`` (producer not ready), ``commits_retried``,
``points``, ``points_rejected``; gauge ``cursor_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.sources.base import (
    WALL_CLOCK,
    BackoffConfig,
    Clock,
    SourceSink,
    SourceStats,
    Wait,
    aligned_ticks,
    cursor_key,
    deliver,
    wait_or_stop,
)
from otlp_meter.telemetry.logging import get_logger

log = get_logger("sources.ticks")

Produce = Callable[[float, float], Awaitable[ExportMetricsServiceRequest]]
"""``produce(start, end)``: the OTLP request of one tick."""


class NotReady(Exception):  # a state to wait out, not an error
    """The producer cannot compute the tick yet (e.g. its cache is not synced); try again shortly."""


def encode_tick(end: float) -> bytes:
    """The cursor value: whole seconds as decimal text."""
    return str(int(end)).encode()


def decode_tick(raw: bytes | None) -> float | None:
    """The cursor value back; None when absent or unreadable (logged: the source then starts afresh)."""
    if raw is None:
        return None
    try:
        value = float(raw.decode())
    except (UnicodeDecodeError, ValueError):
        log.error("tick_cursor_unreadable", value=raw[:64].decode("utf-8", "replace"))
        return None
    return value if math.isfinite(value) else None


def iso(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC text (logs)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TickLoop:
    """Runs ``produce`` for each due tick and commits its request with the cursor. ``interval`` and
    ``delay`` are whole seconds (ticks read back from the cursor are then exactly the floats
    :func:`~otlp_meter.sources.base.aligned_ticks` computes)."""

    kind: str
    name: str
    interval: float
    delay: float
    max_catch_up: int
    produce: Produce
    stats: SourceStats
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    clock: Clock = WALL_CLOCK
    wait: Wait = wait_or_stop
    not_ready_wait: float = 1.0
    on_committed: Callable[[float], None] = lambda end: None

    def __post_init__(self) -> None:
        self.key = cursor_key(self.kind, self.name, "tick")

    def last_done(self, sink: SourceSink) -> float | None:
        """The end of the last committed tick, from the queue's state."""
        return decode_tick(sink.get_state(self.key))

    async def run(self, sink: SourceSink, stop: asyncio.Event) -> None:
        """Until ``stop``: run the due ticks, then sleep until the next one is due."""
        while not stop.is_set():
            last = self.last_done(sink)
            plan = aligned_ticks(last, self.clock() - self.delay, self.interval, self.max_catch_up)
            if plan.skipped:
                self.stats.add("ticks_skipped", plan.skipped)
                log.warning(
                    "source_ticks_skipped",
                    kind=self.kind,
                    source=self.name,
                    skipped=plan.skipped,
                    after=iso(last) if last is not None else None,
                    resumed_at=iso(plan.due[0]),
                    hint="downtime beyond max_catch_up ticks; raise it to catch up further",
                )
            late = len(plan.due) > 1
            if late:
                log.warning(
                    "source_ticks_catching_up",
                    kind=self.kind,
                    source=self.name,
                    ticks=len(plan.due),
                    first=iso(plan.due[0]),
                )
            start = None if plan.skipped else last  # after a change of interval: not on the grid
            for end in plan.due:
                # The interval [end - interval, end); the first one after a tick off the grid
                # starts where that tick ended (nothing billed twice, nothing left out).
                begin = end - self.interval if start is None else max(end - self.interval, start)
                if not await self._run_tick(sink, stop, end, late, begin):
                    return
                start = None
            if (last := self.last_done(sink)) is not None:
                self.stats.set("cursor_lag_seconds", max(0.0, self.clock() - last))
            next_due = (math.floor((self.clock() - self.delay) / self.interval) + 1) * self.interval
            if await self.wait(stop, max(0.0, next_due + self.delay - self.clock())):
                return

    async def _run_tick(
        self, sink: SourceSink, stop: asyncio.Event, end: float, late: bool, start: float
    ) -> bool:
        """Compute and commit the tick ``[start, end)``; False when stopping first."""
        delays = self.backoff.delays()
        while not stop.is_set():
            try:
                request = await self.produce(start, end)
                result = await deliver(
                    functools.partial(sink.metrics, request, {self.key: encode_tick(end)}),
                    stop,
                    backoff=self.backoff,
                    wait=self.wait,
                    on_retry=functools.partial(self._busy, end),
                )
            except NotReady as reason:
                self.stats.add("ticks_waiting")
                log.info(
                    "source_tick_waiting", kind=self.kind, source=self.name, tick=iso(end), reason=str(reason)
                )
                if await self.wait(stop, self.not_ready_wait):
                    return False
                continue
            except Exception as error:  # any failure: keep the cursor, back off, compute the tick again
                delay = next(delays)
                self.stats.add("ticks_failed")
                log.warning(
                    "source_tick_failed",
                    kind=self.kind,
                    source=self.name,
                    tick=iso(end),
                    error=f"{type(error).__name__}: {error}",
                    retry_in=round(delay, 3),
                )
                if await self.wait(stop, delay):
                    return False
                continue
            if result is None:
                return False
            self.stats.add("ticks_completed")
            self.stats.add("ticks_caught_up", int(late))
            self.stats.add("points", result.records)
            self.stats.add("points_rejected", result.rejected)
            if result.rejected:
                log.warning(
                    "source_points_rejected",
                    kind=self.kind,
                    source=self.name,
                    tick=iso(end),
                    rejected=result.rejected,
                    reasons=result.message,
                )
            log.debug(
                "source_tick_done", kind=self.kind, source=self.name, tick=iso(end), points=result.records
            )
            self.on_committed(end)
            return True
        return False

    def _busy(self, end: float, error: Exception, delay: float) -> None:
        self.stats.add("commits_retried")
        log.warning(
            "source_commit_retry",
            kind=self.kind,
            source=self.name,
            tick=iso(end),
            error=str(error),
            retry_in=delay,
        )
