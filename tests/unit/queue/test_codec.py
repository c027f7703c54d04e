"""The on-disk envelopes: version 2 (a fixed header, then the JSON) for events, version 1 (protobuf)
for dead letters and for events written before schema 2."""

from __future__ import annotations

import pytest

from otlp_meter.events import EncodedEvent
from otlp_meter.queue import codec
from otlp_meter.queue.proto import record_pb2

PAYLOAD = b'{"specversion":"1.0","id":"i","source":"s","type":"t","data":{}}'


def v1_event(source: str, id: str, payload: bytes, enqueued_unix_nano: int, attempts: int = 0) -> bytes:
    """An ``events`` value as otlp-meter wrote it before schema 2."""
    message = record_pb2.QueuedEvent(
        source=source, id=id, payload=payload, enqueued_unix_nano=enqueued_unix_nano, attempts=attempts
    )
    return b"\x01" + message.SerializeToString()


def test_an_event_record_round_trips() -> None:
    raw = codec.encode_event(EncodedEvent(source="s", id="i", payload=PAYLOAD), enqueued_unix_nano=123)

    assert raw[0] == codec.EVENT_ENVELOPE
    assert codec.decode_event(raw) == codec.QueuedRecord(PAYLOAD, 123, 0)


def test_an_event_record_is_a_13_byte_header_and_the_payload_as_sent() -> None:
    raw = codec.encode_event(EncodedEvent("s", "i", PAYLOAD), enqueued_unix_nano=(1 << 63) + 5, attempts=7)

    assert raw == b"\x02" + ((1 << 63) + 5).to_bytes(8, "big") + (7).to_bytes(4, "big") + PAYLOAD
    assert codec.decode_event(raw) == codec.QueuedRecord(PAYLOAD, (1 << 63) + 5, 7)


def test_an_event_record_of_envelope_1_is_still_read() -> None:
    raw = v1_event("s", "i", PAYLOAD, enqueued_unix_nano=123, attempts=2)

    assert codec.decode_event(raw) == codec.QueuedRecord(PAYLOAD, 123, 2)


@pytest.mark.parametrize(
    "raw",
    [b"\x02", b"\x02" + bytes(8), b"\x02" + bytes(12)],
    ids=["version-only", "short-header", "no-payload"],
)
def test_an_envelope_2_event_without_header_or_payload_is_corrupt(raw: bytes) -> None:
    with pytest.raises(codec.CorruptRecordError):
        codec.decode_event(raw)


def test_an_events_source_and_id_are_read_from_its_payload() -> None:
    assert codec.event_attributes(PAYLOAD) == ("s", "i")
    assert codec.event_attributes(b"not json") == ("", "")
    assert codec.event_attributes(b'{"id":1}') == ("", "")
    assert codec.event_attributes(b"[]") == ("", "")


def test_a_dead_letter_round_trips() -> None:
    record = codec.DeadRecord("otlp_metrics", "", "", b"\x0a", "bad value", 0, 5, "rule-a")

    assert codec.decode_dead_letter(codec.encode_dead_letter(record)) == record


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x03" + b"future" * 4, b"\x01\xff\xff\xff", b"\x01\x0a\x02\xff\xfe", b"\x01"],
    ids=["empty", "unknown-version", "bad-protobuf", "bad-utf8", "no-id"],
)
def test_undecodable_bytes_raise_corrupt_record_error(raw: bytes) -> None:
    with pytest.raises(codec.CorruptRecordError):
        codec.decode_event(raw)


def test_sequence_keys_sort_in_numeric_order() -> None:
    assert sorted([codec.seq_key(256), codec.seq_key(2), codec.seq_key(1 << 40)]) == [
        codec.seq_key(2),
        codec.seq_key(256),
        codec.seq_key(1 << 40),
    ]
    assert codec.key_seq(codec.seq_key(1 << 40)) == 1 << 40


def test_dedupe_keys_are_fixed_size_and_unambiguous() -> None:
    assert len(codec.event_dedupe_key("s" * 1000, "i" * 1000)) == 16
    assert codec.event_dedupe_key("ab", "c") != codec.event_dedupe_key("a", "bc")


def test_legacy_dedupe_keys_are_the_ones_queues_stored_before_schema_3() -> None:
    # Computed by the per-update implementation of schema 1: a changed key would let a copy sent
    # across an upgrade through the dedupe window.
    assert codec.legacy_event_dedupe_key("//chat-api", "id-1").hex() == "3d18c7383fd13ff15ed365ef05cdad58"
    assert codec.legacy_event_dedupe_key("", "x").hex() == "749b50613df3ec5e86ea0518045952e2"


def test_dedupe_keys_are_the_event_time_then_ten_bytes_of_the_legacy_hash() -> None:
    ms = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
    key = codec.event_dedupe_key("//chat-api", "id-1", ms)

    assert len(key) == codec.DEDUPE_KEY_SIZE == 16
    assert key[:6] == ms.to_bytes(6, "big")
    assert key[6:].hex() == "3d18c7383fd13ff15ed3"  # the legacy key's first 10 bytes
    assert key.hex() == "019b76daa87b" + "3d18c7383fd13ff15ed3"


def test_events_without_a_time_have_zero_in_front() -> None:
    assert codec.event_dedupe_key("", "x")[:6] == bytes(6)
    assert codec.event_dedupe_key("", "x", 0) == bytes(6) + bytes.fromhex("749b50613df3ec5e86ea")


def test_dedupe_key_times_are_clamped_to_48_bits() -> None:
    assert codec.event_dedupe_key("s", "i", -5)[:6] == bytes(6)
    assert codec.event_dedupe_key("s", "i", 1 << 60)[:6] == b"\xff" * 6
    assert codec.event_dedupe_key("s", "i", (1 << 48) - 1)[:6] == b"\xff" * 6
    assert codec.MAX_DEDUPE_MS == (1 << 48) - 1
    events = [EncodedEvent("s", "i", b"{}", -5), EncodedEvent("s", "i", b"{}", 1 << 60)]
    assert codec.event_dedupe_keys(events) == [
        codec.event_dedupe_key("s", "i", 0),
        codec.event_dedupe_key("s", "i", codec.MAX_DEDUPE_MS),
    ]


def test_dedupe_keys_sort_by_event_time() -> None:
    keys = [codec.event_dedupe_key("s", f"id-{n}", 1_700_000_000_000 + n) for n in range(1000)]

    assert sorted(keys) == keys


def test_dedupe_keys_of_a_request_match_the_keys_one_by_one() -> None:
    events = [
        EncodedEvent(src, f"id-{n}", b"{}", 1_700_000_000_000 * (n % 2) + n)
        for n in range(5)
        for src in ("a", "b", "")
    ]

    keys = [codec.event_dedupe_key(e.source, e.id, e.time_ms) for e in events]
    legacy = [codec.legacy_event_dedupe_key(e.source, e.id) for e in events]
    assert codec.event_dedupe_keys(events) == keys
    assert codec.event_dedupe_keys_with_legacy(events) == (keys, legacy)


def test_an_expiry_index_entry_names_its_keys_in_either_format() -> None:
    a, b = bytes(range(16)), bytes(range(16, 32))
    index_key = codec.expiry_index_key(99, a)

    assert codec.split_expiry_index_key(index_key) == (99, a)
    assert codec.expiry_index_keys(index_key, b"") == [a]  # before schema 2: one key, empty value
    assert codec.expiry_index_keys(index_key, codec.expiry_index_value([a, b])) == [a, b]
    assert codec.expiry_index_keys(index_key, a + b + b"torn") == [a, b]
