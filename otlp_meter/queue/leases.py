"""Taking leases: which stored events the next batch gets. Called by :meth:`LmdbQueue.lease` with
the ledger's lock held and a read transaction open on ``events`` (see the lease-book invariant in
:class:`~otlp_meter.queue.ledger.Ledger`)."""

from __future__ import annotations

import heapq

import lmdb

from otlp_meter.queue import codec, reads
from otlp_meter.queue.ledger import Ledger
from otlp_meter.queue.types import LeasedEvent


def take_released(
    txn: lmdb.Transaction[bytes], ledger: Ledger, out: list[LeasedEvent], max_events: int, max_bytes: int
) -> int:
    """Re-lease released events; returns the payload bytes taken, or -1 if the batch is full."""
    size = 0
    while ledger.released and len(out) < max_events:
        seq = ledger.released[0]
        record = reads.decode_or_none(txn.get(codec.seq_key(seq)))
        if record is None:  # acked or moved meanwhile
            heapq.heappop(ledger.released)
            continue
        if out and size + len(record.payload) > max_bytes:
            return -1
        heapq.heappop(ledger.released)
        ledger.leased.add(seq)
        out.append(reads.leased(seq, record))
        size += len(record.payload)
    return size if len(out) < max_events else -1


def take_fresh(
    txn: lmdb.Transaction[bytes],
    ledger: Ledger,
    out: list[LeasedEvent],
    corrupt: list[tuple[bytes, str]],
    max_events: int,
    max_bytes: int,
    size: int,
) -> None:
    """Lease never-leased events from ``ledger.cursor`` on; undecodable ones go to ``corrupt``.

    Events another process appended (a replay) have higher sequences than any seen so far, since
    LMDB commits writers one after the other, so the cursor finds them too.
    """
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
        out.append(reads.leased(seq, record))
        size += len(record.payload)
        if len(out) >= max_events:
            return
