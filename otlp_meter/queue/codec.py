"""The queue's on-disk encoding: keys, and record envelopes (1 version byte + a protobuf message).

Pure functions, no LMDB. Anything that cannot be decoded raises :class:`CorruptRecordError`; the
queue moves such records aside instead of crashing on them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError as _ProtobufDecodeError

from otlp_meter.events import EncodedEvent, Rejection, Signal
from otlp_meter.queue.proto import record_pb2

ENVELOPE_VERSION = 1
"""Version byte in front of every stored record; version 1 = ``proto/otlp_meter/queue/v1``."""

_VERSION_PREFIX = bytes([ENVELOPE_VERSION])
_SEQ = struct.Struct(">Q")
_EXPIRY_KEY = struct.Struct(">Q16s")

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
    """A decoded ``events`` value."""

    source: str
    id: str
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


def event_dedupe_key(source: str, id: str) -> bytes:
    """16-byte key for an event's (source, id).

    Hashed because LMDB keys are limited to 511 bytes and sources/ids are not; 128 bits make a
    collision (which would wrongly drop an event) negligible even at 10⁸ keys.
    """
    src = source.encode()
    h = hashlib.blake2b(b"E", digest_size=16)
    h.update(len(src).to_bytes(4, "big"))
    h.update(src)
    h.update(id.encode())
    return h.digest()


def rejection_dedupe_key(rejection: Rejection) -> bytes:
    """16-byte key for a rejected record, so a retried request does not dead-letter it twice."""
    rule = rejection.rule.encode()
    h = hashlib.blake2b(b"R", digest_size=16)
    h.update(rejection.signal.encode() + b"\0")
    h.update(len(rule).to_bytes(4, "big"))
    h.update(rule)
    h.update(rejection.original)
    return h.digest()


def expiry_index_key(expiry_unix_nano: int, dedupe_key: bytes) -> bytes:
    """Key of the dedupe expiry index: sorts by expiry, so pruning reads from the front."""
    return _EXPIRY_KEY.pack(expiry_unix_nano, dedupe_key)


def split_expiry_index_key(key: bytes) -> tuple[int, bytes]:
    expiry, dedupe_key = _EXPIRY_KEY.unpack(key)
    return int(expiry), bytes(dedupe_key)


def encode_expiry(expiry_unix_nano: int) -> bytes:
    return _SEQ.pack(expiry_unix_nano)


def decode_expiry(value: bytes) -> int:
    if len(value) != _SEQ.size:
        return 0  # unreadable → treat as expired; it is rewritten on next use
    return int(_SEQ.unpack(value)[0])


# --- records ----------------------------------------------------------------------------------


def encode_event(event: EncodedEvent, enqueued_unix_nano: int, attempts: int = 0) -> bytes:
    message = record_pb2.QueuedEvent(
        source=event.source,
        id=event.id,
        payload=event.payload,
        enqueued_unix_nano=enqueued_unix_nano,
        attempts=attempts,
    )
    return _VERSION_PREFIX + message.SerializeToString()


def decode_event(raw: bytes) -> QueuedRecord:
    message = record_pb2.QueuedEvent()
    _parse(message, raw)
    if not message.id or not message.payload:
        raise CorruptRecordError("queued event without id or payload")
    return QueuedRecord(
        source=message.source,
        id=message.id,
        payload=message.payload,
        enqueued_unix_nano=message.enqueued_unix_nano,
        attempts=message.attempts,
    )


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
    if raw[0] != ENVELOPE_VERSION:
        raise CorruptRecordError(f"unknown envelope version {raw[0]}")
    try:
        message.ParseFromString(raw[1:])
    except (_ProtobufDecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string field
        raise CorruptRecordError(f"undecodable {type(message).__name__}: {exc}") from exc
