"""The writer thread: the only place that opens LMDB write transactions.

LMDB ties a write transaction to the thread that began it, and an fsync per append would cap
intake at the disk's sync rate. So one thread blocks on a queue of operations, takes *everything*
pending (up to a bounded transaction size), applies it in one transaction, commits once (synced
when configured), and only then wakes every waiter on its own event loop. Nobody is told "done"
before the commit; when the commit fails, every operation of the group fails and none of it is
visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import lmdb

from otlp_meter.errors import QueueFullError, ShuttingDownError, StorageError
from otlp_meter.queue import codec
from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.ledger import Counters, Handles, Ledger, store_counters
from otlp_meter.queue.ops import Op, PruneOp, Refused
from otlp_meter.telemetry.logging import get_logger

log = get_logger("queue")


GROUP_MAX_BYTES = 32 * 1024 * 1024
"""Bound on what one transaction writes: LMDB keeps a write transaction's dirty pages in memory
and fails it beyond ~131k pages (512 MiB). Ops beyond the bound wait for the next commit."""

PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 10_000
"""Dedupe keys forgotten per transaction, so pruning never holds up appends for long."""

_STOP: Final = object()


class Group:
    """One write transaction shared by a group of operations, and what they changed."""

    def __init__(
        self, txn: lmdb.Transaction[bytes], h: Handles, config: QueueConfig, counters: Counters, now: float
    ) -> None:
        self.txn = txn
        self.h = h
        self.config = config
        self.counters = counters
        self._initial = counters.copy()
        self.now_ns = int(now * 1e9)
        self.dedupe = config.dedupe_enabled
        self.dedupe_expiry_ns = self.now_ns + int(config.dedupe_window * 1e9)
        self.max_key_size = h.env.max_key_size()
        self.deduplicated = 0
        self.expired = 0
        self.evicted = 0
        self.removed_seqs: list[int] = []
        self.quarantined: list[bytes] = []
        self.appended_loops: set[asyncio.AbstractEventLoop] = set()

    # -- checks (no writes) --

    def is_duplicate(self, key: bytes) -> bool:
        value = self.txn.get(key, db=self.h.dedupe)
        return value is not None and codec.decode_expiry(value) > self.now_ns

    def check_room(self, event_bytes: int, dead_bytes: int) -> None:
        if event_bytes and self.counters.size + event_bytes > self.config.max_bytes:
            raise Refused(
                QueueFullError(
                    f"queue full: {self.counters.size} of {self.config.max_bytes} bytes used, "
                    f"{event_bytes} more needed"
                )
            )
        if dead_bytes and self.counters.dead_size + dead_bytes > self.config.dead_letter_max_bytes:
            raise Refused(
                QueueFullError(
                    f"dead-letter store full: {self.counters.dead_size} of "
                    f"{self.config.dead_letter_max_bytes} bytes used; inspect and purge it",
                    retry_after=30.0,
                )
            )

    # -- writes --

    def put_event(self, record: bytes) -> None:
        seq = self.counters.next_seq
        self.txn.put(codec.seq_key(seq), record, append=True, db=self.h.events)
        self.counters.next_seq = seq + 1
        self.counters.depth += 1
        self.counters.size += len(record)

    def delete_event(self, seq: int) -> None:
        raw = self.txn.pop(codec.seq_key(seq), db=self.h.events)
        if raw is not None:
            self.counters.depth -= 1
            self.counters.size -= len(raw)
            self.removed_seqs.append(seq)

    def put_dead(self, record: bytes) -> None:
        seq = self.counters.next_dead_seq
        self.txn.put(codec.seq_key(seq), record, append=True, db=self.h.dead)
        self.counters.next_dead_seq = seq + 1
        self.counters.dead_count += 1
        self.counters.dead_size += len(record)

    def remember(self, key: bytes) -> None:
        """Record a dedupe key until the end of the window (replacing an expired entry)."""
        old = self.txn.replace(key, codec.encode_expiry(self.dedupe_expiry_ns), db=self.h.dedupe)
        if old is not None:
            self.txn.delete(codec.expiry_index_key(codec.decode_expiry(old), key), db=self.h.expiry)
        self.txn.put(codec.expiry_index_key(self.dedupe_expiry_ns, key), b"", db=self.h.expiry)

    def prune_dedupe(self, now_ns: int, limit: int) -> int:
        """Forget up to ``limit`` keys that expired by ``now_ns``, oldest first."""
        return self._forget_oldest(limit, lambda expiry: expiry <= now_ns)

    def finish(self) -> None:
        """Keep the dedupe set within its key limit, then persist the counters."""
        if self.dedupe:
            over = self.txn.stat(self.h.dedupe)["entries"] - self.config.dedupe_max_keys
            if over > 0:
                self.evicted += self._forget_oldest(over, lambda _expiry: True)
        c = self.counters
        if (c.depth == 0 and c.size != 0) or (c.dead_count == 0 and c.dead_size != 0):
            # Only possible if records were changed behind our back; empty means zero bytes.
            log.warning(
                "queue_counters_reset", counters=str(c), reason="byte counters drifted with the store empty"
            )
            c.size = c.size if c.depth else 0
            c.dead_size = c.dead_size if c.dead_count else 0
        if c != self._initial:  # an unchanged transaction commits without touching the disk
            store_counters(self.txn, self.h, c)

    def _forget_oldest(self, limit: int, due: Callable[[int], bool]) -> int:
        cursor = self.txn.cursor(db=self.h.expiry)
        removed = 0
        if not cursor.first():
            return 0
        while removed < limit:
            index_key = cursor.key()
            if not index_key:
                break
            if len(index_key) != 24:  # not ours; drop it rather than trip over it forever
                cursor.delete()
                continue
            expiry, key = codec.split_expiry_index_key(index_key)
            if not due(expiry):
                break
            cursor.delete()  # moves to the next entry
            value = self.txn.get(key, db=self.h.dedupe)
            if value is not None and codec.decode_expiry(value) == expiry:
                self.txn.delete(key, db=self.h.dedupe)
            removed += 1
        return removed


class Writer:
    """Owns the writer thread. ``submit`` from any thread; ``stop`` finishes what was submitted."""

    def __init__(
        self,
        handles: Handles,
        config: QueueConfig,
        ledger: Ledger,
        clock: Callable[[], float],
        on_append: Callable[[], None] | None,
    ) -> None:
        self._h = handles
        self._config = config
        self._ledger = ledger
        self._clock = clock
        self._on_append = on_append
        self._inbox: queue.SimpleQueue[Op[Any] | object] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._closed = False
        self._pending: deque[Op[Any]] = deque()
        self._next_prune = time.monotonic() + PRUNE_INTERVAL
        self._thread = threading.Thread(target=self._run, name="otlp-meter-queue-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

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
        outcomes: list[tuple[Op[Any], Any, Exception | None]] = []
        ledger = self._ledger
        with ledger.lock:
            counters = ledger.counters.copy()
        try:
            txn = self._h.env.begin(write=True)
            try:
                group = Group(txn, self._h, self._config, counters, self._clock())
                for op in ops:
                    try:
                        outcomes.append((op, op.apply(group), None))
                    except Refused as refused:
                        outcomes.append((op, None, refused.error))
                group.finish()
                txn.commit()
            except BaseException:
                txn.abort()
                raise
        except Exception as exc:
            failure = _commit_failure(exc)
            log.exception("queue_commit_failed", operations=len(ops), error=repr(exc))
            for op in ops:
                _settle_threadsafe(op, None, failure())
            return

        with ledger.lock:
            ledger.counters = counters
            ledger.deduplicated_total += group.deduplicated
            ledger.expired_dedupe_total += sum(op.removed for op in ops if isinstance(op, PruneOp))
            ledger.evicted_dedupe_total += group.evicted
            ledger.commits_total += 1
            ledger.leased.difference_update(group.removed_seqs)
            ledger.quarantining.difference_update(group.quarantined)
        if group.evicted:
            log.warning(
                "queue_dedupe_keys_evicted",
                limit=self._config.dedupe_max_keys,
                evicted=group.evicted,
                consequence="these keys were forgotten before their dedupe window ended",
            )
        # Wake the exporter before the appenders: it is scheduled first on each loop.
        if self._on_append is not None:
            for loop in group.appended_loops:
                _call_soon_threadsafe(loop, self._on_append)
        for op, result, error in outcomes:
            _settle_threadsafe(op, result, error)

    def _fail_leftovers(self) -> None:
        while self._pending:
            _settle_threadsafe(self._pending.popleft(), None, ShuttingDownError("the queue is closed"))
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Op):
                _settle_threadsafe(item, None, ShuttingDownError("the queue is closed"))


def _commit_failure(exc: Exception) -> Callable[[], Exception]:
    """One fresh exception per waiter (an exception object must not be raised in many tasks)."""
    if isinstance(exc, lmdb.MapFullError | lmdb.DiskError):
        message = f"queue storage is full: {exc}"
        return lambda: QueueFullError(message)
    message = f"queue storage failed: {exc}"
    return lambda: StorageError(message)


def _settle_threadsafe(op: Op[Any], result: Any, error: Exception | None) -> None:
    if op.future is not None and op.loop is not None:
        _call_soon_threadsafe(op.loop, _settle, op.future, result, error)


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
