"""Delivery: lease batches from the queue, send them through a sink, ack, retry or dead-letter.

Every leased event ends *delivered* (acked), *dead-lettered* (refused by the server, or expired
under an optional ``max_elapsed``) or *released* (shutdown before delivery: it stays on disk and is
sent after restart with the same id). Nothing is dropped.

Time has two sources on purpose: batching (``flush_interval``) waits on the event loop's own clock,
while the retry policy (backoff waits, ``max_elapsed``) uses the injected ``clock`` and ``sleep`` so
tests can run hours of backoff in virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from itertools import chain

from otlp_meter.errors import RetryableError
from otlp_meter.exporters.config import ExporterConfig
from otlp_meter.exporters.retry import Backoff, Verdict, status_class
from otlp_meter.exporters.sink import SendResult, Sink
from otlp_meter.queue.lmdb_queue import LeasedBatch, LmdbQueue
from otlp_meter.telemetry.logging import ThrottledLog, get_logger
from otlp_meter.telemetry.metrics import Metrics

log = get_logger("exporter")

Sleep = Callable[[float], Awaitable[None]]

# After a 413 the batch byte budget halves, but never below this (or the configured budget, if
# smaller): a server limit that low is better met by splitting than by ever-tinier batches.
MIN_BATCH_BYTES = 64 * 1024
# The queue counted events that it could not lease (a corrupt record being moved aside): look again
# after this long instead of spinning.
_RECHECK_INTERVAL = 0.05
# Appends in this process wake the exporter; a replay by `otlp-meter dlq replay` (another process)
# cannot, so an idle exporter also looks at the queue's committed depth this often.
_IDLE_RECHECK_INTERVAL = 1.0


class Stopping(Exception):
    """Raised inside a delivery when shutdown interrupts a wait or would start a new request."""


class Exporter:
    """Moves events from the queue to a sink: up to ``max_in_flight`` batches at a time.

    ``start()`` on the running loop; ``notify()`` after each commit that added events;
    ``stop(deadline)`` at shutdown. ``backoff``, ``clock`` (monotonic seconds) and ``sleep`` are the
    retry policy's seams; tests inject them to run without real waiting.
    """

    def __init__(
        self,
        queue: LmdbQueue,
        sink: Sink,
        config: ExporterConfig,
        metrics: Metrics,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._queue = queue
        self._sink = sink
        self._config = config
        self._metrics = metrics
        self._refused_log = ThrottledLog(log, "exporter_event_refused")  # one poison batch → many lines
        self._backoff = backoff or Backoff(config.retry)
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._in_flight: dict[asyncio.Task[None], LeasedBatch] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._max_bytes = config.batch.max_bytes

    @property
    def max_batch_bytes(self) -> int:
        """The current byte budget of one batch (``max_bytes``, lowered after a 413)."""
        return self._max_bytes

    def notify(self) -> None:
        """Called after each commit that added events."""
        self._wake.set()

    def start(self) -> None:
        """Start leasing and delivering on the running event loop."""
        self._loop_task = asyncio.create_task(self._run(), name="exporter")

    async def stop(self, deadline: float) -> None:
        """Stop leasing; requests already on the wire get ``deadline`` seconds; release what is left.

        No new request starts once stopping (not a retry, not the next half of a split): a pending
        backoff ends at once, and undelivered events stay in the queue, leased by nobody, for the
        next start.
        """
        self._stop.set()
        self._wake.set()
        if self._loop_task is not None:
            # Cancelling is safe: the leasing loop holds no lease across an await (lease → create
            # task has no suspension point), and waiting for it could mean waiting for a free slot,
            # i.e. for the slowest in-flight request, past the deadline.
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None  # its traceback would pin the last delivery task (and its errors)
        in_flight = dict(self._in_flight)
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # A delivery cancelled before its first step never ran its own cleanup. Releasing is a
        # no-op for events acked or dead-lettered meanwhile.
        for batch in in_flight.values():
            self._queue.release(batch.seqs)
        await self._sink.close()

    # -- leasing ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except Exception:  # e.g. an LMDB read error: the exporter must outlive it
                self._slots.release()
                log.exception("exporter_lease_failed", retry_in=self._config.retry.max_backoff)
                await self._pause_quietly(self._config.retry.max_backoff)
                continue
            if not batch:
                self._slots.release()
                break
            task = asyncio.create_task(self._deliver(batch), name="exporter-delivery")
            self._in_flight[task] = batch
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)

    async def _next_batch(self) -> LeasedBatch:
        """Wait until a full batch is available or the oldest waiting event is ``flush_interval`` old."""
        loop = asyncio.get_running_loop()
        batch_size = self._config.batch.max_events
        first_seen: float | None = None
        while not self._stop.is_set():
            self._wake.clear()
            available = self._queue.available()
            if available <= 0:
                first_seen = None
                await self._wait_wake(_IDLE_RECHECK_INTERVAL)
                continue
            now = loop.time()
            first_seen = now if first_seen is None else first_seen
            remaining = first_seen + self._config.batch.flush_interval - now
            if available >= batch_size or remaining <= 0:
                batch = self._queue.lease(batch_size, self._max_bytes)
                if batch:
                    return batch
                first_seen = None
                await self._wait_wake(_RECHECK_INTERVAL)
                continue
            await self._wait_wake(remaining)
        return LeasedBatch()

    async def _wait_wake(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- delivering ------------------------------------------------------------------------------

    async def _deliver(self, batch: LeasedBatch) -> None:
        name = self._sink.name
        started = time.perf_counter()
        self._metrics.exporter_batches_created.labels(name).inc()
        self._metrics.exporter_in_flight.labels(name).inc()
        settled: list[list[int]] = []  # the seqs of each part acked or dead-lettered (disjoint)
        try:
            await self._settle(batch, settled)
        except Stopping:
            pass
        except RetryableError as exc:  # the queue could not take the ack or dead letter (e.g. full)
            log.warning(
                "exporter_queue_unavailable",
                error=str(exc),
                events=len(batch) - sum(map(len, settled)),
                retry_in=self._config.retry.max_backoff,
            )
            await self._pause_quietly(self._config.retry.max_backoff)
        except Exception:  # a bug must not lose events: they are released and re-sent
            log.exception("exporter_delivery_crashed", events=len(batch))
            await self._pause_quietly(self._config.retry.max_backoff)
        finally:
            unsettled = _unsettled(batch, settled)
            if unsettled:
                self._queue.release(unsettled)
                self._wake.set()  # released events are available again; the leasing loop may be idle
            self._metrics.exporter_in_flight.labels(name).dec()
            self._metrics.exporter_batch_duration.labels(name).observe(time.perf_counter() - started)
            self._slots.release()

    async def _settle(self, events: LeasedBatch, settled: list[list[int]]) -> None:
        """Send ``events`` until each is acked or dead-lettered (or shutdown interrupts).

        Per batch, not per event: the body is joined from the leased payloads as stored, the ack
        takes the batch's list of seqs, and the accounting counts the batch.
        """
        name = self._sink.name
        attempt = 0
        first_attempt = self._clock()
        payloads = events.payloads
        while True:
            if self._stop.is_set():
                raise Stopping
            started = time.perf_counter()
            result = await self._sink.send(payloads)
            self._metrics.exporter_request_duration.labels(name).observe(time.perf_counter() - started)
            if attempt:
                self._metrics.exporter_retries.labels(name).inc()
            attempt += 1
            if result.verdict is Verdict.DELIVERED:
                await self._queue.ack(events.seqs)
                settled.append(events.seqs)
                self._metrics.exporter_sent_events.labels(name).inc(len(events))
                self._metrics.exporter_sent_batches.labels(name).inc()
                self._metrics.exporter_last_success.labels(name).set(time.time())
                return
            self._metrics.exporter_failed_requests.labels(name, status_class(result.status)).inc()
            if result.verdict is Verdict.REFUSED:
                if result.status == 413:
                    self._shrink_batches()
                await self._isolate(events, result, settled)
                return
            if result.verdict is Verdict.AUTH:
                # Never expires under max_elapsed: a wrong token is fixed by an operator, and the
                # events must still be there when it is; nor does the time spent waiting for it
                # count towards max_elapsed afterwards (the clock restarts after each pause).
                log.error(
                    "exporter_unauthorized",
                    status=result.status,
                    events=len(events),
                    hint="OpenMeter refused the token: check OPENMETER_TOKEN / exporter.openmeter.token; "
                    "events are kept and retried",
                    retry_in=self._config.retry.auth_backoff,
                )
                await self._pause(self._config.retry.auth_backoff)
                first_attempt = self._clock()
                continue
            if self._backoff.expired(first_attempt, self._clock()):
                answer = result.status if result.status is not None else "no answer"
                reason = f"gave up after {attempt} attempts (max_elapsed): {answer} {result.detail}"
                log.error("exporter_gave_up", events=len(events), attempts=attempt, error=result.detail[:200])
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

    def _shrink_batches(self) -> None:
        """413: the server's body limit is below our budget, so later batches get half the bytes."""
        floor = min(MIN_BATCH_BYTES, self._config.batch.max_bytes)
        smaller = max(floor, self._max_bytes // 2)
        if smaller < self._max_bytes:
            log.warning("exporter_batch_bytes_reduced", max_bytes=smaller, previous=self._max_bytes)
            self._max_bytes = smaller

    async def _isolate(self, events: LeasedBatch, result: SendResult, settled: list[list[int]]) -> None:
        """The server refused the batch: split it to deliver the good events and dead-letter the bad."""
        if len(events) == 1:
            reason = f"refused by OpenMeter with {result.status}: {result.detail}"
            self._refused_log.warning(
                str(result.status), status=result.status, id=events[0].id, detail=result.detail[:500]
            )
            await self._dead_letter(events, reason, settled)
            return
        self._metrics.exporter_splits.labels(self._sink.name).inc()
        middle = len(events) // 2
        for half in (events[:middle], events[middle:]):
            await self._settle(half, settled)

    async def _dead_letter(self, events: LeasedBatch, reason: str, settled: list[list[int]]) -> None:
        await self._queue.dead_letter([(e, reason) for e in events])
        settled.append(events.seqs)
        self._metrics.exporter_dead_lettered_events.labels(self._sink.name).inc(len(events))

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` unless shutdown starts first (then raise :class:`Stopping`).

        Always goes through ``sleep``, even for 0 s: a sink that fails without suspending must not
        turn the retry loop into one that never yields to the event loop.
        """
        if not self._stop.is_set():
            sleeper = asyncio.ensure_future(self._sleep(max(0.0, seconds)))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                stopper.cancel()
                await asyncio.gather(sleeper, stopper, return_exceptions=True)
        if self._stop.is_set():
            raise Stopping

    async def _pause_quietly(self, seconds: float) -> None:
        with contextlib.suppress(Stopping):
            await self._pause(seconds)


def _unsettled(batch: LeasedBatch, settled: list[list[int]]) -> list[int]:
    """The seqs of ``batch`` in none of the ``settled`` parts (disjoint parts of it)."""
    if sum(map(len, settled)) >= len(batch):
        return []
    done = set(chain.from_iterable(settled))
    return [seq for seq in batch.seqs if seq not in done]
