"""Rows out of usage files: each layout, bad rows, gzip, and resuming from any committed position."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otlp_meter.sources.s3_formats import CorruptObject, Layout, Position, Row, csv_value, gunzip, read_rows


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    return iter([data[i : i + size] for i in range(0, len(data), size)])


def rows(
    data: bytes,
    layout: Layout,
    start: Position | None = None,
    *,
    chunk: int = 7,
    limit: int = 1000,
    **kw: Any,
) -> list[Row]:
    start = start or Position()
    ranged = bool(start.offset)
    body = data[start.offset :] if ranged and start.offset else data
    return list(read_rows(chunked(body, chunk), layout, start, ranged=ranged, max_row_bytes=limit, **kw))


BOM = b"\xef\xbb\xbf"


def values(found: list[Row]) -> list[Any]:
    return [r.value if r.error is None else ("error", r.line, r.error) for r in found]


# --- JSON Lines ----------------------------------------------------------------------------------


def test_jsonl_rows_with_their_line_numbers_and_positions() -> None:
    data = b'{"a": 1}\n\n  \n{"b": "x\\ny"}\r\n{"c": 3}'
    found = rows(data, "jsonl")
    assert values(found) == [{"a": 1}, {"b": "x\ny"}, {"c": 3}]
    assert [(r.number, r.line) for r in found] == [(1, 1), (2, 4), (3, 5)]
    assert [r.after for r in found] == [
        Position(rows=1, line=2, offset=9),
        Position(rows=2, line=5, offset=28),
        Position(rows=3, line=6, offset=len(data)),
    ]


def test_jsonl_unreadable_rows_keep_their_text_and_reading_goes_on() -> None:
    found = rows(b'{"a": 1}\nnot json\n[1, 2]\n"text"\n{"b": 2}\n', "jsonl")
    assert [(r.line, r.error is None, r.raw) for r in found] == [
        (1, True, ""),
        (2, False, "not json"),
        (3, False, "[1, 2]"),
        (4, False, '"text"'),
        (5, True, ""),
    ]
    assert found[1].error is not None
    assert found[1].error.startswith("invalid JSON: ")
    assert found[2].error == "a row must be a JSON object, got list"


def test_a_row_longer_than_the_limit_is_refused_without_being_held() -> None:
    long_row = b'{"a": "' + b"x" * 10_000 + b'"}'
    found = rows(long_row + b'\n{"b": 1}\n', "jsonl", limit=100, chunk=64)
    assert values(found) == [("error", 1, "row longer than max_row_bytes (10010 > 100 bytes)"), {"b": 1}]
    assert found[0].raw == ""


# --- JSON array ----------------------------------------------------------------------------------


def test_json_array_elements_one_at_a_time() -> None:
    data = b' [ {"a": "],\\"{"} ,\n {"b": [1, {"c": [2]}]},\n{"d": "\\\\"}\n]\n'
    for chunk in (1, 2, 3, 5, 64):
        found = rows(data, "json", chunk=chunk)
        assert values(found) == [{"a": '],"{'}, {"b": [1, {"c": [2]}]}, {"d": "\\"}], chunk
        assert [r.line for r in found] == [1, 2, 3]


def test_an_empty_array_has_no_rows() -> None:
    assert rows(b"[]", "json") == []
    assert rows(b" [ \n ] \n", "json") == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1}', [("error", 1, "the file is not a JSON array (it must start with [)")]),
        (b'[{"a": 1}, {"b": ', [{"a": 1}, ("error", 1, "the file ends inside a row (truncated JSON array)")]),
        (b'[{"a": 1}', [{"a": 1}, ("error", 1, "the file ends before the JSON array is closed")]),
        (b'[{"a": 1}] x', [{"a": 1}, ("error", 1, "data after the end of the JSON array")]),
        (b"", [("error", 1, "the file ends before the JSON array is closed")]),
    ],
)
def test_a_broken_array_ends_with_one_error_row(data: bytes, expected: list[Any]) -> None:
    assert values(rows(data, "json")) == expected


def test_a_bad_element_is_one_error_row_and_the_next_one_counts() -> None:
    found = rows(b'[{"a": 1}, 5, {bad}, "s", {"b": 2}]', "json")
    assert [r.error is None for r in found] == [True, False, False, False, True]
    assert found[2].raw == "{bad}"


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_records_become_maps_named_by_the_header() -> None:
    data = (
        b"\xef\xbb\xbftype,subject,gb,id,note\r\n"
        b"storage,acme,12.5,007,\r\n"
        b'"egress",globex,3,"x,y","two\nlines"\n'
    )
    found = rows(data, "csv")
    assert values(found) == [
        {"type": "storage", "subject": "acme", "gb": 12.5, "id": "007"},
        {"type": "egress", "subject": "globex", "gb": 3, "id": "x,y", "note": "two\nlines"},
    ]
    assert [r.line for r in found] == [2, 3]
    assert found[-1].after == Position(
        rows=2, line=5, offset=len(data), columns=("type", "subject", "gb", "id", "note")
    )


@pytest.mark.parametrize(
    ("cell", "value"),
    [("12", 12), ("-3", -3), ("0", 0), ("1.5", 1.5), ("2e3", 2000.0), ("007", "007"), ("1_000", "1_000"),
     ("+1", "+1"), (" 1", " 1"), ("true", "true"), ("", "")],
)  # fmt: skip
def test_only_canonical_decimal_numbers_become_numbers(cell: str, value: Any) -> None:
    assert csv_value(cell) == value
    assert type(csv_value(cell)) is type(value)


def test_broken_csv_records_are_error_rows() -> None:
    data = b'a,b\n1,2\n1,2,3\n"x"y,1\n\xff,1\n4,5\n"open,6\n7,8\n'
    found = rows(data, "csv")
    assert values(found) == [
        {"a": 1, "b": 2},
        ("error", 3, "3 fields, the header has 2"),
        found[2] and ("error", 4, found[2].error),
        found[3] and ("error", 5, found[3].error),
        {"a": 4, "b": 5},
        ("error", 7, "unterminated quoted field (no closing quote before the end of the file)"),
        {"a": 7, "b": 8},
    ]
    assert str(found[2].error).startswith("malformed CSV")
    assert str(found[3].error).startswith("not valid UTF-8")


def test_a_custom_delimiter() -> None:
    assert values(rows(b"a;b\n1;x,y\n", "csv", delimiter=";")) == [{"a": 1, "b": "x,y"}]


def test_an_unreadable_header_ends_the_file() -> None:
    assert values(rows(b'"a,b\n', "csv")) == [
        (
            "error",
            1,
            "the CSV header cannot be read: unterminated quoted field (no closing quote before the end "
            "of the file)",
        )
    ]


# --- gzip ----------------------------------------------------------------------------------------


def test_gzip_members_concatenate() -> None:
    data = gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"a": 2}\n')
    assert b"".join(gunzip(chunked(data, 3))) == b'{"a": 1}\n{"a": 2}\n'


def test_corrupt_and_truncated_gzip_are_errors() -> None:
    data = gzip.compress(b'{"a": 1}\n' * 100)
    with pytest.raises(CorruptObject, match="truncated"):
        b"".join(gunzip(iter([data[:-12]])))
    with pytest.raises(CorruptObject, match="corrupt gzip"):
        b"".join(gunzip(iter([b"not gzip at all"])))
    cut = iter([data[: len(data) // 2]])
    found = list(read_rows(gunzip(cut), "jsonl", Position(offset=None), ranged=False, max_row_bytes=99))
    assert found[-1].error is not None
    assert "truncated gzip" in found[-1].error


def test_gzip_inflates_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024))  # 64 MiB of newlines in ~64 KiB
    pieces = gunzip(iter([bomb]), max_output=1 << 20)
    assert max(len(p) for p in pieces) <= 1 << 20


def test_gzip_rows_resume_by_skipping_the_done_rows() -> None:
    data = gzip.compress(b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(10)))
    start = Position(rows=7, line=8, offset=None)
    found = list(read_rows(gunzip(chunked(data, 5)), "jsonl", start, ranged=False, max_row_bytes=99))
    assert [r.value for r in found] == [{"n": 7}, {"n": 8}, {"n": 9}]
    assert [r.after.offset for r in found] == [None] * 3


# --- Any chunking, any resume point: the same rows -----------------------------------------------

scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\x00"), max_size=12),
    st.booleans(),
)
records = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars, min_size=1), min_size=1, max_size=8
)


def encode(layout: Layout, items: list[dict[str, Any]]) -> bytes:
    if layout == "jsonl":
        return b"".join(orjson.dumps(i) + b"\n" for i in items)
    if layout == "json":
        return b"[\n" + b",\n".join(orjson.dumps(i) for i in items) + b"\n]"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["a", "b", "c"])
    for item in items:
        writer.writerow([item.get(k, "") for k in ("a", "b", "c")])
    return out.getvalue().encode()


def expected(layout: Layout, item: dict[str, Any]) -> dict[str, Any]:
    if layout != "csv":
        return item
    text = {k: v if isinstance(v, str) else str(v) for k, v in item.items()}  # csv writes True as "True"
    return {k: csv_value(v) for k, v in text.items() if v != ""}


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(["jsonl", "json", "csv"]),
    items=records,
    chunk=st.integers(1, 40),
    cut=st.integers(0, 8),
    compressed=st.booleans(),
    bom=st.booleans(),
)
def test_any_chunking_and_any_resume_point_give_the_same_rows(
    layout: Layout, items: list[dict[str, Any]], chunk: int, cut: int, compressed: bool, bom: bool
) -> None:
    data = (BOM if bom else b"") + encode(layout, items)
    full = rows(data, layout, chunk=chunk)
    assert [r.value for r in full] == [expected(layout, i) for i in items]
    if cut >= len(full):
        return
    done = full[cut - 1].after if cut else Position()
    if compressed:  # resuming a gzip file: read from the start, skip the done rows
        start = Position(rows=done.rows, line=done.line, offset=None, columns=done.columns)
        zipped = gzip.compress(data)
        rest = list(
            read_rows(gunzip(chunked(zipped, chunk)), layout, start, ranged=False, max_row_bytes=1000)
        )
        assert [(r.number, r.line, r.value) for r in rest] == [
            (r.number, r.line, r.value) for r in full[cut:]
        ]
    else:  # resuming a plain file: a ranged read from the committed offset
        rest = rows(data, layout, done, chunk=chunk)
        assert rest == full[cut:]


def test_zlib_errors_do_not_escape_as_zlib_errors() -> None:
    with pytest.raises(CorruptObject):
        list(gunzip(iter([gzip.compress(b"x")[:10] + b"\xff" * 20])))
    assert issubclass(CorruptObject, Exception)
    assert not issubclass(CorruptObject, zlib.error)


def test_a_cloudevents_row_carries_its_time_in_milliseconds() -> None:
    from otlp_meter.events import EncodedEvent
    from otlp_meter.sources.s3_formats import Position, Row
    from otlp_meter.sources.s3_reader import cloud_event

    def row(value: dict[str, object]) -> Row:
        base = {"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "x"}
        return Row(1, 1, {**base, **value}, None, "", Position(), 10)

    modified = 1_767_225_700_000_000_000
    timed = cloud_event(row({"time": "2026-01-01T00:00:00.250Z"}), modified)
    untimed = cloud_event(row({}), modified)

    assert isinstance(timed, EncodedEvent)
    assert isinstance(untimed, EncodedEvent)
    assert (timed.time_ms, untimed.time_ms) == (1_767_225_600_250, 1_767_225_700_000)
    # Without a time of its own: the object's last-modified time, the same on every read.
    assert orjson.loads(untimed.payload)["time"] == "2026-01-01T00:01:40Z"


def test_cloudevents_rows_are_checked_as_the_v3_api_takes_them_when_the_exporter_targets_it() -> None:
    from otlp_meter.events import EncodedEvent
    from otlp_meter.sources.s3_formats import Position, Row
    from otlp_meter.sources.s3_reader import cloud_event

    value = {"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "x", "region": "eu"}
    row = Row(1, 1, value, None, "", Position(), 10)

    assert isinstance(cloud_event(row), EncodedEvent)  # v1 takes extensions
    refused = cloud_event(row, strict=True)
    assert isinstance(refused, Row)
    assert refused.error is not None
    assert "region" in refused.error


# --- Byte-order mark -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 64])
def test_a_leading_byte_order_mark_is_skipped_in_json_lines(chunk: int) -> None:
    data = BOM + b'{"a": 1}\n{"b": 2}\n'
    found = rows(data, "jsonl", chunk=chunk)
    assert values(found) == [{"a": 1}, {"b": 2}]
    assert [r.line for r in found] == [1, 2]
    assert [r.after.offset for r in found] == [3 + 9, len(data)]  # offsets count the mark's bytes
    assert rows(data, "jsonl", found[0].after, chunk=chunk) == found[1:]  # a ranged resume


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 64])
def test_a_leading_byte_order_mark_is_skipped_in_a_json_array(chunk: int) -> None:
    data = BOM + b'[{"a": 1},\n{"b": 2}]\n'
    found = rows(data, "json", chunk=chunk)
    assert values(found) == [{"a": 1}, {"b": 2}]
    assert found[0].after.offset == len(BOM + b'[{"a": 1}')
    assert rows(data, "json", found[0].after, chunk=chunk) == found[1:]


def test_only_a_mark_at_the_start_of_the_object_is_skipped() -> None:
    found = rows(b'{"a": 1}\n' + BOM + b'{"b": 2}\n', "jsonl")  # mid-file: a broken row, as before
    assert [r.error is None for r in found] == [True, False]
    assert rows(b"\xef\xbb" + b'{"a": 1}\n', "jsonl")[0].error is not None  # not a whole mark
    assert rows(BOM, "jsonl") == []
    start = Position(rows=1, line=2, offset=3)  # a ranged read never strips what it starts on
    data = b"abc" + BOM + b'{"b": 2}\n'
    assert rows(data, "jsonl", start)[0].error is not None


def test_a_byte_order_mark_inside_gzip_is_skipped() -> None:
    data = gzip.compress(BOM + b'{"a": 1}\n{"b": 2}\n')
    found = list(
        read_rows(gunzip(chunked(data, 5)), "jsonl", Position(offset=None), ranged=False, max_row_bytes=99)
    )
    assert values(found) == [{"a": 1}, {"b": 2}]
    resumed = Position(rows=1, line=2, offset=None)
    again = list(read_rows(gunzip(chunked(data, 5)), "jsonl", resumed, ranged=False, max_row_bytes=99))
    assert values(again) == [{"b": 2}]


# --- CSV quotes ----------------------------------------------------------------------------------


def csv_file(*lines: bytes) -> bytes:
    return b"type,subject,n,note\n" + b"".join(line + b"\n" for line in lines)


def resumes_identically(data: bytes, layout: Layout = "csv", **kw: Any) -> list[Row]:
    """The rows of ``data``; reading resumed after any of them (ranged) gives the same rest."""
    full = rows(data, layout, **kw)
    for cut, row in enumerate(full, 1):
        assert rows(data, layout, row.after, **kw) == full[cut:], cut
    return full


def test_a_quote_inside_an_unquoted_field_is_just_a_character() -> None:
    data = csv_file(
        b"api-calls,acme,1,x",
        b'api-calls,acme,2,5" disk',
        *(b"api-calls,acme,%d,x" % n for n in range(3, 50)),
    )
    found = resumes_identically(data)
    assert [r.error for r in found] == [None] * 49
    assert found[1].value == {"type": "api-calls", "subject": "acme", "n": 2, "note": '5" disk'}
    assert [r.line for r in found] == list(range(2, 51))
    assert found[-1].after.offset == len(data)


def test_a_quote_that_never_closes_is_only_its_own_line() -> None:
    data = csv_file(
        b"api-calls,acme,1,x", b'api-calls,"acme,2,x', b"api-calls,acme,3,x", b"api-calls,acme,4,x"
    )
    found = resumes_identically(data)
    assert values(found) == [
        {"type": "api-calls", "subject": "acme", "n": 1, "note": "x"},
        ("error", 3, "unterminated quoted field (no closing quote before the end of the file)"),
        {"type": "api-calls", "subject": "acme", "n": 3, "note": "x"},
        {"type": "api-calls", "subject": "acme", "n": 4, "note": "x"},
    ]
    assert found[1].raw == 'api-calls,"acme,2,x'  # kept for the dead letter, to be replayed
    assert [r.after.line for r in found] == [3, 4, 5, 6]


def test_a_quote_not_closed_within_max_row_bytes_is_only_its_own_line() -> None:
    filler = [b"api-calls,acme,%d,filler-filler-filler" % n for n in range(3, 30)]
    closing = b'api-calls,acme,30,"quoted, closed"'
    data = csv_file(
        b"api-calls,acme,1,x", b'api-calls,acme,2,"open', *filler, closing, b"api-calls,acme,31,y"
    )
    found = resumes_identically(data, limit=300, chunk=13)
    assert [r.number for r in found] == list(range(1, 32))
    assert [r.line for r in found] == list(range(2, 33))
    assert found[1].error == "unterminated quoted field (no closing quote within max_row_bytes, 300 bytes)"
    assert found[1].raw == 'api-calls,acme,2,"open'
    assert [r.error for r in found if r.number != 2] == [None] * 30
    assert found[29].value == {"type": "api-calls", "subject": "acme", "n": 30, "note": "quoted, closed"}
    assert found[-1].after.offset == len(data)


def test_quoted_fields_still_span_lines_and_quotes_still_escape() -> None:
    data = csv_file(
        b'api-calls,acme,1,"a ""b""', b'c, d"', b'api-calls,"ac""me",2,"x"', b'"api-calls",acme,3,'
    )
    found = resumes_identically(data, chunk=3)
    assert values(found) == [
        {"type": "api-calls", "subject": "acme", "n": 1, "note": 'a "b"\nc, d'},
        {"type": "api-calls", "subject": 'ac"me', "n": 2, "note": "x"},
        {"type": "api-calls", "subject": "acme", "n": 3},
    ]
    assert [r.line for r in found] == [2, 4, 5]


def test_a_multi_line_record_too_long_for_max_row_bytes_is_read_line_by_line() -> None:
    long_note = b"\n".join(b"note line %d" % i for i in range(40))
    data = csv_file(b'api-calls,acme,1,"' + long_note + b'"', b"api-calls,acme,2,x")
    found = resumes_identically(data, limit=200)
    assert found[0].error is not None
    assert found[0].error.startswith("unterminated quoted field")
    assert found[0].raw == 'api-calls,acme,1,"note line 0'
    assert found[-1].value == {"type": "api-calls", "subject": "acme", "n": 2, "note": "x"}
    assert found[-1].line == 42  # the header, then the 40 lines of the record read one by one
    assert found[-1].after.offset == len(data)
