"""The durable queue: events between the pipeline and the exporters, in LMDB.

    pipeline ──append──► [events | dedupe | dead | state] ──lease──► exporter ──ack / dead_letter──┐
                                   ▲                                                             │
                                   └─────────────── one writer thread, grouped commits ◄──────────┘

* ``append`` makes events, their dedupe keys, dead letters for rejected records and the caller's
  state changes durable in one synced commit before it returns; copies of events seen within the
  dedupe window are dropped and counted.
* Events are stored in groups, the events of one append (up to 500) in one record
  (:mod:`otlp_meter.queue.codec`, envelope 3), each event still with a sequence of its own.
* ``lease`` hands out the oldest events nobody holds; ``ack`` deletes delivered ones; ``release``
  gives them back; ``dead_letter`` moves refused ones aside with the destination's answer. Leases
  live in memory only: after a restart every stored event is leased again, and the destination sees
  the same ids again (that is why ids are deterministic).
* Writes go through :mod:`otlp_meter.queue.writer` (one thread, one transaction per group); reads
  (``lease``, ``stats``, ``get_state``, ``list_dead``) use short read-only transactions on the
  calling thread. Undecodable records are moved aside to ``corrupt`` and counted, never crashed on.
* Other processes may read and write the same environment (the admin commands): LMDB serializes
  writers across processes, the counters are re-read inside every write transaction and by
  ``stats``, and the owner lock (:mod:`otlp_meter.queue.lock`) keeps a second *exporting* process
  out. An event appended by another process is leased like any other.

The environment lives in ``<directory>/queue/`` (see :class:`~otlp_meter.queue.config.QueueConfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import lmdb

from otlp_meter.errors import ShuttingDownError, StorageError
from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue import reads
from otlp_meter.queue.codec import EVENTS_PER_GROUP
from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.leases import take_fresh, take_released
from otlp_meter.queue.ledger import (
    Counters,
    Handles,
    Ledger,
    load_counters,
    open_environment,
    read_counters,
    storage_used_bytes,
    store_counters,
)
from otlp_meter.queue.lock import OwnerLock
from otlp_meter.queue.ops import (
    AckOp,
    AppendOp,
    DeadLetterOp,
    Op,
    PruneOp,
    PurgeDeadOp,
    QuarantineOp,
    ReplayOp,
    StatePlan,
    StateSweepOp,
)
from otlp_meter.queue.types import (
    Accounting,
    AppendResult,
    DeadLetterEntry,
    LeasedBatch,
    LeasedEvent,
    QueueStats,
    ReplayItem,
    ReplayResult,
)
from otlp_meter.queue.writer import PRUNE_BATCH, Writer
from otlp_meter.telemetry.logging import get_logger

__all__ = ["AppendResult", "DeadLetterEntry", "LeasedBatch", "LeasedEvent", "LmdbQueue", "QueueStats"]

_FULL_UNTIL_DRAINED = 0.9
"""After a refusal for lack of space, ``full`` holds until the bytes fall below this fraction."""

log = get_logger("queue")

T = TypeVar("T")


class LmdbQueue:
    """The queue. ``open()`` before use, ``close()`` at shutdown; async methods run on one loop.

    ``clock`` (Unix seconds) stamps events and dedupe expiries; tests inject it. ``on_append`` is
    called on the appending event loop after each commit that added events (wake the exporter).
    ``on_commit(seconds, operations)`` is called on the writer thread after each grouped commit.
    ``batch_events``: the exporter's ``batch.max_events``; appends store groups of at most that
    many events (and at most :data:`~otlp_meter.queue.codec.EVENTS_PER_GROUP`).
    """

    def __init__(
        self,
        config: QueueConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[], None] | None = None,
        on_commit: Callable[[float, int], None] | None = None,
        batch_events: int = EVENTS_PER_GROUP,
    ) -> None:
        self._config = config
        # Appends store groups no larger than the exporter's batches, which then take whole groups
        # (an ack of part of a group writes the rest back).
        self._group_events = max(1, min(batch_events, EVENTS_PER_GROUP))
        self._clock = clock
        self._on_append = on_append
        self._on_commit = on_commit
        self._handles: Handles | None = None
        self._writer: Writer | None = None
        self._ledger = Ledger(counters=Counters())
        self._lock: OwnerLock | None = None
        self._opened = False
        self._last_stats: QueueStats | None = None

    @property
    def config(self) -> QueueConfig:
        return self._config

    def exists(self) -> bool:
        """Whether a queue was ever created in the configured directory."""
        return (self._config.path / "data.mdb").is_file()

    def open(self, *, owner: bool = True, readonly: bool = False) -> None:
        """Open or create the environment, check its schema, load the counters, start the writer.

        ``owner`` (the service) takes the owner lock first: StorageError if another process holds
        it. Admin commands open with ``owner=False`` to write next to a running service, or
        ``readonly=True`` to only read (no writer, nothing created; StorageError if no queue).
        """
        if self._handles is not None:
            raise RuntimeError("the queue is already open")
        path = self._config.path
        if not readonly:
            # Created owner-only: the queue holds billing data (and the directory may hold more).
            # An existing directory keeps its mode: the operator (or a volume's fsGroup) chose it.
            for directory in (self._config.directory, path):
                with contextlib.suppress(OSError):  # open_environment reports what went wrong
                    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = OwnerLock(path) if owner and not readonly else None
        if lock is not None:
            lock.acquire()
        try:
            handles = open_environment(path, self._config.effective_map_size(), self._config.sync, readonly)
            try:
                with handles.env.begin(write=not readonly) as txn:
                    counters, repaired = load_counters(txn, handles)
                    if repaired and not readonly:
                        store_counters(txn, handles, counters)
            except lmdb.Error as exc:
                handles.env.close()
                raise StorageError(f"cannot read the queue counters at {path}: {exc}") from exc
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        self._lock = lock
        self._ledger = Ledger(counters=counters)
        self._handles = handles
        self._opened = True
        if not readonly:
            self._writer = Writer(
                handles,
                self._config,
                self._ledger,
                self._clock,
                self._on_append,
                self._on_commit,
                self._group_events,
            )
            self._writer.start()
        log.info(
            "queue_opened",
            path=str(path),
            events=counters.depth,
            bytes=counters.size,
            dead_letters=counters.dead_count,
            readonly=readonly,
        )

    def close(self) -> None:
        """Commit what was submitted, stop the writer, close the environment. Idempotent.

        Appends already submitted complete; later ones fail with ShuttingDownError.
        """
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        with self._ledger.lock:
            handles, self._handles = self._handles, None
            if handles is not None:
                handles.env.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # -- writes (through the writer thread) --

    async def append(
        self,
        events: Sequence[EncodedEvent],
        rejected: Sequence[Rejection] = (),
        state: Mapping[bytes, bytes | None] | None = None,
        *,
        expect: Mapping[bytes, bytes | None] | None = None,
    ) -> AppendResult:
        """Commit ``events`` (minus copies within the dedupe window), dead letters for ``rejected``
        and the ``state`` puts (``None`` deletes) in one synced transaction, then return.

        ``expect``: state values (None: absent) that must still be stored when the transaction
        applies this append, whichever process wrote last; else StateConflictError.

        Raises QueueFullError (byte limit, dead-letter limit, disk full), StorageError,
        StateConflictError or ShuttingDownError; then nothing of it was stored.
        """
        if not events and not rejected and not state:
            return AppendResult(appended=0, deduplicated=0, dead_lettered=0)
        return await self._submit(
            AppendOp(
                events=tuple(events),
                rejected=tuple(rejected),
                state=dict(state or {}),
                expect=dict(expect or {}),
            )
        )

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete delivered events (one transaction). Works when the queue is full."""
        await self._submit(AckOp(seqs=tuple(seqs)))

    async def dead_letter(self, items: Sequence[tuple[LeasedEvent, str]]) -> None:
        """Move leased events to the dead-letter store with a reason each (one transaction).

        Raises QueueFullError when the dead-letter store is full; the events then stay queued and
        leased, and the caller decides (typically: release them and try again later).
        """
        await self._submit(DeadLetterOp(items=tuple(items)))

    async def prune_dedupe(self, now: float | None = None) -> int:
        """Forget dedupe keys whose window ended by ``now`` (default: the clock); returns how many.

        The writer also does this every minute on its own, in bounded batches.
        """
        removed = 0
        while True:
            batch = await self._submit(PruneOp(now=now, limit=PRUNE_BATCH))
            removed += batch
            if batch < PRUNE_BATCH:
                return removed

    async def sweep_state(self, plan: StatePlan[T]) -> T:
        """Apply the state changes ``plan`` decides from the state database as this transaction
        sees it (:class:`~otlp_meter.queue.ops.StateSweepOp`); returns its result. Raises what
        ``plan`` raised (then nothing was written), StorageError or ShuttingDownError."""
        return await self._submit(StateSweepOp(plan=plan))

    async def purge_dead(self, seqs: Sequence[int] | None = None) -> int:
        """Delete dead letters by sequence (all of them when ``seqs`` is None); returns how many."""
        return await self._submit(PurgeDeadOp(seqs=None if seqs is None else tuple(seqs)))

    async def replay_dead(self, items: Sequence[ReplayItem]) -> ReplayResult:
        """Take the dead letters of ``items`` out and append what each becomes, in one transaction.

        Dead letters gone meanwhile are skipped (counted as ``missing``). Raises QueueFullError
        when the events do not fit; then nothing changed.
        """
        if not items:
            return ReplayResult(replayed=0, appended=0, deduplicated=0, rejected=0, missing=0)
        return await self._submit(ReplayOp(items=tuple(items)))

    async def _submit(self, op: Op[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        op.loop, op.future = loop, future
        self._require_writer().submit(op)
        return await future

    @property
    def writable(self) -> bool:
        """Open for writing and its writer thread taking operations (not crashed)."""
        return self._writer is not None and self._writer.alive

    def _require_writer(self) -> Writer:
        writer = self._writer
        if writer is None:
            if self._handles is not None:
                raise StorageError("the queue was opened read-only")
            raise ShuttingDownError("the queue is not open")
        return writer

    # -- leases (in memory, any thread) --

    def lease(self, max_events: int, max_bytes: int) -> LeasedBatch:
        """The oldest events nobody holds: at most ``max_events``, at most ``max_bytes`` of payload,
        but always at least one if any is available. Released events come first (they are older).
        A sequence of :class:`LeasedEvent`, with the parallel lists the exporter reads directly."""
        out = LeasedBatch()
        if max_events <= 0:
            return out
        corrupt: list[tuple[bytes, str]] = []
        ledger = self._ledger
        with ledger.lock:
            h = self._require_handles()
            with h.env.begin(db=h.events) as txn:
                if take_released(txn, ledger, out, max_events, max_bytes):
                    take_fresh(txn, ledger, out, corrupt, max_events, max_bytes)
            ledger.corrupt_total += len(corrupt)
            ledger.quarantining.update(key for key, _ in corrupt)
        if corrupt:
            for key, why in corrupt:
                log.error("queue_record_corrupt", key=key.hex(), error=why, action="moved aside")
            with contextlib.suppress(ShuttingDownError):  # if closing: moved aside on the next run
                self._require_writer().submit(QuarantineOp(keys=[key for key, _ in corrupt]))
        return out

    def release(self, seqs: Sequence[int]) -> None:
        """Give leased events back unacknowledged; the next ``lease`` returns them first."""
        ledger = self._ledger
        with ledger.lock:
            for seq in seqs:
                if ledger.leased.pop(seq, None) is not None:
                    heapq.heappush(ledger.released, seq)

    # -- reads --

    def available(self) -> int:
        """Events stored and leased by nobody (cheap: one read of the committed counters)."""
        ledger = self._ledger
        with ledger.lock:
            h = self._require_handles()
            with h.env.begin() as txn:
                counters = read_counters(txn, h) or ledger.counters
                snapshot = txn.id()
            # Deleted on disk but still in the lease book (the writer has not published its commit
            # yet): not leased any more, and not available either.
            pending = ledger.unpublished
            deleted = pending[1] if pending is not None and snapshot >= pending[0] else 0
            return counters.depth - len(ledger.leased) + deleted

    def stats(self) -> QueueStats:
        """A snapshot read from disk. Also answers when the queue is closed (last known values)."""
        ledger = self._ledger
        with ledger.lock:
            h = self._handles
            if h is None:  # the counters this process committed last, the rest as last read
                last = self._last_stats
                if last is None:
                    return self._snapshot(ledger.counters, 0, 0, None, 0)
                return self._snapshot(
                    ledger.counters,
                    last.dedupe_keys,
                    last.corrupt_records,
                    last.oldest_enqueued_at,
                    last.storage_used_bytes,
                )
            with h.env.begin() as txn:
                c = read_counters(txn, h) or ledger.counters
                stats = self._snapshot(
                    c,
                    txn.stat(h.dedupe)["entries"],
                    txn.stat(h.corrupt)["entries"],
                    reads.oldest_enqueued_at(txn, h),
                    storage_used_bytes(txn, h),
                )
            self._last_stats = stats
            return stats

    def _snapshot(
        self, c: Counters, dedupe_keys: int, corrupt_records: int, oldest: float | None, used: int
    ) -> QueueStats:
        ledger = self._ledger  # the caller holds its lock
        full_at = ledger.full_at_size
        return QueueStats(
            depth=c.depth,
            bytes=c.size,
            capacity_bytes=self._config.max_bytes,
            dead_letters=c.dead_count,
            dead_bytes=c.dead_size,
            dead_capacity_bytes=self._config.dead_letter_max_bytes,
            oldest_enqueued_at=oldest,
            leased=len(ledger.leased),
            dedupe_keys=dedupe_keys,
            corrupt_records=corrupt_records,
            deduplicated_total=ledger.deduplicated_total,
            corrupt_total=ledger.corrupt_total,
            expired_dedupe_total=ledger.expired_dedupe_total,
            evicted_dedupe_total=ledger.evicted_dedupe_total,
            commits_total=ledger.commits_total,
            full=full_at is not None and (full_at == 0 or c.size > full_at * _FULL_UNTIL_DRAINED),
            storage_used_bytes=used,
            map_size=self._config.effective_map_size(),
            accounting=_accounting(c) if self._opened else None,
        )

    def get_state(self, key: bytes) -> bytes | None:
        """A caller's state value as last committed by ``append``, or None."""
        with self._ledger.lock:
            h = self._require_handles()
            with h.env.begin(db=h.state) as txn:
                return txn.get(key)

    def list_dead(self, limit: int = 100, after: int = 0) -> list[DeadLetterEntry]:
        """Dead letters with a sequence above ``after``, oldest first (page with the last seq)."""
        if limit <= 0:
            return []
        with self._ledger.lock:
            h = self._require_handles()
            with h.env.begin() as txn:
                return reads.list_dead(txn, h, limit, after)

    def last_dead_seq(self) -> int:
        """The highest dead-letter sequence stored now (0: none); later dead letters are above it."""
        with self._ledger.lock:
            h = self._require_handles()
            with h.env.begin() as txn:
                return reads.last_dead_seq(txn, h)

    def _require_handles(self) -> Handles:
        if self._handles is None:
            raise ShuttingDownError("the queue is not open")
        return self._handles


def _accounting(c: Counters) -> Accounting:
    return Accounting(
        accepted=c.accepted,
        deduplicated=c.deduplicated,
        delivered=c.delivered,
        dead_lettered=c.dead_lettered,
        corrupt=c.corrupt,
        replayed=c.replayed,
        records_rejected=c.records_rejected,
        dead_replayed=c.dead_replayed,
        dead_purged=c.dead_purged,
        dedupe_expired=c.dedupe_expired,
        dedupe_evicted=c.dedupe_evicted,
    )
