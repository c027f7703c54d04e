"""The writer thread: the only place that opens LMDB write transactions.

LMDB ties a write transaction to the thread that began it, and an fsync per append would cap
intake at the disk's sync rate. So one thread blocks on a queue of operations, takes *everything*
pending (up to a bounded transaction size), applies it in one transaction, commits once (synced
when configured), and only then wakes every waiter on its own event loop. Nobody is told "done"
before the commit; when the commit fails, every operation of the group fails and none of it is
visible.

Waking a loop from another thread costs a write to its self-pipe and a wake-up of the loop thread,
so the results of one commit go out as ONE ``call_soon_threadsafe`` per event loop (a callback that
settles every future of that loop, after ``on_append``), not one per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, Final

import lmdb

from otlp_meter.errors import QueueFullError, ShuttingDownError, StorageError
from otlp_meter.queue.codec import EVENTS_PER_GROUP
from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.group import Group, Refused
from otlp_meter.queue.ledger import Handles, Ledger, read_counters
from otlp_meter.queue.ops import AppendOp, Op, PruneOp
from otlp_meter.telemetry.logging import ThrottledLog, get_logger

__all__ = ["GROUP_MAX_BYTES", "PRUNE_BATCH", "PRUNE_INTERVAL", "Group", "Writer"]  # Group: moved, kept here

log = get_logger("queue")


GROUP_MAX_BYTES = 32 * 1024 * 1024
"""Bound on what one transaction writes: LMDB keeps a write transaction's dirty pages in memory
and fails it beyond ~131k pages (512 MiB). Ops beyond the bound wait for the next commit."""

PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 10_000
"""Dedupe keys forgotten per transaction, so pruning never holds up appends for long."""

_STOP: Final = object()


class Writer:
    """Owns the writer thread. ``submit`` from any thread; ``stop`` finishes what was submitted."""

    def __init__(
        self,
        handles: Handles,
        config: QueueConfig,
        ledger: Ledger,
        clock: Callable[[], float],
        on_append: Callable[[], None] | None,
        on_commit: Callable[[float, int], None] | None = None,
        group_events: int = EVENTS_PER_GROUP,
    ) -> None:
        self._h = handles
        self._group_events = group_events
        self._config = config
        self._ledger = ledger
        self._clock = clock
        self._on_append = on_append
        self._on_commit = on_commit
        self._inbox: queue.SimpleQueue[Op[Any] | object] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._closed = False
        self._pending: deque[Op[Any]] = deque()
        self._next_prune = time.monotonic() + PRUNE_INTERVAL
        # At the key limit every commit evicts (tens per second): one line per interval, with the
        # keys evicted since the last line.
        self._evictions_log = ThrottledLog(log, "queue_dedupe_keys_evicted")
        self._evicted_unlogged = 0
        self._thread = threading.Thread(target=self._run, name="otlp-meter-queue-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Taking operations: started and not stopped or crashed."""
        return self._thread.is_alive() and not self._closed

    def submit(self, op: Op[Any]) -> None:
        with self._submit_lock:
            if self._closed:
                raise ShuttingDownError("the queue is closed")
            self._inbox.put(op)

    def stop(self) -> None:
        """Refuse new operations, let the thread commit everything already submitted, join it."""
        with self._submit_lock:
            if not self._closed:
                self._closed = True
                self._inbox.put(_STOP)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    # -- the thread --

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.exception("queue_writer_crashed", consequence="the queue refuses all writes from now on")
        finally:
            with self._submit_lock:
                self._closed = True
            self._fail_leftovers()

    def _loop(self) -> None:
        pending = self._pending
        stopping = False
        while True:
            if not pending and not stopping:
                stopping = self._take(pending, self._wait_timeout())
            stopping = self._drain(pending) or stopping
            prune_now = not stopping and self._prune_due()
            if not pending and not prune_now:
                if stopping:
                    return
                continue
            group: list[Op[Any]] = []
            size = 0
            while pending and (not group or size + pending[0].cost() <= GROUP_MAX_BYTES):
                op = pending.popleft()
                size += op.cost()
                group.append(op)
            prune = PruneOp(now=None, limit=PRUNE_BATCH) if prune_now else None
            if prune is not None:
                # An admin command killed mid-read leaves a reader slot that would pin old pages
                # (and so grow the file) until the next restart; free such slots as we go.
                with contextlib.suppress(lmdb.Error):
                    self._h.env.reader_check()
                group.append(prune)
            self._commit(group)
            if prune is not None:
                # A full batch means more keys are due: go again soon, between the appends.
                wait = 0.0 if prune.removed >= PRUNE_BATCH else PRUNE_INTERVAL
                self._next_prune = time.monotonic() + wait

    def _take(self, pending: deque[Op[Any]], timeout: float | None) -> bool:
        """Wait for one item; True if it is the stop sentinel."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return False
        if item is _STOP:
            return True
        assert isinstance(item, Op)
        pending.append(item)
        return False

    def _drain(self, pending: deque[Op[Any]]) -> bool:
        """Take everything already submitted; True if that includes the stop sentinel."""
        stop = False
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return stop
            if item is _STOP:
                stop = True
            else:
                assert isinstance(item, Op)
                pending.append(item)

    # Pruning runs even with deduplication switched off, so keys from before that still expire.
    def _wait_timeout(self) -> float:
        return max(0.0, self._next_prune - time.monotonic())

    def _prune_due(self) -> bool:
        return time.monotonic() >= self._next_prune

    def _commit(self, ops: list[Op[Any]]) -> None:
        started = time.perf_counter()
        try:
            group, outcomes = self._apply(ops)
        except Exception as exc:
            failure = _commit_failure(exc)
            growing = [op for op in ops if op.grows]
            rest = [op for op in ops if not op.grows]
            if not (_is_space_failure(exc) and growing):
                log.exception("queue_commit_failed", operations=len(ops), error=repr(exc))
                _settle_all_threadsafe((op, None, failure()) for op in ops)
                return
            # Out of space: what only deletes (acks above all) must still get through, or a full
            # disk could never drain. The growing operations fail retryably; their senders retry.
            log.warning("queue_storage_full", error=str(exc), refused=len(growing), retrying=len(rest))
            self._mark_full(ops)
            _settle_all_threadsafe((op, None, failure()) for op in growing)
            if rest:
                self._commit(rest)
            return
        if self._on_commit is not None:  # before the waiters are answered: metrics never lag them
            try:
                self._on_commit(time.perf_counter() - started, len(ops))
            except Exception:  # an observer's bug must not stop the queue
                log.exception("queue_commit_observer_failed")
        self._publish(group, ops, outcomes)

    def _apply(self, ops: list[Op[Any]]) -> tuple[Group, list[tuple[Op[Any], Any, Refused | None]]]:
        """Apply ``ops`` in one transaction and commit it; raises (nothing visible) if LMDB fails."""
        outcomes: list[tuple[Op[Any], Any, Refused | None]] = []
        txn = self._h.env.begin(write=True)
        try:
            # Read back inside the transaction: another process (an admin command) may have
            # committed since our last one, and writers are serialized, so this is exact.
            with self._ledger.lock:
                known = self._ledger.counters.copy()
            counters = read_counters(txn, self._h) or known
            group = Group(txn, self._h, self._config, counters, self._clock(), self._group_events)
            for op in ops:
                try:
                    outcomes.append((op, op.apply(group), None))
                except Refused as refused:
                    outcomes.append((op, None, refused))
            group.finish()
            with self._ledger.lock:
                deleted = sum(map(self._ledger.leased.__contains__, group.removed_seqs))
                self._ledger.unpublished = (txn.id(), deleted) if deleted else None
            txn.commit()
        except BaseException:
            txn.abort()
            with self._ledger.lock:
                self._ledger.unpublished = None
            raise
        return group, outcomes

    def _publish(
        self, group: Group, ops: list[Op[Any]], outcomes: list[tuple[Op[Any], Any, Refused | None]]
    ) -> None:
        """The committed group: the ledger updated, then every waiter answered (even if updating
        the ledger failed: what committed is durable, and its senders must not wait forever)."""
        try:
            self._record(group, ops, outcomes)
        finally:
            settled = ((op, result, None if no is None else no.error) for op, result, no in outcomes)
            _settle_all_threadsafe(settled, self._on_append, group.appended_loops)

    def _record(
        self, group: Group, ops: list[Op[Any]], outcomes: list[tuple[Op[Any], Any, Refused | None]]
    ) -> None:
        ledger = self._ledger
        with ledger.lock:
            ledger.counters = group.counters
            ledger.deduplicated_total += group.deduplicated
            pruned = sum(op.removed for op in ops if isinstance(op, PruneOp))
            ledger.expired_dedupe_total += pruned
            ledger.evicted_dedupe_total += group.evicted
            ledger.commits_total += 1
            # Forget the leases of what was deleted: map() runs the pops in C, one per event.
            deque(map(ledger.leased.pop, group.removed_seqs, repeat(None)), maxlen=0)
            ledger.unpublished = None
            ledger.quarantining.difference_update(group.quarantined)
            if any(refused is not None and refused.full for _, _, refused in outcomes):
                ledger.full_at_size = group.counters.size
            elif group.appended or (ledger.full_at_size == 0 and pruned):
                # Refused with nothing queued (the room went to dedupe keys): no drain can clear it,
                # expired keys may have; the next append finds out (and marks it full again if not).
                ledger.full_at_size = None
        if group.evicted:
            self._evicted_unlogged += group.evicted
            if self._evictions_log.warning(
                "limit",
                limit=self._config.dedupe_max_keys,
                evicted=self._evicted_unlogged,
                consequence="these keys were forgotten before their dedupe window ended",
            ):
                self._evicted_unlogged = 0

    def _mark_full(self, ops: list[Op[Any]]) -> None:
        if any(isinstance(op, AppendOp) for op in ops):
            with self._ledger.lock:
                self._ledger.full_at_size = self._ledger.counters.size

    def _fail_leftovers(self) -> None:
        left: list[Op[Any]] = list(self._pending)
        self._pending.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Op):
                left.append(item)
        _settle_all_threadsafe((op, None, ShuttingDownError("the queue is closed")) for op in left)


def _is_space_failure(exc: Exception) -> bool:
    """MapFullError: the map (queue.map_size) is exhausted; DiskError: ENOSPC from the filesystem."""
    return isinstance(exc, lmdb.MapFullError | lmdb.DiskError)


def _commit_failure(exc: Exception) -> Callable[[], Exception]:
    """One fresh exception per waiter (an exception object must not be raised in many tasks)."""
    if _is_space_failure(exc):
        message = f"queue storage is full: {exc}"
        return lambda: QueueFullError(message)
    message = f"queue storage failed: {exc}"
    return lambda: StorageError(message)


class _LoopBatch:
    """What one commit has for one event loop: ``on_append`` to call first, then futures to settle."""

    __slots__ = ("on_append", "settle")

    def __init__(self, on_append: Callable[[], None] | None = None) -> None:
        self.on_append = on_append
        self.settle: list[tuple[asyncio.Future[Any], Any, Exception | None]] = []

    def run(self) -> None:
        """On the loop's own thread: everything of this commit for it, in one callback."""
        try:
            if self.on_append is not None:
                self.on_append()
        finally:
            for future, result, error in self.settle:
                _settle(future, result, error)


def _settle_all_threadsafe(
    settlements: Iterable[tuple[Op[Any], Any, Exception | None]],
    on_append: Callable[[], None] | None = None,
    appended_loops: Iterable[asyncio.AbstractEventLoop] = (),
) -> None:
    """Settle the ops' futures (result or error each) with one ``call_soon_threadsafe`` per event
    loop; ``on_append`` runs first on each of ``appended_loops`` (it wakes the exporter)."""
    batches: dict[asyncio.AbstractEventLoop, _LoopBatch] = {}
    if on_append is not None:
        for appended in appended_loops:
            batches[appended] = _LoopBatch(on_append)
    for op, result, error in settlements:
        future, loop = op.future, op.loop
        if future is None or loop is None:
            continue
        batch = batches.get(loop)
        if batch is None:
            batch = batches[loop] = _LoopBatch()
        batch.settle.append((future, result, error))
    for target, batch in batches.items():
        _call_soon_threadsafe(target, batch.run)


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():  # the waiter was cancelled; the operation itself still happened (or not)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(callback, *args)
