"""Read-side helpers of the queue: decoding what read-only transactions find, for leases,
statistics and dead-letter listings. No writes here."""

from __future__ import annotations

import lmdb

from otlp_meter.queue import codec
from otlp_meter.queue.ledger import Handles
from otlp_meter.queue.types import DeadLetterEntry


def decode_or_none(raw: bytes | None) -> codec.QueuedGroup | None:
    if raw is None:
        return None
    try:
        return codec.decode_group(raw)
    except codec.CorruptRecordError:
        return None


def holds(key: bytes, raw: bytes, seq: int) -> bool:
    """Whether the ``events`` record ``key`` → ``raw`` holds sequence ``seq`` (a group holds the
    sequences from its key on, one per event)."""
    if len(key) != 8:
        return False
    first = codec.key_seq(key)
    return first <= seq < first + codec.record_count(raw)


def seek(cursor: lmdb.Cursor[bytes], seq: int) -> bool:
    """Put ``cursor`` (on ``events``) on the record holding ``seq``, else on the first record
    after it; False if there is none. Whether it holds ``seq``: :func:`holds`."""
    key = codec.seq_key(seq)
    if cursor.set_range(key):
        if cursor.key() == key:
            return True
        if cursor.prev() and holds(cursor.key(), cursor.value(), seq):
            return True
        return cursor.set_range(key)
    return cursor.last() and holds(cursor.key(), cursor.value(), seq)


def seek_holding(cursor: lmdb.Cursor[bytes], seq: int) -> bool:
    """Put ``cursor`` on the record holding ``seq``; False if no record holds it."""
    if not seek(cursor, seq):
        return False
    key = cursor.key()
    return key == codec.seq_key(seq) or holds(key, cursor.value(), seq)


def oldest_enqueued_at(txn: lmdb.Transaction[bytes], h: Handles) -> float | None:
    cursor = txn.cursor(db=h.events)
    if not cursor.first():
        return None
    for tried, (_key, raw) in enumerate(cursor):
        if tried >= 16:  # a run of corrupt records: not worth scanning further for a gauge
            break
        record = decode_or_none(raw)
        if record is not None:
            return record.enqueued_unix_nano / 1e9
    return None


def list_dead(txn: lmdb.Transaction[bytes], h: Handles, limit: int, after: int) -> list[DeadLetterEntry]:
    """Up to ``limit`` dead letters with a sequence above ``after``, oldest first."""
    entries: list[DeadLetterEntry] = []
    cursor = txn.cursor(db=h.dead)
    if limit <= 0 or not cursor.set_range(codec.seq_key(after + 1)):
        return entries
    for key, raw in cursor:
        if len(key) == 8:
            entries.append(dead_entry(codec.key_seq(key), raw))
        if len(entries) >= limit:
            break
    return entries


def last_dead_seq(txn: lmdb.Transaction[bytes], h: Handles) -> int:
    """The highest dead-letter sequence stored, 0 when there is none."""
    cursor = txn.cursor(db=h.dead)
    if cursor.last() and len(cursor.key()) == 8:
        return codec.key_seq(cursor.key())
    return 0


def dead_entry(seq: int, raw: bytes) -> DeadLetterEntry:
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
