"""Taking leases: which stored events the next batch gets. Called by :meth:`LmdbQueue.lease` with
the ledger's lock held and a read transaction open on ``events`` (see the lease-book invariant in
:class:`~otlp_meter.queue.ledger.Ledger`).

This is the exporter's per-event path, so the work per event is a slice: records are groups of
events (envelope 3 of :mod:`~otlp_meter.queue.codec`), one LMDB read each, and a batch takes whole
groups where it can (:func:`take_fresh`), so that its ack deletes whole records. Records of older
envelopes are groups of one.
"""

from __future__ import annotations

import heapq

import lmdb

from otlp_meter.queue import codec, reads
from otlp_meter.queue.ledger import Ledger
from otlp_meter.queue.types import LeasedBatch

_GROUP_OVERHEAD = codec.GROUP_LENGTH_SIZE


def take_released(
    txn: lmdb.Transaction[bytes], ledger: Ledger, out: LeasedBatch, max_events: int, max_bytes: int
) -> bool:
    """Re-lease released events into ``out``; False if the batch is full."""
    cursor = txn.cursor()
    group: codec.QueuedGroup | None = None
    first = 0
    while ledger.released and len(out.seqs) < max_events:
        seq = ledger.released[0]
        if group is None or not first <= seq < first + len(group.payloads):
            group = None
            if reads.seek_holding(cursor, seq):
                first = codec.key_seq(cursor.key())
                group = reads.decode_or_none(cursor.value())
        if group is None:  # acked or moved meanwhile
            heapq.heappop(ledger.released)
            continue
        payload = group.payloads[seq - first]
        if out.seqs and out.payload_bytes + len(payload) > max_bytes:
            return False
        heapq.heappop(ledger.released)
        ledger.leased[seq] = len(payload) + _GROUP_OVERHEAD
        _add_run(out, len(out.seqs), group.enqueued_unix_nano)
        out.seqs.append(seq)
        out.payloads.append(payload)
        out.sizes.append(len(payload) + _GROUP_OVERHEAD)
        out.payload_bytes += len(payload)
    return len(out.seqs) < max_events


def take_fresh(
    txn: lmdb.Transaction[bytes],
    ledger: Ledger,
    out: LeasedBatch,
    corrupt: list[tuple[bytes, str]],
    max_events: int,
    max_bytes: int,
) -> None:
    """Lease never-leased events from ``ledger.cursor`` on into ``out``; undecodable records go to
    ``corrupt``.

    A group that does not fit whole is left for the next batch once this one is half full; before
    that, the batch takes what fits and the rest of the group waits (``ledger.cursor`` inside it).

    Events another process appended (a replay) have higher sequences than any seen so far, since
    LMDB commits writers one after the other, so the cursor finds them too.
    """
    first = len(out.seqs)
    _scan(txn, ledger, out, corrupt, max_events, max_bytes)
    # The lease book, in one C-level update for the whole batch.
    ledger.leased.update(zip(out.seqs[first:], out.sizes[first:], strict=True))
    del out.runs[_trailing_runs(out) :]


def _scan(
    txn: lmdb.Transaction[bytes],
    ledger: Ledger,
    out: LeasedBatch,
    corrupt: list[tuple[bytes, str]],
    max_events: int,
    max_bytes: int,
) -> None:
    cursor = txn.cursor()
    seqs, payloads, sizes = out.seqs, out.payloads, out.sizes
    if len(seqs) >= max_events or not reads.seek(cursor, ledger.cursor):
        return
    quarantining = ledger.quarantining
    half = max_events // 2
    size = out.payload_bytes
    for key, raw in cursor:
        if len(key) != 8 or key in quarantining:
            if key not in quarantining:
                corrupt.append((key, "key is not an 8-byte sequence number"))
            continue
        first = int.from_bytes(key, "big")
        try:
            group = codec.decode_group(raw)
        except codec.CorruptRecordError as exc:
            corrupt.append((key, str(exc)))
            ledger.cursor = max(ledger.cursor, first + 1)
            continue
        events = group.payloads
        skip = max(0, ledger.cursor - first)  # a group the last batch took part of
        room = max_events - len(seqs)
        if seqs and len(events) - skip > room and len(seqs) >= half:
            break  # the next batch takes the whole group
        take = events[skip : skip + room]
        if size + sum(map(len, take)) > max_bytes:
            take = _within(take, max_bytes - size, not seqs)
        if not take:
            break
        _add_run(out, len(seqs), group.enqueued_unix_nano)
        start = first + skip
        seqs.extend(range(start, start + len(take)))
        payloads.extend(take)
        sizes.extend(map(_GROUP_OVERHEAD.__add__, map(len, take)))
        size += sum(map(len, take))
        ledger.cursor = start + len(take)
        if len(take) < len(events) - skip or len(seqs) >= max_events:
            break
    out.payload_bytes = size


def _within(payloads: list[bytes], budget: int, at_least_one: bool) -> list[bytes]:
    """The longest prefix of ``payloads`` within ``budget`` bytes (the first one regardless, if
    ``at_least_one``: a batch always takes an event)."""
    total = 0
    for n, payload in enumerate(payloads):
        total += len(payload)
        if total > budget:
            return payloads[: max(n, 1 if at_least_one else 0)]
    return payloads


def _add_run(out: LeasedBatch, index: int, enqueued_unix_nano: int) -> None:
    runs = out.runs
    if runs and runs[-1][0] == index:
        runs[-1] = (index, enqueued_unix_nano)  # the event that started it was not taken
    elif not runs or runs[-1][1] != enqueued_unix_nano:
        runs.append((index, enqueued_unix_nano))


def _trailing_runs(out: LeasedBatch) -> int:
    """How many of ``out.runs`` to keep: not one that starts past the last event (not taken)."""
    runs, count = out.runs, len(out.seqs)
    keep = len(runs)
    while keep and runs[keep - 1][0] >= count:
        keep -= 1
    return keep
