"""Taking leases: which stored events the next batch gets. Called by :meth:`LmdbQueue.lease` with
the ledger's lock held and a read transaction open on ``events`` (see the lease-book invariant in
:class:`~otlp_meter.queue.ledger.Ledger`).

This is the exporter's per-event path, so :func:`take_fresh` keeps the work per event small: it
fills a :class:`~otlp_meter.queue.types.LeasedBatch` (parallel lists, no object per event), slices
an envelope-2 record's payload without a parse, and reads the enqueue time only where it differs
from the previous record's (the records of one commit share their 13-byte header: ``startswith``).
Anything else goes through :func:`codec.decode_event` (envelope 1, or corrupt).
"""

from __future__ import annotations

import heapq

import lmdb

from otlp_meter.queue import codec, reads
from otlp_meter.queue.ledger import Ledger
from otlp_meter.queue.types import LeasedBatch

_V2 = codec.EVENT_ENVELOPE
_HEADER = codec.EVENT_HEADER_SIZE


def take_released(
    txn: lmdb.Transaction[bytes], ledger: Ledger, out: LeasedBatch, max_events: int, max_bytes: int
) -> bool:
    """Re-lease released events into ``out``; False if the batch is full."""
    while ledger.released and len(out.seqs) < max_events:
        seq = ledger.released[0]
        raw = txn.get(codec.seq_key(seq))
        record = reads.decode_or_none(raw)
        if raw is None or record is None:  # acked or moved meanwhile
            heapq.heappop(ledger.released)
            continue
        if out.seqs and out.payload_bytes + len(record.payload) > max_bytes:
            return False
        heapq.heappop(ledger.released)
        ledger.leased[seq] = len(raw)
        _add_run(out, len(out.seqs), record.enqueued_unix_nano)
        out.seqs.append(seq)
        out.payloads.append(record.payload)
        out.sizes.append(len(raw))
        out.payload_bytes += len(record.payload)
    return len(out.seqs) < max_events


def take_fresh(
    txn: lmdb.Transaction[bytes],
    ledger: Ledger,
    out: LeasedBatch,
    corrupt: list[tuple[bytes, str]],
    max_events: int,
    max_bytes: int,
) -> None:
    """Lease never-leased events from ``ledger.cursor`` on into ``out``; undecodable ones go to
    ``corrupt``.

    Events another process appended (a replay) have higher sequences than any seen so far, since
    LMDB commits writers one after the other, so the cursor finds them too.
    """
    first = len(out.seqs)
    _scan(txn, ledger, out, corrupt, max_events - first, max_bytes)
    # The lease book, in one C-level update for the whole batch.
    ledger.leased.update(zip(out.seqs[first:], out.sizes[first:], strict=True))
    del out.runs[_trailing_runs(out) :]


def _scan(
    txn: lmdb.Transaction[bytes],
    ledger: Ledger,
    out: LeasedBatch,
    corrupt: list[tuple[bytes, str]],
    room: int,
    max_bytes: int,
) -> None:
    cursor = txn.cursor()
    if room <= 0 or not cursor.set_range(codec.seq_key(ledger.cursor)):
        return
    quarantining = ledger.quarantining
    seqs, payloads, sizes = out.seqs, out.payloads, out.sizes
    add_seq, add_payload, add_size = seqs.append, payloads.append, sizes.append
    from_bytes = int.from_bytes
    size = out.payload_bytes
    header = b""  # the last envelope-2 header seen; b"": none
    seq = ledger.cursor - 1
    for key, raw in cursor:
        if len(key) != 8 or key in quarantining:
            if key not in quarantining:
                corrupt.append((key, "key is not an 8-byte sequence number"))
            continue
        seq = from_bytes(key, "big")
        stored = len(raw)
        if header and stored > _HEADER and raw.startswith(header):
            # The same header as the record before (same commit): an envelope-2 event.
            payload = raw[_HEADER:]
        elif stored > _HEADER and raw[0] == _V2:
            # codec.is_event_v2, inlined: a new commit's header.
            header = raw[:_HEADER]
            payload = raw[_HEADER:]
            _add_run(out, len(seqs), from_bytes(raw[1:9], "big"))
        else:
            try:
                record = codec.decode_event(raw)
            except codec.CorruptRecordError as exc:
                corrupt.append((key, str(exc)))
                ledger.cursor = seq + 1
                continue
            header = b""
            payload = record.payload
            _add_run(out, len(seqs), record.enqueued_unix_nano)
        if seqs and size + len(payload) > max_bytes:
            ledger.cursor = seq
            out.payload_bytes = size
            return
        add_seq(seq)
        add_payload(payload)
        add_size(stored)
        size += len(payload)
        room -= 1
        if room <= 0:
            break
    ledger.cursor = seq + 1
    out.payload_bytes = size


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
