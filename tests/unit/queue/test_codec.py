"""The on-disk envelope: one version byte, then the protobuf record."""

from __future__ import annotations

import pytest

from otlp_meter.events import EncodedEvent
from otlp_meter.queue import codec


def test_an_event_record_round_trips() -> None:
    raw = codec.encode_event(EncodedEvent(source="s", id="i", payload=b'{"a":1}'), enqueued_unix_nano=123)

    assert raw[0] == codec.ENVELOPE_VERSION
    assert codec.decode_event(raw) == codec.QueuedRecord("s", "i", b'{"a":1}', 123, 0)


def test_a_dead_letter_round_trips() -> None:
    record = codec.DeadRecord("otlp_metrics", "", "", b"\x0a", "bad value", 0, 5, "rule-a")

    assert codec.decode_dead_letter(codec.encode_dead_letter(record)) == record


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x02" + b"future", b"\x01\xff\xff\xff", b"\x01\x0a\x02\xff\xfe", b"\x01"],
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
