"""Rows out of usage files, streamed: JSON Lines, a JSON array, CSV, optionally gzip-compressed.

Pure and synchronous: :func:`read_rows` turns an iterator of byte chunks into :class:`Row` values
without ever holding more than one row (at most ``max_row_bytes``) plus one chunk. Each row says
where reading stands after it (:class:`Position`), which is what the s3 source commits with the
row's events: reading resumes there after a crash, either by a ranged GET at ``offset`` (plain
files) or by reading from the start and skipping ``rows`` rows (gzip, where offsets mean nothing).

A UTF-8 byte-order mark at the very start of an object is skipped (its bytes still count in
``offset``); a ranged read, which starts mid-object, never strips anything.

A row that cannot be read (bad JSON, not an object, a broken CSV record, invalid UTF-8, too long)
is still a :class:`Row`, with ``error`` set and ``raw`` holding its text: the source dead-letters it
and goes on with the next. Damage that ends the file (corrupt gzip, a JSON array that is not one)
becomes one last error row.
"""

from __future__ import annotations

import csv
import itertools
import re
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

Layout = Literal["jsonl", "json", "csv"]
RAW_LIMIT = 1024
"""Characters of an unreadable row kept for the dead letter."""
BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark, skipped at the start of an object."""


@dataclass(frozen=True, slots=True)
class Position:
    """Reading progress in one object: ``rows`` read, the ``line`` the next row starts on, the raw
    byte ``offset`` after the last row (None when compressed), the CSV header once read."""

    rows: int = 0
    line: int = 1
    offset: int | None = 0
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """One row: ``value`` (a JSON object / CSV record as a dict) or ``error`` with ``raw`` text."""

    number: int
    line: int
    value: dict[str, Any] | None
    error: str | None
    raw: str
    after: Position
    size: int


class CorruptObject(Exception):
    """The bytes cannot be read any further (corrupt or truncated compression)."""


def gunzip(chunks: Iterator[bytes], max_output: int = 256 * 1024) -> Iterator[bytes]:
    """Decompress gzip (several members too) in pieces of at most ``max_output`` bytes, so a small
    file that inflates hugely still streams. Raises :class:`CorruptObject` on damage."""
    inflater = zlib.decompressobj(wbits=31)
    fed = False
    try:
        for chunk in chunks:
            data = chunk
            while data:
                if inflater.eof:  # the next member of a multi-member file (or zero padding)
                    if not data.strip(b"\x00"):
                        break
                    inflater = zlib.decompressobj(wbits=31)
                out = inflater.decompress(data, max_output)
                fed = True
                if out:
                    yield out
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        while fed and not inflater.eof and (out := inflater.decompress(b"", max_output)):
            yield out  # output zlib still held back when max_output cut the last call short
    except zlib.error as exc:
        raise CorruptObject(f"corrupt gzip data: {exc}") from None
    if fed and not inflater.eof:
        raise CorruptObject("truncated gzip data (the file ends inside a compressed stream)")


def read_rows(
    chunks: Iterator[bytes],
    layout: Layout,
    start: Position,
    *,
    ranged: bool,
    max_row_bytes: int,
    delimiter: str = ",",
) -> Iterator[Row]:
    """The rows after ``start``. ``ranged``: ``chunks`` begin at ``start.offset`` (a ranged GET);
    otherwise they begin at byte 0 and the first ``start.rows`` rows are read and dropped."""
    begin = start if ranged else Position(offset=start.offset if start.offset is None else 0)
    if not ranged or begin.offset == 0:  # the chunks start at the object's first byte
        chunks, marked = skip_bom(chunks)
        if marked and begin.offset is not None:
            begin = replace(begin, offset=len(BOM))
    if layout == "json":
        rows = _json_array_rows(chunks, begin, max_row_bytes)
    elif layout == "csv":
        rows = _csv_rows(chunks, begin, max_row_bytes, delimiter)
    else:
        rows = _jsonl_rows(chunks, begin, max_row_bytes)
    for row in rows:
        if row.number > start.rows:
            yield row


def skip_bom(chunks: Iterator[bytes]) -> tuple[Iterator[bytes], bool]:
    """``chunks`` without a leading UTF-8 byte-order mark, and whether there was one (it may be
    split across chunks; only a whole mark is dropped)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(BOM):
            break
    marked = head.startswith(BOM)
    return itertools.chain([head[len(BOM) :] if marked else head], chunks), marked


def _object(text: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a row must be a JSON object, got {type(value).__name__}"
    return value, None


def _raw(text: bytes) -> str:
    return text[:RAW_LIMIT].decode("utf-8", "replace")


def _too_long(size: int, limit: int) -> str:
    return f"row longer than max_row_bytes ({size} > {limit} bytes)"


def _lines(chunks: Iterator[bytes], limit: int) -> Iterator[tuple[bytes | None, int]]:
    """Each line without its terminator (None when longer than ``limit``) and its size in bytes
    with the terminator. Over-long lines are dropped as they stream, never buffered whole."""
    buffer = bytearray()
    dropped = -1  # bytes of an over-long line seen so far; -1 while the line fits
    for chunk in chunks:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = chunk[start:] if newline < 0 else chunk[start:newline]
            if dropped >= 0:
                dropped += len(piece)
            else:
                buffer += piece
                if len(buffer) > limit:
                    dropped, buffer = len(buffer), bytearray()
            if newline < 0:
                break
            if dropped >= 0:
                yield None, dropped + 1
            else:
                yield bytes(buffer), len(buffer) + 1
            buffer, dropped = bytearray(), -1
            start = newline + 1
    if dropped >= 0:
        yield None, dropped
    elif buffer:
        yield bytes(buffer), len(buffer)


def _advance(position: Position, rows: int, lines: int, size: int) -> Position:
    offset = None if position.offset is None else position.offset + size
    return replace(position, rows=position.rows + rows, line=position.line + lines, offset=offset)


def _jsonl_rows(chunks: Iterator[bytes], at: Position, limit: int) -> Iterator[Row]:
    try:
        for line, size in _lines(chunks, limit):
            line_no = at.line
            if line is not None and not line.strip():
                at = _advance(at, 0, 1, size)  # blank lines are no rows
                continue
            at = _advance(at, 1, 1, size)
            if line is None:
                yield Row(at.rows, line_no, None, _too_long(size, limit), "", at, size)
                continue
            value, error = _object(line)
            yield Row(at.rows, line_no, value, error, _raw(line) if error else "", at, size)
    except CorruptObject as exc:
        yield Row(at.rows + 1, at.line, None, str(exc), "", replace(at, rows=at.rows + 1), 0)


# --- CSV -----------------------------------------------------------------------------------------

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def csv_value(cell: str) -> Any:
    """A CSV cell as JSON would hold it: canonical decimal numbers as numbers (not ``007``, which
    keeps its zeros as text), everything else as text."""
    if _INT.fullmatch(cell):
        return int(cell)
    if _FLOAT.fullmatch(cell):
        return float(cell)
    return cell


def _ends_quoted(line: bytes, delimiter: bytes, quoted: bool) -> bool:
    """Whether a CSV line ends inside a quoted field, read from the start of a record or from inside
    a quoted field (``quoted``: the line continues one). As RFC 4180 and Python's csv read it: a
    quote opens a quoted field only at the start of a field (elsewhere it is a character like any
    other, as in ``5" disk``); inside one, ``""`` is a quote and a lone ``"`` closes it."""
    i, field_start = 0, not quoted
    while True:
        j = line.find(b'"', i)
        if j < 0:
            return quoted
        if quoted:
            if line.startswith(b'"', j + 1):
                i = j + 2  # an escaped quote
            else:
                quoted, field_start, i = False, False, j + 1
        else:
            quoted = (j == i and field_start) or (
                j >= len(delimiter) and line[j - len(delimiter) : j] == delimiter
            )
            field_start, i = False, j + 1


def _unterminated(reason: str) -> str:
    return f"unterminated quoted field (no closing quote {reason})"


def _csv_records(
    chunks: Iterator[bytes], limit: int, delimiter: str
) -> Iterator[tuple[bytes | None, int, int, str, bytes]]:
    """Physical lines joined into records (a quoted field may hold newlines): (record, lines,
    bytes, problem, raw). ``problem`` is set (and the record None) when the record is too long, or
    when a quoted field it opens is not closed before the end of the file or within ``limit``
    bytes: that record is then its first line alone (``raw``), and the next record starts on the
    line after it, so a stray quote costs one line, never the rest of the file.

    Where a record ends depends only on the bytes from its start, so reading resumed at any
    record gives the same records. Each line is scanned at most twice (as the start of a record
    and inside a quoted field); lines read ahead are held up to ``limit`` bytes."""
    sep = delimiter.encode()
    source = _lines(chunks, limit)
    ahead: deque[tuple[bytes | None, int]] = deque()  # lines read past the record being read
    inside = 0  # how many lines of ``ahead`` are known to end still inside a quoted field
    inside_length = 0  # their length joined (with the newlines between them)
    while True:
        if ahead:
            line, size = ahead.popleft()
            if inside:
                inside, inside_length = inside - 1, inside_length - 1 - len(line or b"")
        elif (item := next(source, None)) is not None:
            line, size = item
        else:
            return
        if line is None:
            yield None, 1, size, _too_long(size, limit), b""
            continue
        if not _ends_quoted(line, sep, quoted=False):
            yield line, 1, size, "", b""
            continue
        length, closed, ended = len(line) + inside_length, False, False
        while length <= limit:
            if inside == len(ahead):
                if (item := next(source, None)) is None:
                    ended = True
                    break
                ahead.append(item)
            following = ahead[inside][0]
            if following is None:  # an over-long line: the record cannot fit
                break
            length += 1 + len(following)
            if length > limit:
                break
            if not _ends_quoted(following, sep, quoted=True):
                closed = True
                break
            inside, inside_length = inside + 1, inside_length + 1 + len(following)
        if closed:
            parts = [line]
            for _ in range(inside + 1):
                part, part_size = ahead.popleft()
                parts.append(part or b"")
                size += part_size
            yield b"\n".join(parts), inside + 2, size, "", b""
            inside = inside_length = 0
        else:
            reason = "before the end of the file" if ended else f"within max_row_bytes, {limit} bytes"
            yield None, 1, size, _unterminated(reason), line


def _csv_rows(chunks: Iterator[bytes], at: Position, limit: int, delimiter: str) -> Iterator[Row]:
    columns = at.columns
    try:
        for record, lines, size, problem, raw_line in _csv_records(chunks, limit, delimiter):
            line_no = at.line
            if record is not None and not record.strip():
                at = _advance(at, 0, lines, size)
                continue
            cells, error = _csv_cells(record, delimiter) if record is not None else (None, problem)
            if columns is None:
                if cells is None:
                    raise CorruptObject(f"the CSV header cannot be read: {error}")
                columns = tuple(cells)
                at = replace(_advance(at, 0, lines, size), columns=columns)
                continue
            at = _advance(at, 1, lines, size)
            if cells is not None and len(cells) != len(columns):
                error = f"{len(cells)} fields, the header has {len(columns)}"
                cells = None
            if cells is None:
                raw = _raw(record if record is not None else raw_line)
                yield Row(at.rows, line_no, None, error, raw, at, size)
                continue
            value = {name: csv_value(cell) for name, cell in zip(columns, cells, strict=True) if cell != ""}
            yield Row(at.rows, line_no, value, None, "", at, size)
    except CorruptObject as exc:
        yield Row(at.rows + 1, at.line, None, str(exc), "", replace(at, rows=at.rows + 1), 0)


def _csv_cells(record: bytes, delimiter: str) -> tuple[list[str] | None, str]:
    try:
        text = record.decode()
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8: {exc}"
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True), []), ""
    except csv.Error as exc:
        return None, f"malformed CSV: {exc}"


# --- JSON array ----------------------------------------------------------------------------------

_SPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURE = re.compile(rb'["\[\]{},]')
_STRING_END = re.compile(rb'["\\]')


class _Element:
    """Scanning state of one array element across chunks: nesting depth and string state."""

    __slots__ = ("depth", "escaped", "in_string")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, chunk: bytes, i: int) -> tuple[int, bool]:
        """Scan from ``i``: (index reached, whether the element ended there — before the , or ]
        that ends it)."""
        n = len(chunk)
        if self.escaped and i < n:  # the byte after a backslash that closed the previous chunk
            i, self.escaped = i + 1, False
        while i < n:
            if self.in_string:
                m = _STRING_END.search(chunk, i)
                if m is None:
                    return n, False
                if m.group() == b"\\":
                    if m.end() >= n:
                        self.escaped = True
                        return n, False
                    i = m.end() + 1
                else:
                    i, self.in_string = m.end(), False
                continue
            m = _STRUCTURE.search(chunk, i)
            if m is None:
                return n, False
            c = m.group()
            if c == b'"':
                self.in_string = True
            elif c in (b"[", b"{"):
                self.depth += 1
            elif self.depth == 0 and c in (b",", b"]"):
                return m.start(), True
            elif c in (b"]", b"}"):
                self.depth -= 1
            i = m.end()
        return n, False


def _json_array_rows(chunks: Iterator[bytes], at: Position, limit: int) -> Iterator[Row]:
    """Elements of one top-level JSON array, each parsed alone. Only structure is scanned
    (strings, brackets, commas at depth 0), so memory stays at one element; a broken element is one
    error row and the next comma starts the next. Mid-array (``at.rows`` > 0) it expects , or ]."""
    expect = "after" if at.rows else "start"  # start | first | next | after | end | value
    element = _Element()
    parts: list[bytes] = []
    size = 0
    element_line = line = at.line
    offset = at.offset or 0
    rows = at.rows

    def here(rows_done: int) -> Position:
        return replace(at, rows=rows_done, line=line, offset=None if at.offset is None else offset)

    def broken(message: str) -> Row:
        return Row(rows + 1, line, None, message, "", here(rows + 1), 0)

    try:
        for chunk in chunks:
            i, n = 0, len(chunk)
            while i < n:
                if expect == "value":
                    j, ended = element.scan(chunk, i)
                    size += j - i
                    if size <= limit:
                        parts.append(chunk[i:j])
                    line += chunk.count(b"\n", i, j)
                    offset += j - i
                    i = j
                    if ended:
                        rows += 1
                        value: dict[str, Any] | None
                        error: str | None
                        if size > limit:
                            value, error, raw = None, _too_long(size, limit), ""
                        else:
                            text = b"".join(parts)
                            value, error = _object(text)
                            raw = _raw(text) if error else ""
                        yield Row(rows, element_line, value, error, raw, here(rows), size)
                        parts, size, expect = [], 0, "after"
                    continue
                space = _SPACE.match(chunk, i)
                end = space.end() if space is not None else i
                line += chunk.count(b"\n", i, end)
                offset += end - i
                i = end
                if i >= n:
                    break
                c = chunk[i : i + 1]
                if expect in ("first", "next") and not (expect == "first" and c == b"]"):
                    expect, element_line, element = "value", line, _Element()
                    continue
                if (expect, c) in _TRANSITIONS:
                    expect, i, offset = _TRANSITIONS[expect, c], i + 1, offset + 1
                    continue
                yield broken(_UNEXPECTED[expect].format(rows=rows))
                return
        if expect == "value" and element.depth == 0 and not element.in_string and size <= limit:
            # The last element is whole (only the closing ] is missing): it still counts.
            text = b"".join(parts)
            value, error = _object(text)
            if value is not None:
                rows += 1
                yield Row(rows, element_line, value, None, "", here(rows), size)
                expect = "after"
        if expect != "end":
            yield broken(_UNEXPECTED_END.get(expect, "the file ends before the JSON array is closed"))
    except CorruptObject as exc:
        yield broken(str(exc))


_TRANSITIONS = {
    ("start", b"["): "first",
    ("first", b"]"): "end",
    ("after", b","): "next",
    ("after", b"]"): "end",
}
_UNEXPECTED = {
    "start": "the file is not a JSON array (it must start with [)",
    "after": "expected , or ] after row {rows}",
    "end": "data after the end of the JSON array",
}
_UNEXPECTED_END = {"value": "the file ends inside a row (truncated JSON array)"}
