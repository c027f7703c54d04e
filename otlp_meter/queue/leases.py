"""Taking leases: which stored events the next batch gets. Called by :meth:`LmdbQueue.lease` with
the ledger's lock held and a read transaction open on ``events`` (see the lease-book invariant in
:class:`~otlp_meter.queue.ledger.Ledger`).

This is the exporter's per-event path, so :func:`take_fresh` keeps the work per event small: an
envelope-2 record is checked by its version byte and length and sliced (no parse), and one NamedTuple
is built per event. Anything else goes through :func:`codec.decode_event` (envelope 1, or corrupt).
"""

from __future__ import annotations

import heapq

import lmdb

from otlp_meter.queue import codec, reads
from otlp_meter.queue.ledger import Ledger
from otlp_meter.queue.types import LeasedEvent

_V2 = codec.EVENT_ENVELOPE
_HEADER = codec.EVENT_HEADER_SIZE


def take_released(
    txn: lmdb.Transaction[bytes], ledger: Ledger, out: list[LeasedEvent], max_events: int, max_bytes: int
) -> int:
    """Re-lease released events; returns the payload bytes taken, or -1 if the batch is full."""
    size = 0
    while ledger.released and len(out) < max_events:
        seq = ledger.released[0]
        raw = txn.get(codec.seq_key(seq))
        record = reads.decode_or_none(raw)
        if raw is None or record is None:  # acked or moved meanwhile
            heapq.heappop(ledger.released)
            continue
        if out and size + len(record.payload) > max_bytes:
            return -1
        heapq.heappop(ledger.released)
        ledger.leased[seq] = len(raw)
        out.append(LeasedEvent(seq, record.payload, record.enqueued_unix_nano, len(raw)))
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
    quarantining, leased, append = ledger.quarantining, ledger.leased, out.append
    from_bytes, new = int.from_bytes, tuple.__new__  # LeasedEvent(...) without its Python-level __new__
    room = max_events - len(out)
    seq = ledger.cursor - 1
    for key, raw in cursor:
        if len(key) != 8 or key in quarantining:
            if key not in quarantining:
                corrupt.append((key, "key is not an 8-byte sequence number"))
            continue
        seq = from_bytes(key, "big")
        stored = len(raw)
        if stored > _HEADER and raw[0] == _V2:
            # codec.is_event_v2, inlined: this loop runs once per event out.
            payload = raw[_HEADER:]
            enqueued = from_bytes(raw[1:9], "big")
        else:
            try:
                record = codec.decode_event(raw)
            except codec.CorruptRecordError as exc:
                corrupt.append((key, str(exc)))
                ledger.cursor = seq + 1
                continue
            payload, enqueued = record.payload, record.enqueued_unix_nano
        if out and size + len(payload) > max_bytes:
            ledger.cursor = seq
            return
        leased[seq] = stored
        append(new(LeasedEvent, (seq, payload, enqueued, stored)))
        size += len(payload)
        room -= 1
        if room <= 0:
            ledger.cursor = seq + 1
            return
    ledger.cursor = seq + 1
