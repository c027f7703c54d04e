"""The durable queue: events between the pipeline and the exporters, in LMDB.

    pipeline ──append──► [events | dedupe | dead | state] ──lease──► exporter ──ack / dead_letter──┐
                                   ▲                                                             │
                                   └─────────────── one writer thread, grouped commits ◄──────────┘

* ``append`` makes events, their dedupe keys, dead letters for rejected records and the caller's
  state changes durable in one synced commit before it returns; copies of events seen within the
  dedupe window are dropped and counted.
* ``lease`` hands out the oldest events nobody holds; ``ack`` deletes delivered ones; ``release``
  gives them back; ``dead_letter`` moves refused ones aside with the destination's answer. Leases
  live in memory only: after a restart every stored event is leased again, and the destination sees
  the same ids again (that is why ids are deterministic).
* Writes go through :mod:`otlp_meter.queue.writer` (one thread, one transaction per group); reads
  (``lease``, ``stats``, ``get_state``, ``list_dead``) use short read-only transactions on the
  calling thread. Undecodable records are moved aside to ``corrupt`` and counted, never crashed on.

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
from otlp_meter.queue import codec
from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.ledger import Counters, Handles, Ledger, load_counters, open_environment, store_counters
from otlp_meter.queue.ops import AckOp, AppendOp, DeadLetterOp, Op, PruneOp, PurgeDeadOp, QuarantineOp
from otlp_meter.queue.types import AppendResult, DeadLetterEntry, LeasedEvent, QueueStats
from otlp_meter.queue.writer import PRUNE_BATCH, Writer
from otlp_meter.telemetry.logging import get_logger

__all__ = ["AppendResult", "DeadLetterEntry", "LeasedEvent", "LmdbQueue", "QueueStats"]

log = get_logger("queue")

T = TypeVar("T")


class LmdbQueue:
    """The queue. ``open()`` before use, ``close()`` at shutdown; async methods run on one loop.

    ``clock`` (Unix seconds) stamps events and dedupe expiries; tests inject it. ``on_append`` is
    called on the appending event loop after each commit that added events (wake the exporter).
    """

    def __init__(
        self,
        config: QueueConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_append = on_append
        self._handles: Handles | None = None
        self._writer: Writer | None = None
        self._ledger = Ledger(counters=Counters())
        self._disk_stats: tuple[int, int, float | None] = (0, 0, None)

    @property
    def config(self) -> QueueConfig:
        return self._config

    def open(self) -> None:
        """Open or create the environment, check its schema, load the counters, start the writer."""
        if self._handles is not None:
            raise RuntimeError("the queue is already open")
        handles = open_environment(self._config.path, self._config.effective_map_size(), self._config.sync)
        try:
            with handles.env.begin(write=True) as txn:
                counters, repaired = load_counters(txn, handles)
                if repaired:
                    store_counters(txn, handles, counters)
        except lmdb.Error as exc:
            handles.env.close()
            raise StorageError(f"cannot read the queue counters at {self._config.path}: {exc}") from exc
        self._ledger = Ledger(counters=counters)
        self._handles = handles
        self._writer = Writer(handles, self._config, self._ledger, self._clock, self._on_append)
        self._writer.start()
        log.info(
            "queue_opened",
            path=str(self._config.path),
            events=counters.depth,
            bytes=counters.size,
            dead_letters=counters.dead_count,
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

    # -- writes (through the writer thread) --

    async def append(
        self,
        events: Sequence[EncodedEvent],
        rejected: Sequence[Rejection] = (),
        state: Mapping[bytes, bytes | None] | None = None,
    ) -> AppendResult:
        """Commit ``events`` (minus copies within the dedupe window), dead letters for ``rejected``
        and the ``state`` puts (``None`` deletes) in one synced transaction, then return.

        Raises QueueFullError (byte limit, dead-letter limit, disk full), StorageError or
        ShuttingDownError; then nothing of it was stored.
        """
        if not events and not rejected and not state:
            return AppendResult(appended=0, deduplicated=0, dead_lettered=0)
        return await self._submit(
            AppendOp(events=tuple(events), rejected=tuple(rejected), state=dict(state or {}))
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

    async def purge_dead(self, seqs: Sequence[int] | None = None) -> int:
        """Delete dead letters by sequence (all of them when ``seqs`` is None); returns how many."""
        return await self._submit(PurgeDeadOp(seqs=None if seqs is None else tuple(seqs)))

    async def _submit(self, op: Op[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        op.loop, op.future = loop, future
        self._require_writer().submit(op)
        return await future

    def _require_writer(self) -> Writer:
        writer = self._writer
        if writer is None:
            raise ShuttingDownError("the queue is not open")
        return writer

    # -- leases (in memory, any thread) --

    def lease(self, max_events: int, max_bytes: int) -> list[LeasedEvent]:
        """The oldest events nobody holds: at most ``max_events``, at most ``max_bytes`` of payload,
        but always at least one if any is available. Released events come first (they are older)."""
        if max_events <= 0:
            return []
        out: list[LeasedEvent] = []
        corrupt: list[tuple[bytes, str]] = []
        ledger = self._ledger
        with ledger.lock:
            h = self._require_handles()
            with h.env.begin(db=h.events) as txn:
                size = self._lease_released(txn, out, max_events, max_bytes)
                if size >= 0:
                    self._lease_fresh(txn, out, corrupt, max_events, max_bytes, size)
            ledger.corrupt_total += len(corrupt)
            ledger.quarantining.update(key for key, _ in corrupt)
        if corrupt:
            for key, why in corrupt:
                log.error("queue_record_corrupt", key=key.hex(), error=why, action="moved aside")
            with contextlib.suppress(ShuttingDownError):  # if closing: moved aside on the next run
                self._require_writer().submit(QuarantineOp(keys=[key for key, _ in corrupt]))
        return out

    def _lease_released(
        self, txn: lmdb.Transaction[bytes], out: list[LeasedEvent], max_events: int, max_bytes: int
    ) -> int:
        """Re-lease released events; returns the payload bytes taken, or -1 if the batch is full."""
        ledger = self._ledger
        size = 0
        while ledger.released and len(out) < max_events:
            seq = ledger.released[0]
            raw = txn.get(codec.seq_key(seq))
            record = _decode_or_none(raw)
            if record is None:  # acked or moved meanwhile
                heapq.heappop(ledger.released)
                continue
            if out and size + len(record.payload) > max_bytes:
                return -1
            heapq.heappop(ledger.released)
            ledger.leased.add(seq)
            out.append(_leased(seq, record))
            size += len(record.payload)
        return size if len(out) < max_events else -1

    def _lease_fresh(
        self,
        txn: lmdb.Transaction[bytes],
        out: list[LeasedEvent],
        corrupt: list[tuple[bytes, str]],
        max_events: int,
        max_bytes: int,
        size: int,
    ) -> None:
        ledger = self._ledger
        cursor = txn.cursor()
        if not cursor.set_range(codec.seq_key(ledger.cursor)):
            return
        for key, raw in cursor:
            if key in ledger.quarantining:
                continue
            if len(key) != 8:
                corrupt.append((key, "key is not an 8-byte sequence number"))
                continue
            seq = codec.key_seq(key)
            try:
                record = codec.decode_event(raw)
            except codec.CorruptRecordError as exc:
                corrupt.append((key, str(exc)))
                ledger.cursor = seq + 1
                continue
            if out and size + len(record.payload) > max_bytes:
                return
            ledger.leased.add(seq)
            ledger.cursor = seq + 1
            out.append(_leased(seq, record))
            size += len(record.payload)
            if len(out) >= max_events:
                return

    def release(self, seqs: Sequence[int]) -> None:
        """Give leased events back unacknowledged; the next ``lease`` returns them first."""
        ledger = self._ledger
        with ledger.lock:
            for seq in seqs:
                if seq in ledger.leased:
                    ledger.leased.remove(seq)
                    heapq.heappush(ledger.released, seq)

    # -- reads --

    def stats(self) -> QueueStats:
        """A snapshot. Also answers when the queue is closed (last known values), for late scrapes."""
        ledger = self._ledger
        with ledger.lock:
            c = ledger.counters
            if self._handles is not None:
                h = self._handles
                with h.env.begin() as txn:
                    self._disk_stats = (
                        txn.stat(h.dedupe)["entries"],
                        txn.stat(h.corrupt)["entries"],
                        _oldest_enqueued_at(txn, h),
                    )
            dedupe_keys, corrupt_records, oldest = self._disk_stats
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
            )

    def get_state(self, key: bytes) -> bytes | None:
        """A caller's state value as last committed by ``append``, or None."""
        with self._ledger.lock:
            h = self._require_handles()
            with h.env.begin(db=h.state) as txn:
                return txn.get(key)

    def list_dead(self, limit: int = 100, after: int = 0) -> list[DeadLetterEntry]:
        """Dead letters with a sequence above ``after``, oldest first (page with the last seq)."""
        entries: list[DeadLetterEntry] = []
        if limit <= 0:
            return entries
        with self._ledger.lock:
            h = self._require_handles()
            with h.env.begin(db=h.dead) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(codec.seq_key(after + 1)):
                    return entries
                for key, raw in cursor:
                    if len(key) == 8:
                        entries.append(_dead_entry(codec.key_seq(key), raw))
                    if len(entries) >= limit:
                        break
        return entries

    def _require_handles(self) -> Handles:
        if self._handles is None:
            raise ShuttingDownError("the queue is not open")
        return self._handles


def _decode_or_none(raw: bytes | None) -> codec.QueuedRecord | None:
    if raw is None:
        return None
    try:
        return codec.decode_event(raw)
    except codec.CorruptRecordError:
        return None


def _leased(seq: int, record: codec.QueuedRecord) -> LeasedEvent:
    return LeasedEvent(
        seq=seq,
        source=record.source,
        id=record.id,
        payload=record.payload,
        enqueued_at=record.enqueued_unix_nano / 1e9,
    )


def _oldest_enqueued_at(txn: lmdb.Transaction[bytes], h: Handles) -> float | None:
    cursor = txn.cursor(db=h.events)
    if not cursor.first():
        return None
    for tried, (_key, raw) in enumerate(cursor):
        if tried >= 16:  # a run of corrupt records: not worth scanning further for a gauge
            break
        record = _decode_or_none(raw)
        if record is not None:
            return record.enqueued_unix_nano / 1e9
    return None


def _dead_entry(seq: int, raw: bytes) -> DeadLetterEntry:
    try:
        record = codec.decode_dead_letter(raw)
    except codec.CorruptRecordError as exc:
        return DeadLetterEntry(
            seq=seq,
            kind="corrupt",
            reason=f"undecodable dead letter: {exc}",
            payload=raw,
            source="",
            id="",
            dead_at=0.0,
            attempts=0,
        )
    return DeadLetterEntry(
        seq=seq,
        kind=record.kind,
        reason=record.reason,
        payload=record.payload,
        source=record.source,
        id=record.id,
        dead_at=record.dead_unix_nano / 1e9,
        attempts=record.attempts,
        rule=record.rule,
    )
