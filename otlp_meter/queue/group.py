"""One write transaction shared by a group of operations (see :mod:`otlp_meter.queue.writer`).

:class:`Group` holds the transaction, the counters as committed before it (read back inside it),
and the primitive writes the operations are made of; each primitive keeps the counters right, so
the accounting identities hold at every commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import lmdb

from otlp_meter.errors import QueueFullError
from otlp_meter.queue import codec
from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.ledger import Counters, Handles, storage_used_bytes, store_counters
from otlp_meter.telemetry.logging import get_logger

log = get_logger("queue")

_KiB = 1024
_MiB = 1024 * _KiB


def storage_headroom(map_size: int) -> int:
    """Bytes of the map kept free for deletes: an ack copies the pages it touches before freeing
    them (copy on write), so with a map filled to the last page even deliveries could not be
    acknowledged. Appends are refused before they eat into this."""
    return min(16 * _MiB, max(256 * _KiB, map_size // 32))


class Refused(Exception):
    """Raised by an operation before writing anything: this operation fails with ``error`` alone.

    ``full`` marks refusals for lack of intake space (queue bytes or storage), which readiness
    reports; a full dead-letter store does not count (it does not stop clean data).
    """

    def __init__(self, error: Exception, full: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.full = full


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
        self.evicted = 0
        self.appended = 0
        self.removed_seqs: list[int] = []
        self.quarantined: list[bytes] = []
        self.appended_loops: set[asyncio.AbstractEventLoop] = set()
        self._storage_free: int | None = None

    # -- checks (no writes) --

    def is_duplicate(self, key: bytes) -> bool:
        value = self.txn.get(key, db=self.h.dedupe)
        return value is not None and codec.decode_expiry(value) > self.now_ns

    def check_room(self, event_bytes: int, dead_bytes: int, keys: int = 0) -> None:
        """Refuse (before any write) what would pass the byte limits or eat into the headroom.

        ``keys``: dedupe keys the operation writes (each may touch a page of its own).
        """
        if event_bytes and self.counters.size + event_bytes > self.config.max_bytes:
            raise Refused(
                QueueFullError(
                    f"queue full: {self.counters.size} of {self.config.max_bytes} bytes used, "
                    f"{event_bytes} more needed"
                ),
                full=True,
            )
        if dead_bytes and self.counters.dead_size + dead_bytes > self.config.dead_letter_max_bytes:
            raise Refused(
                QueueFullError(
                    f"dead-letter store full: {self.counters.dead_size} of "
                    f"{self.config.dead_letter_max_bytes} bytes used; inspect and purge it",
                    retry_after=30.0,
                )
            )
        if event_bytes or dead_bytes or keys:
            self._reserve_storage(event_bytes + dead_bytes, keys)

    def _reserve_storage(self, record_bytes: int, keys: int) -> None:
        # What a transaction needs while it runs, not what it keeps: records and B-tree pages split
        # half full take up to twice the payload, and each dedupe key (a random hash) may copy a
        # page of its own (copy on write; the old copies are reused only two commits later).
        # Overestimating only refuses a little early; MapFullError stays as the backstop.
        page = int(self.h.env.stat()["psize"])
        need = 2 * record_bytes + 2 * keys * page + 4 * page
        if self._storage_free is None:
            map_size = int(self.h.env.info()["map_size"])
            used = storage_used_bytes(self.txn, self.h)
            self._storage_free = map_size - used - storage_headroom(map_size)
        if need > self._storage_free:
            raise Refused(
                QueueFullError(
                    f"queue storage full: the LMDB map (queue.map_size) has about "
                    f"{max(0, self._storage_free)} bytes left for data, {need} needed"
                ),
                full=True,
            )
        self._storage_free -= need

    # -- writes --

    def put_event(self, record: bytes) -> None:
        seq = self.counters.next_seq
        self.txn.put(codec.seq_key(seq), record, append=True, db=self.h.events)
        self.counters.next_seq = seq + 1
        self.counters.depth += 1
        self.counters.size += len(record)
        self.appended += 1

    def delete_event(self, seq: int) -> bool:
        """Delete a stored event (accounting is the caller's); False if it was gone already."""
        raw = self.txn.pop(codec.seq_key(seq), db=self.h.events)
        if raw is None:
            return False
        self.counters.depth -= 1
        self.counters.size -= len(raw)
        self.removed_seqs.append(seq)
        return True

    def put_dead(self, record: bytes) -> None:
        seq = self.counters.next_dead_seq
        self.txn.put(codec.seq_key(seq), record, append=True, db=self.h.dead)
        self.counters.next_dead_seq = seq + 1
        self.counters.dead_count += 1
        self.counters.dead_size += len(record)

    def pop_dead(self, seq: int) -> bytes | None:
        """Delete a dead letter (accounting is the caller's); its bytes, or None if it was gone."""
        raw = self.txn.pop(codec.seq_key(seq), db=self.h.dead)
        if raw is not None:
            self.counters.dead_count -= 1
            self.counters.dead_size -= len(raw)
        return raw

    def remember(self, key: bytes) -> None:
        """Record a dedupe key until the end of the window (replacing an expired entry)."""
        old = self.txn.replace(key, codec.encode_expiry(self.dedupe_expiry_ns), db=self.h.dedupe)
        if old is not None:
            self.txn.delete(codec.expiry_index_key(codec.decode_expiry(old), key), db=self.h.expiry)
        self.txn.put(codec.expiry_index_key(self.dedupe_expiry_ns, key), b"", db=self.h.expiry)

    def prune_dedupe(self, now_ns: int, limit: int) -> int:
        """Forget up to ``limit`` keys that expired by ``now_ns``, oldest first."""
        removed = self._forget_oldest(limit, lambda expiry: expiry <= now_ns)
        self.counters.dedupe_expired += removed
        return removed

    def finish(self) -> None:
        """Keep the dedupe set within its key limit, then persist the counters."""
        if self.dedupe:
            over = self.txn.stat(self.h.dedupe)["entries"] - self.config.dedupe_max_keys
            if over > 0:
                evicted = self._forget_oldest(over, lambda _expiry: True)
                self.evicted += evicted
                self.counters.dedupe_evicted += evicted
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
