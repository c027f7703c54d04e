"""One write transaction shared by a group of operations (see :mod:`otlp_meter.queue.writer`).

:class:`Group` holds the transaction, the counters as committed before it (read back inside it),
and the primitive writes the operations are made of; each primitive keeps the counters right, so
the accounting identities hold at every commit.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat

import lmdb

from otlp_meter.errors import QueueFullError
from otlp_meter.events import EncodedEvent
from otlp_meter.queue import codec, reads
from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.ledger import Counters, Handles, legacy_until, storage_used_bytes, store_counters
from otlp_meter.telemetry.logging import get_logger

log = get_logger("queue")

_KiB = 1024
_MiB = 1024 * _KiB

EXPIRY_ENTRY_KEYS = 1024
"""Dedupe keys per expiry index entry (16 KiB values): one LMDB write per this many keys remembered,
while pruning still reads and rewrites bounded values."""


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
        self,
        txn: lmdb.Transaction[bytes],
        h: Handles,
        config: QueueConfig,
        counters: Counters,
        now: float,
        group_events: int = codec.EVENTS_PER_GROUP,
    ) -> None:
        self.txn = txn
        self.group_events = group_events
        """Most events an append stores in one record (:func:`codec.encode_groups`)."""
        self.h = h
        self.config = config
        self.counters = counters
        self._initial = counters.copy()
        self.now_ns = int(now * 1e9)
        self.dedupe = config.dedupe_enabled
        self.dedupe_expiry_ns = self.now_ns + int(config.dedupe_window * 1e9)
        self.legacy_lookup = self.dedupe and self._legacy_keys_left(legacy_until(txn, h))
        """Whether events' keys of the format before schema 3 may still be remembered within their
        window (a queue upgraded less than a window ago): then appends look those up too."""
        self.max_key_size = h.env.max_key_size()
        self.deduplicated = 0
        self.evicted = 0
        self.appended = 0
        self.removed_seqs: list[int] = []
        self.quarantined: list[bytes] = []
        self.appended_loops: set[asyncio.AbstractEventLoop] = set()
        self._storage_free: int | None = None
        self._dedupe_cursor: lmdb.Cursor[bytes] | None = None
        self._remembered: list[bytes] = []
        """Keys remembered in this transaction; their expiry index entries are written by finish."""

    # -- checks (no writes) --

    def window(self, keys: Iterable[bytes]) -> tuple[list[bytes], set[bytes]]:
        """``keys`` sorted without repeats, and those of them remembered with an expiry after now
        (copies within the window; keys remembered earlier in this transaction included).

        Only keys between the first stored one at or after the smallest wanted key and the last
        stored one at or before the largest need a lookup: event keys start with the event's time,
        so a request of fresh events mostly lies past every stored key of its time range (what
        lies beyond is later events' keys, or rejections' random hashes), and what lies before or
        after the stored keys found is new. The rest in one sorted ``getmulti`` (the B-tree walked
        in key order, the loop in C).
        """
        wanted = sorted(set(keys))
        if not wanted:
            return wanted, set()
        cursor = self._dedupe()
        if not cursor.set_range(wanted[0]):
            return wanted, set()  # nothing stored at or after the smallest key
        low = bisect.bisect_left(wanted, cursor.key())
        if not cursor.set_range(wanted[-1]):
            cursor.last()
        elif cursor.key() != wanted[-1]:
            cursor.prev()  # the last stored key before the largest wanted one (if none: b"")
        candidates = wanted[low : bisect.bisect_right(wanted, cursor.key())]
        if not candidates:
            return wanted, set()
        now, decode = self.now_ns, codec.decode_expiry
        found = cursor.getmulti(candidates)
        return wanted, {key for key, value in found if decode(value) > now}

    def _legacy_keys_left(self, until: int) -> bool:
        """Whether keys of the old format may be stored and within their window: ``until`` (their
        latest expiry) is still ahead, and the expiry index still has an entry due by then (at the
        key limit, eviction takes them all long before their window ends: then no more lookups)."""
        if self.now_ns >= until:
            return False
        cursor = self.txn.cursor(db=self.h.expiry)
        if not cursor.first():
            return False
        key = cursor.key()
        return len(key) != 24 or codec.split_expiry_index_key(key)[0] <= until

    def event_keys(self, events: Sequence[EncodedEvent]) -> tuple[list[bytes], list[bytes] | None]:
        """The events' dedupe keys, and (while :attr:`legacy_lookup`) their keys of the old format,
        which are only looked up (:meth:`window`), never remembered."""
        if self.legacy_lookup:
            return codec.event_dedupe_keys_with_legacy(events)
        return codec.event_dedupe_keys(events), None

    def check_room(self, event_bytes: int, dead_bytes: int, keys: int = 0, other_bytes: int = 0) -> None:
        """Refuse (before any write) what would pass the byte limits or eat into the headroom.

        ``keys``: dedupe and state keys the operation writes (each may touch a page of its own);
        ``other_bytes``: what else it stores (stream state, source cursors): outside the byte limits,
        but it takes room in the map like anything else, room acks must find when the map is full.
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
        if event_bytes or dead_bytes or keys or other_bytes:
            self._reserve_storage(event_bytes + dead_bytes + other_bytes, keys)

    def _reserve_storage(self, record_bytes: int, keys: int) -> None:
        # What a transaction needs while it runs, not what it keeps: records and B-tree pages split
        # half full take up to twice the payload, and each dedupe key may copy a page of its own
        # (copy on write; the old copies are reused only two commits later). Event keys are ordered
        # by time and mostly share pages, but a late event's or a rejection's key can land anywhere.
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

    def put_groups(self, records: Sequence[bytes], events: int) -> None:
        """Append group ``records`` (:func:`codec.encode_groups`) holding ``events`` events in all,
        each under the sequence of its first event, in one ``putmulti``."""
        if not records:
            return
        first = self.counters.next_seq
        keys: list[bytes] = []
        seq = first
        for record in records:
            keys.append(codec.SEQ.pack(seq))
            seq += codec.record_count(record)
        if seq - first != events:
            raise ValueError(f"{len(records)} groups hold {seq - first} events, not {events}")
        _consumed, added = self.txn.cursor(db=self.h.events).putmulti(
            zip(keys, records, strict=True), append=True
        )
        if added != len(records):  # MDB_APPEND refused a key: the sequence counter is behind
            raise lmdb.Error(f"appending events from sequence {first}: {len(records) - added} keys not new")
        self.counters.next_seq = seq
        self.counters.depth += events
        self.counters.size += sum(map(len, records))
        self.appended += events

    def stored(self, seqs: Iterable[int]) -> set[int]:
        """Which of ``seqs`` are still stored (in a record that decodes)."""
        cursor = self.txn.cursor(db=self.h.events)
        wanted = sorted(set(seqs))
        found: set[int] = set()
        for seq in wanted:
            if seq in found or not reads.seek_holding(cursor, seq):
                continue
            group = reads.decode_or_none(cursor.value())
            if group is not None:
                first = codec.key_seq(cursor.key())
                low = bisect.bisect_left(wanted, first)
                found.update(wanted[low : bisect.bisect_left(wanted, first + len(group.payloads), low)])
        return found

    def delete_events(self, seqs: Sequence[int]) -> int:
        """Delete stored events (accounting is the caller's); how many were still there.

        In key order with one cursor: a group whose events are all listed (the usual ack: a batch
        takes whole groups) is one ``Cursor.delete``; of a group only partly listed, the rest is
        written back, each run of consecutive events as a group under its first sequence. A
        record that does not decode is left for the lease to move aside.
        """
        ordered = sorted(set(seqs))
        cursor = self.txn.cursor(db=self.h.events)
        removed = self.removed_seqs
        start = len(removed)
        size = self.counters.size
        i = 0
        while i < len(ordered):
            seq = ordered[i]
            if not reads.seek_holding(cursor, seq):
                i += 1  # acked twice, or moved aside meanwhile: nothing to count
                continue
            first = codec.key_seq(cursor.key())
            raw = cursor.value()
            count = codec.record_count(raw)
            end = bisect.bisect_left(ordered, first + count, i)
            if end - i < count:  # part of the group: the rest stays
                group = reads.decode_or_none(raw)
                if group is None or len(group.payloads) != count:
                    i = end
                    continue
                cursor.delete()
                size -= len(raw)
                for run_first, payloads in _runs_left(first, group.payloads, ordered[i:end]):
                    rest = codec.encode_group(payloads, group.enqueued_unix_nano, group.attempts)
                    self.txn.put(codec.SEQ.pack(run_first), rest, db=self.h.events)
                    size += len(rest)
            else:
                cursor.delete()
                size -= len(raw)
            removed.extend(ordered[i:end])
            i = end
        count = len(removed) - start
        self.counters.depth -= count
        self.counters.size = size
        return count

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

    def remember(self, keys: Sequence[bytes], *, ordered: bool = False) -> None:
        """Record dedupe keys until the end of the window (replacing expired entries).

        One ``putmulti`` in key order (``ordered``: they are sorted already); the keys past the
        largest stored one (fresh events' keys, which start with their time) are appended at the
        B-tree's right edge without a search. The expiry index gets the keys at :meth:`finish`, in
        a few entries for the whole transaction. An older index entry that still names a key is
        left alone: pruning it finds the key's later expiry in ``dedupe`` and keeps the key.
        """
        if not keys:
            return
        if not ordered:
            keys = sorted(keys)
        cursor = self._dedupe()
        value = codec.encode_expiry(self.dedupe_expiry_ns)
        split = bisect.bisect_right(keys, cursor.key()) if cursor.last() else 0
        if split:
            cursor.putmulti(zip(keys[:split], repeat(value)))
        if split < len(keys):
            appended = keys[split:] if split else keys
            # Sorted and past every stored key; a key listed twice is one put (MDB_APPEND refuses
            # a key not greater than the last, so repeats go through a plain put).
            _consumed, added = cursor.putmulti(zip(appended, repeat(value)), append=True)
            if added != len(appended):
                cursor.putmulti(zip(appended, repeat(value)))
        self._remembered.extend(keys)

    def _dedupe(self) -> lmdb.Cursor[bytes]:
        if self._dedupe_cursor is None:
            self._dedupe_cursor = self.txn.cursor(db=self.h.dedupe)
        return self._dedupe_cursor

    def _index_remembered(self) -> None:
        # No sorting: pruning sorts an entry's keys itself. A key listed twice (a requeue of an
        # event remembered in the same transaction) is found gone the second time.
        keys, self._remembered = self._remembered, []
        for start in range(0, len(keys), EXPIRY_ENTRY_KEYS):
            chunk = keys[start : start + EXPIRY_ENTRY_KEYS]
            index_key = codec.expiry_index_key(self.dedupe_expiry_ns, chunk[0])
            value = codec.expiry_index_value(chunk)
            if not self.txn.put(index_key, value, overwrite=False, db=self.h.expiry):
                # The same expiry and first key were indexed already: by an earlier commit at the
                # same clock reading (only a test clock stands still), or by a chunk of this one
                # that listed the key too. Keep both lists.
                old = self.txn.get(index_key, db=self.h.expiry) or b""
                merged = set(codec.expiry_index_keys(index_key, old)) | set(chunk)
                self.txn.put(index_key, codec.expiry_index_value(sorted(merged)), db=self.h.expiry)

    def prune_dedupe(self, now_ns: int, limit: int) -> int:
        """Forget up to ``limit`` keys that expired by ``now_ns``, oldest first."""
        removed = self._forget_oldest(limit, lambda expiry: expiry <= now_ns)
        self.counters.dedupe_expired += removed
        return removed

    def finish(self) -> None:
        """Index the keys remembered, keep the dedupe set within its key limit, persist the counters."""
        if self._remembered:
            self._index_remembered()
        if self.dedupe:
            over = self.txn.stat(self.h.dedupe)["entries"] - self.config.dedupe_max_keys
            if over > 0:
                evicted = self._forget_oldest(over, lambda _expiry: True)
                self.evicted += evicted
                self.counters.dedupe_evicted += evicted
        c = self.counters
        if min(c.depth, c.size, c.dead_count, c.dead_size) < 0:
            # Only possible if a damaged record miscounted; the next start recounts from the records.
            log.warning("queue_counters_reset", counters=str(c), reason="a counter went below zero")
            c.depth, c.size = max(c.depth, 0), max(c.size, 0)
            c.dead_count, c.dead_size = max(c.dead_count, 0), max(c.dead_size, 0)
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
        """Forget up to ``limit`` dedupe keys from the front of the expiry index while ``due``.

        An entry's key whose stored expiry differs was remembered again since (a later entry
        names it): it stays, and does not count. An entry only partly done keeps the rest.
        """
        cursor = self.txn.cursor(db=self.h.expiry)
        removed = 0
        if limit <= 0 or not cursor.first():
            return 0
        pop, put, dedupe = self.txn.pop, self.txn.put, self.h.dedupe
        while removed < limit:
            index_key = cursor.key()
            if not index_key:
                break
            if len(index_key) != 24:  # not ours; drop it rather than trip over it forever
                cursor.delete()
                continue
            expiry, _first = codec.split_expiry_index_key(index_key)
            if not due(expiry):
                break
            keys = codec.expiry_index_keys(index_key, cursor.value())
            keys.sort()  # the order of the dedupe B-tree
            done = 0
            for key in keys:
                if removed >= limit:
                    break
                done += 1
                # pop and, for the rare key remembered again since, put back: one read fewer for
                # the usual case than get-then-delete.
                value = pop(key, db=dedupe)
                if value is None:
                    continue
                if codec.decode_expiry(value) != expiry:
                    put(key, value, db=dedupe)
                    continue
                removed += 1
            if done < len(keys):
                put(index_key, codec.expiry_index_value(keys[done:]), db=self.h.expiry)
                break
            cursor.delete()  # moves to the next entry
        return removed


def _runs_left(first: int, payloads: list[bytes], gone: Sequence[int]) -> Iterator[tuple[int, list[bytes]]]:
    """The runs of consecutive events of the group at ``first`` not in ``gone`` (sorted
    sequences within it): (sequence of the run's first event, its payloads)."""
    taken = {seq - first for seq in gone}
    run: list[bytes] = []
    run_first = first
    for n, payload in enumerate(payloads):
        if n in taken:
            if run:
                yield run_first, run
                run = []
            continue
        if not run:
            run_first = first + n
        run.append(payload)
    if run:
        yield run_first, run
