"""The queue's on-disk encoding: keys, and record envelopes (a version byte, then the record).

Envelope versions (the first byte of every value in ``events`` and ``dead``):

* **2** — queued events (``events``), written by schemas 2 and 3 (still read: one event each)::

      0      1                          9              13
      | 0x02 | enqueued_unix_nano u64BE | attempts u32BE | payload: the CloudEvent JSON object …

  A fixed 13-byte header and the payload as it is sent, so leasing an event is a slice, with no
  parse. The event's ``source`` and ``id`` are not repeated: the JSON object holds them, and the
  rare paths that need them (dead-lettering, logging a refused event) read them from it
  (:func:`event_attributes`).
* **3** — a *group* of queued events (``events``), written since schema 4: the events one append
  brought, up to :data:`EVENTS_PER_GROUP`, in one LMDB record under the sequence of the first; the
  group holds the sequences from its key up to key + count - 1::

      0      1                          9              13          17                 17 + 4n
      | 0x03 | enqueued_unix_nano u64BE | attempts u32BE | n u32BE | n x length u32BE | payloads …

  One record per group instead of one per event: leasing, acking and appending cost an LMDB call
  per group (py-lmdb releases and takes back the GIL around every call). An ack of part of a group
  rewrites the rest under the sequence of its first event (:meth:`Group.delete_events`).
* **1** — ``proto/otlp_meter/queue/v1``: dead letters (``DeadLetter``; still written), and queued
  events written before schema 2 (``QueuedEvent``; still read, so a queue drains after an upgrade).

Pure functions, no LMDB. Anything that cannot be decoded raises :class:`CorruptRecordError`; the
queue moves such records aside instead of crashing on them.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import orjson
from google.protobuf.message import DecodeError as _ProtobufDecodeError

from otlp_meter import native
from otlp_meter.events import EncodedEvent, Rejection, Signal
from otlp_meter.queue.proto import record_pb2

PROTOBUF_ENVELOPE = 1
"""Version byte of a ``proto/otlp_meter/queue/v1`` record: dead letters, and events of schema 1."""
EVENT_ENVELOPE = 2
"""Version byte of a queued event written since schema 2: fixed header + JSON payload."""
EVENT_HEADER = struct.Struct(">BQI")
"""Version, enqueued time (Unix ns), attempts: the first 13 bytes of an envelope-2 event."""
EVENT_HEADER_SIZE = EVENT_HEADER.size

GROUP_ENVELOPE = 3
"""Version byte of a group of queued events, written since schema 4."""
GROUP_HEADER = struct.Struct(">BQII")
"""Version, enqueued time (Unix ns), attempts, event count: the first 17 bytes of a group."""
GROUP_HEADER_SIZE = GROUP_HEADER.size
GROUP_LENGTH_SIZE = 4
"""Bytes a group stores per event besides its payload: its length (u32, big-endian)."""
EVENTS_PER_GROUP = 500
"""Most events in one group: half the exporter's default batch, so batches take whole groups (a
queue whose exporter sends smaller batches makes groups of its batch size: ``LmdbQueue``'s
``group_events``)."""
BYTES_PER_GROUP = 128 * 1024
"""Most payload bytes in one group (one event larger than this is a group of its own). An ack of
part of a group writes the rest back, so this stays below the map's headroom for deletes
(:func:`~otlp_meter.queue.group.storage_headroom`, at least 256 KiB)."""
_LENGTHS_SWAP = sys.byteorder == "little"
_U32 = "I" if array("I").itemsize == GROUP_LENGTH_SIZE else "L"

_VERSION_PREFIX = bytes([PROTOBUF_ENVELOPE])
SEQ = struct.Struct(">Q")
"""Sequence keys and expiry values: 8-byte big-endian."""
_SEQ = SEQ
_EXPIRY_KEY = struct.Struct(">Q16s")
DEDUPE_KEY_SIZE = 16

DeadLetterKind = Literal["event", "otlp_logs", "otlp_metrics"]

_KIND_TO_PROTO: dict[DeadLetterKind, record_pb2.DeadLetterKind] = {
    "event": record_pb2.DEAD_LETTER_KIND_EVENT,
    "otlp_logs": record_pb2.DEAD_LETTER_KIND_OTLP_LOGS,
    "otlp_metrics": record_pb2.DEAD_LETTER_KIND_OTLP_METRICS,
}
_PROTO_TO_KIND: dict[int, DeadLetterKind] = {int(v): k for k, v in _KIND_TO_PROTO.items()}
_SIGNAL_TO_KIND: dict[Signal, DeadLetterKind] = {
    "logs": "otlp_logs",
    "metrics": "otlp_metrics",
    "events": "event",
}


class CorruptRecordError(ValueError):
    """Stored bytes are not a record this version understands (unknown envelope, bad protobuf)."""


@dataclass(frozen=True, slots=True)
class QueuedRecord:
    """A decoded ``events`` value (either envelope version)."""

    payload: bytes
    enqueued_unix_nano: int
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """A decoded ``dead`` value."""

    kind: DeadLetterKind
    source: str
    id: str
    payload: bytes
    reason: str
    attempts: int
    dead_unix_nano: int
    rule: str


# --- keys -------------------------------------------------------------------------------------


def seq_key(seq: int) -> bytes:
    """8-byte big-endian sequence number: LMDB's byte order is then the append order."""
    return _SEQ.pack(seq)


def key_seq(key: bytes) -> int:
    return int(_SEQ.unpack(key)[0])


DEDUPE_TIME_BYTES = 6
"""Dedupe keys of events (since schema 3) start with the event's time: 6-byte big-endian Unix ms."""
DEDUPE_HASH_BYTES = DEDUPE_KEY_SIZE - DEDUPE_TIME_BYTES
MAX_DEDUPE_MS = (1 << 8 * DEDUPE_TIME_BYTES) - 1
"""The latest time a key can hold (year 10889); later times are clamped to it."""


def event_dedupe_key(source: str, id: str, time_ms: int = 0) -> bytes:
    """16-byte key for an event's (source, id) at its time (schema 3).

    The event's time in Unix milliseconds, 6 bytes big-endian (clamped to 0 … 2⁴⁸ - 1; 0 when the
    event has no time), then the first 10 bytes of :func:`legacy_event_dedupe_key`. Hashed because
    LMDB keys are limited to 511 bytes and sources/ids are not. Ordered by time so that the keys a
    commit remembers land on the rightmost pages of the B-tree and the keys evicted or expired come
    off the leftmost ones, instead of every key dirtying a page of its own (random keys at 10M keys
    wrote ~12 MB per commit, these ~0.4 MB). Two different events collide (the later is wrongly
    dropped) only if they have the same millisecond and the same 80-bit hash: with n events in one
    millisecond about n²/2⁸¹, ~10⁻²² for 20 events (20,000 events/s).

    A copy of an event is recognised only if it has the same time: a retransmission with another
    ``time`` for the same (source, id) gets another key (OpenMeter's own deduplication by
    (source, id) is what catches that one).
    """
    return _time_prefix(time_ms) + legacy_event_dedupe_key(source, id)[:DEDUPE_HASH_BYTES]


def legacy_event_dedupe_key(source: str, id: str) -> bytes:
    """The 16-byte key of an event's (source, id) before schema 3: BLAKE2b-128 of the two, no time.

    Still looked up while a queue upgraded from schema 2 may hold such keys within their window.
    """
    return hashlib.blake2b(_source_prefix(source) + id.encode(), digest_size=16).digest()


def _time_prefix(time_ms: int) -> bytes:
    if not 0 <= time_ms <= MAX_DEDUPE_MS:
        time_ms = 0 if time_ms < 0 else MAX_DEDUPE_MS
    return time_ms.to_bytes(DEDUPE_TIME_BYTES, "big")


def event_dedupe_keys(events: Sequence[EncodedEvent]) -> list[bytes]:
    """:func:`event_dedupe_key` of each event, in order (in C when the extension is available)."""
    if native.module is not None and native.available():
        keys: list[bytes] = native.module.dedupe_keys(events, DEDUPE_TIME_BYTES, DEDUPE_HASH_BYTES)
        return keys
    return python_event_dedupe_keys(events)


def python_event_dedupe_keys(events: Iterable[EncodedEvent]) -> list[bytes]:
    """:func:`event_dedupe_keys` in Python (the prefix hashed for a source is built once per call: a
    request's events mostly share a few sources)."""
    prefixes: dict[str, bytes] = {}
    blake2b = hashlib.blake2b
    size, top = DEDUPE_HASH_BYTES, MAX_DEDUPE_MS
    keys: list[bytes] = []
    append = keys.append
    for source, id, _payload, time_ms in events:
        prefix = prefixes.get(source)
        if prefix is None:
            prefix = prefixes[source] = _source_prefix(source)
        if not 0 <= time_ms <= top:
            time_ms = 0 if time_ms < 0 else top
        append(time_ms.to_bytes(6, "big") + blake2b(prefix + id.encode(), digest_size=16).digest()[:size])
    return keys


def event_dedupe_keys_with_legacy(events: Iterable[EncodedEvent]) -> tuple[list[bytes], list[bytes]]:
    """:func:`event_dedupe_key` and :func:`legacy_event_dedupe_key` of each event, in order."""
    prefixes: dict[str, bytes] = {}
    keys: list[bytes] = []
    legacy: list[bytes] = []
    for source, id, _payload, time_ms in events:
        prefix = prefixes.get(source)
        if prefix is None:
            prefix = prefixes[source] = _source_prefix(source)
        old = hashlib.blake2b(prefix + id.encode(), digest_size=16).digest()
        keys.append(_time_prefix(time_ms) + old[:DEDUPE_HASH_BYTES])
        legacy.append(old)
    return keys, legacy


def _source_prefix(source: str) -> bytes:
    # b"E", the source's length and the source: hashing the concatenation is hashing the parts
    # one update at a time, so these are the keys queues have always stored.
    src = source.encode()
    return b"E" + len(src).to_bytes(4, "big") + src


def rejection_dedupe_key(rejection: Rejection) -> bytes:
    """16-byte key for a rejected record, so a retried request does not dead-letter it twice.

    Unchanged by schema 3 (a random hash, no time in front): rejections are rare.
    """
    rule = rejection.rule.encode()
    h = hashlib.blake2b(b"R", digest_size=16)
    h.update(rejection.signal.encode() + b"\0")
    h.update(len(rule).to_bytes(4, "big"))
    h.update(rule)
    h.update(rejection.original)
    return h.digest()


def expiry_index_key(expiry_unix_nano: int, dedupe_key: bytes) -> bytes:
    """Key of a dedupe expiry index entry: sorts by expiry, so pruning reads from the front.

    ``dedupe_key`` is the entry's first key; it only makes the index key unique. An entry written
    since schema 2 lists its keys in its value (:func:`expiry_index_value`); one written before
    has an empty value and stands for ``dedupe_key`` alone.
    """
    return _EXPIRY_KEY.pack(expiry_unix_nano, dedupe_key)


def split_expiry_index_key(key: bytes) -> tuple[int, bytes]:
    expiry, dedupe_key = _EXPIRY_KEY.unpack(key)
    return int(expiry), bytes(dedupe_key)


def expiry_index_value(dedupe_keys: Iterable[bytes]) -> bytes:
    """Value of a multi-key expiry index entry: the 16-byte dedupe keys, concatenated."""
    return b"".join(dedupe_keys)


def expiry_index_keys(key: bytes, value: bytes) -> list[bytes]:
    """The dedupe keys an expiry index entry stands for (either format; a torn tail is ignored)."""
    if not value:
        return [key[8:]]
    size = DEDUPE_KEY_SIZE
    return [value[i : i + size] for i in range(0, len(value) - size + 1, size)]


def encode_expiry(expiry_unix_nano: int) -> bytes:
    return _SEQ.pack(expiry_unix_nano)


def decode_expiry(value: bytes) -> int:
    if len(value) != _SEQ.size:
        return 0  # unreadable → treat as expired; it is rewritten on next use
    return int(_SEQ.unpack(value)[0])


# --- records ----------------------------------------------------------------------------------


def event_header(enqueued_unix_nano: int, attempts: int = 0) -> bytes:
    """The 13 bytes in front of every envelope-2 event (the same for all events of one commit)."""
    return EVENT_HEADER.pack(EVENT_ENVELOPE, enqueued_unix_nano, attempts)


def encode_event(event: EncodedEvent, enqueued_unix_nano: int, attempts: int = 0) -> bytes:
    """An envelope-2 ``events`` value: the header, then the payload as it is sent."""
    return event_header(enqueued_unix_nano, attempts) + event.payload


@dataclass(frozen=True, slots=True)
class QueuedGroup:
    """A decoded ``events`` record: a group (envelope 3), or a single event (envelopes 1 and 2)."""

    payloads: list[bytes]
    enqueued_unix_nano: int
    attempts: int


def encode_group(payloads: Sequence[bytes], enqueued_unix_nano: int, attempts: int = 0) -> bytes:
    """An envelope-3 ``events`` value holding ``payloads`` (at least one), in order."""
    lengths = array(_U32, map(len, payloads))
    if _LENGTHS_SWAP:
        lengths.byteswap()
    header = GROUP_HEADER.pack(GROUP_ENVELOPE, enqueued_unix_nano, attempts, len(payloads))
    return b"".join((header, lengths.tobytes(), *payloads))


def encode_groups(
    payloads: Sequence[bytes], enqueued_unix_nano: int, max_events: int = EVENTS_PER_GROUP
) -> list[bytes]:
    """``payloads`` in groups of at most ``max_events`` events and about :data:`BYTES_PER_GROUP`
    bytes, in order (the records one append stores)."""
    groups: list[bytes] = []
    start, size = 0, 0
    for n, payload in enumerate(payloads):
        if n > start and (n - start >= max_events or size + len(payload) > BYTES_PER_GROUP):
            groups.append(encode_group(payloads[start:n], enqueued_unix_nano))
            start, size = n, 0
        size += len(payload)
    if start < len(payloads):
        groups.append(encode_group(payloads[start:], enqueued_unix_nano))
    return groups


def record_count(raw: bytes) -> int:
    """How many events an ``events`` record holds, from its header alone (1 unless a group says
    more; a group with an unreadable header counts as 1). A damaged count is bounded by what the
    record's bytes could hold (a length and at least one byte per event)."""
    if len(raw) >= GROUP_HEADER_SIZE and raw[0] == GROUP_ENVELOPE:
        count: int = GROUP_HEADER.unpack_from(raw)[3]
        return max(1, min(count, (len(raw) - GROUP_HEADER_SIZE) // (GROUP_LENGTH_SIZE + 1)))
    return 1


def decode_group(raw: bytes) -> QueuedGroup:
    """A stored ``events`` record of any envelope; CorruptRecordError if it is none of them.

    A group's lengths must add up to its size exactly, and no payload may be empty.
    """
    if raw[:1] != bytes([GROUP_ENVELOPE]):
        record = decode_event(raw)
        return QueuedGroup([record.payload], record.enqueued_unix_nano, record.attempts)
    if len(raw) < GROUP_HEADER_SIZE:
        raise CorruptRecordError(f"event group (envelope 3) of {len(raw)} bytes: shorter than its header")
    _, enqueued, attempts, count = GROUP_HEADER.unpack_from(raw)
    start = GROUP_HEADER_SIZE + GROUP_LENGTH_SIZE * count
    if count == 0 or start > len(raw):
        raise CorruptRecordError(f"event group (envelope 3) of {len(raw)} bytes claims {count} events")
    lengths = array(_U32)
    lengths.frombytes(raw[GROUP_HEADER_SIZE:start])
    if _LENGTHS_SWAP:
        lengths.byteswap()
    ends = list(accumulate(lengths, initial=start))
    if ends[-1] != len(raw) or 0 in lengths:
        raise CorruptRecordError(
            f"event group (envelope 3) of {len(raw)} bytes: its {count} lengths do not add up to it"
        )
    payloads = list(map(raw.__getitem__, map(slice, ends[:-1], ends[1:])))
    return QueuedGroup(payloads, enqueued, attempts)


def is_event_v2(raw: bytes) -> bool:
    """Whether ``raw`` is an envelope-2 event: the version byte, the header, a non-empty payload.

    The payload itself is not checked (a parse per lease is what this envelope exists to avoid;
    LMDB's copy-on-write B-tree does not tear values). The lease loop inlines this same test.
    """
    return len(raw) > EVENT_HEADER_SIZE and raw[0] == EVENT_ENVELOPE


def decode_event(raw: bytes) -> QueuedRecord:
    """A stored event of either envelope version; CorruptRecordError if it is neither."""
    if is_event_v2(raw):
        _, enqueued, attempts = EVENT_HEADER.unpack_from(raw)
        return QueuedRecord(raw[EVENT_HEADER_SIZE:], enqueued, attempts)
    if raw[:1] == bytes([EVENT_ENVELOPE]):
        raise CorruptRecordError("queued event (envelope 2) without a payload after its header")
    message = record_pb2.QueuedEvent()
    _parse(message, raw)
    if not message.id or not message.payload:
        raise CorruptRecordError("queued event without id or payload")
    return QueuedRecord(
        payload=message.payload,
        enqueued_unix_nano=message.enqueued_unix_nano,
        attempts=message.attempts,
    )


def event_attributes(payload: bytes) -> tuple[str, str]:
    """``(source, id)`` of a stored event, read from its JSON; empty strings where unreadable.

    For the rare paths only (a dead letter, a log line): the lease path never parses payloads.
    """
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    source, id = document.get("source"), document.get("id")
    return (source if isinstance(source, str) else ""), (id if isinstance(id, str) else "")


def encode_dead_letter(record: DeadRecord) -> bytes:
    message = record_pb2.DeadLetter(
        kind=_KIND_TO_PROTO[record.kind],
        source=record.source,
        id=record.id,
        payload=record.payload,
        reason=record.reason,
        attempts=record.attempts,
        dead_unix_nano=record.dead_unix_nano,
        rule=record.rule,
    )
    return _VERSION_PREFIX + message.SerializeToString()


def decode_dead_letter(raw: bytes) -> DeadRecord:
    message = record_pb2.DeadLetter()
    _parse(message, raw)
    kind = _PROTO_TO_KIND.get(message.kind)
    if kind is None:
        raise CorruptRecordError(f"dead letter of unknown kind {message.kind}")
    return DeadRecord(
        kind=kind,
        source=message.source,
        id=message.id,
        payload=message.payload,
        reason=message.reason,
        attempts=message.attempts,
        dead_unix_nano=message.dead_unix_nano,
        rule=message.rule,
    )


def dead_record_for_rejection(rejection: Rejection, dead_unix_nano: int) -> DeadRecord:
    """The dead letter that keeps a record the rules could not map (``payload`` = the original)."""
    return DeadRecord(
        kind=_SIGNAL_TO_KIND[rejection.signal],
        source="",
        id="",
        payload=rejection.original,
        reason=rejection.reason,
        attempts=0,
        dead_unix_nano=dead_unix_nano,
        rule=rejection.rule,
    )


def _parse(message: record_pb2.QueuedEvent | record_pb2.DeadLetter, raw: bytes) -> None:
    if not raw:
        raise CorruptRecordError("empty record")
    if raw[0] != PROTOBUF_ENVELOPE:
        raise CorruptRecordError(f"unknown envelope version {raw[0]}")
    try:
        message.ParseFromString(raw[1:])
    except (_ProtobufDecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string field
        raise CorruptRecordError(f"undecodable {type(message).__name__}: {exc}") from exc
