"""Delivery: lease batches from the queue, send them through a sink, ack, retry or dead-letter.

Every leased event ends *delivered* (acked), *dead-lettered* (refused by the server, or expired
under an optional ``max_elapsed``) or *released* (shutdown before delivery: it stays on disk and is
sent after restart with the same id). Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from otlp_meter.exporters.config import ExporterConfig
from otlp_meter.exporters.retry import Backoff, Verdict, status_class
from otlp_meter.exporters.sink import SendResult, Sink
from otlp_meter.queue.lmdb_queue import LeasedEvent, LmdbQueue
from otlp_meter.telemetry.logging import get_logger
from otlp_meter.telemetry.metrics import Metrics

log = get_logger("exporter")


class Stopping(Exception):
    """Raised inside a delivery when shutdown interrupts a wait."""


class Exporter:
    def __init__(
        self,
        queue: LmdbQueue,
        sink: Sink,
        config: ExporterConfig,
        metrics: Metrics,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._sink = sink
        self._config = config
        self._metrics = metrics
        self._backoff = backoff or Backoff(config.retry)
        self._clock = clock
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._max_bytes = config.batch.max_bytes

    def notify(self) -> None:
        """Called after each commit that added events."""
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="exporter")

    async def stop(self, deadline: float) -> None:
        """Stop leasing; give in-flight deliveries ``deadline`` seconds; release what is left."""
        self._stop.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._sink.close()

    # -- leasing ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._slots.acquire()
            batch = await self._next_batch()
            if not batch:
                self._slots.release()
                break
            task = asyncio.create_task(self._deliver(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _next_batch(self) -> list[LeasedEvent]:
        """Wait until a full batch is available or the oldest waiting event is ``flush_interval`` old."""
        batch_size = self._config.batch.max_events
        first_seen: float | None = None
        while not self._stop.is_set():
            self._wake.clear()
            stats = self._queue.stats()
            available = stats.depth - stats.leased
            if available <= 0:
                first_seen = None
                await self._wait_wake(None)
                continue
            now = self._clock()
            first_seen = now if first_seen is None else first_seen
            remaining = first_seen + self._config.batch.flush_interval - now
            if available >= batch_size or remaining <= 0:
                batch = self._queue.lease(batch_size, self._max_bytes)
                if batch:
                    return batch
                first_seen = None
                continue
            await self._wait_wake(remaining)
        return []

    async def _wait_wake(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- delivering ------------------------------------------------------------------------------

    async def _deliver(self, batch: list[LeasedEvent]) -> None:
        name = self._sink.name
        self._metrics.exporter_in_flight.labels(name).inc()
        settled: set[int] = set()
        try:
            await self._settle(batch, settled)
        except Stopping:
            pass
        except Exception:  # a bug must not lose events: they are released and re-sent
            log.exception("exporter_delivery_crashed", events=len(batch))
            await self._pause(self._config.retry.max_backoff)
        finally:
            unsettled = [e.seq for e in batch if e.seq not in settled]
            if unsettled:
                self._queue.release(unsettled)
            self._metrics.exporter_in_flight.labels(name).dec()
            self._slots.release()

    async def _settle(self, events: Sequence[LeasedEvent], settled: set[int]) -> None:
        """Send ``events`` until each is acked or dead-lettered (or shutdown interrupts)."""
        name = self._sink.name
        attempt = 0
        first_attempt = self._clock()
        while True:
            if attempt and self._stop.is_set():
                raise Stopping
            started = time.perf_counter()
            result = await self._sink.send([e.payload for e in events])
            self._metrics.exporter_request_duration.labels(name).observe(time.perf_counter() - started)
            if attempt:
                self._metrics.exporter_retries.labels(name).inc()
            attempt += 1
            if result.verdict is Verdict.DELIVERED:
                await self._queue.ack([e.seq for e in events])
                settled.update(e.seq for e in events)
                self._metrics.exporter_sent_events.labels(name).inc(len(events))
                self._metrics.exporter_sent_batches.labels(name).inc()
                self._metrics.exporter_last_success.labels(name).set(time.time())
                return
            self._metrics.exporter_failed_requests.labels(name, status_class(result.status)).inc()
            if result.verdict is Verdict.REFUSED:
                await self._isolate(events, result, settled)
                return
            if result.verdict is Verdict.AUTH:
                log.error(
                    "exporter_unauthorized",
                    status=result.status,
                    hint="OpenMeter refused the token: check OPENMETER_TOKEN / exporter.openmeter.token; "
                    "events are kept and retried",
                    retry_in=self._config.retry.auth_backoff,
                )
                await self._pause(self._config.retry.auth_backoff)
                continue
            if self._backoff.expired(first_attempt, self._clock()):
                reason = f"gave up after {attempt} attempts (max_elapsed): {result.status} {result.detail}"
                await self._dead_letter(events, reason, settled)
                return
            delay = self._backoff.delay(attempt, result.retry_after)
            log.warning(
                "exporter_retry",
                status=result.status,
                error=result.detail[:200],
                events=len(events),
                attempt=attempt,
                retry_in=round(delay, 3),
            )
            await self._pause(delay)

    async def _isolate(self, events: Sequence[LeasedEvent], result: SendResult, settled: set[int]) -> None:
        """The server refused the batch: split it to deliver the good events and dead-letter the bad."""
        if len(events) == 1:
            reason = f"refused by OpenMeter with {result.status}: {result.detail}"
            log.warning(
                "exporter_event_refused", status=result.status, id=events[0].id, detail=result.detail[:500]
            )
            await self._dead_letter(events, reason, settled)
            return
        self._metrics.exporter_splits.labels(self._sink.name).inc()
        middle = len(events) // 2
        for half in (events[:middle], events[middle:]):
            await self._settle(half, settled)

    async def _dead_letter(self, events: Sequence[LeasedEvent], reason: str, settled: set[int]) -> None:
        await self._queue.dead_letter([(e, reason) for e in events])
        settled.update(e.seq for e in events)
        self._metrics.exporter_dead_lettered_events.labels(self._sink.name).inc(len(events))

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless shutdown starts first (then raise :class:`Stopping`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise Stopping
