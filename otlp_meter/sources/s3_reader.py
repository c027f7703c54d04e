"""The blocking half of the s3 source: the cursor's encoding, one object's rows streamed from a GET,
and the OTLP log records (or CloudEvents) they become. Runs in a worker thread; no asyncio here.

Cursor (one state key per source instance), JSON::

    {"after": "<last completed key>", "etag": "<its ETag>", "object": null | {"key", "etag",
     "modified_ns", "gzip", "layout", "rows", "line", "offset", "columns"}}

``object`` is the object being read and how far its committed rows go; it is cleared in the same
commit as the object's last rows, when ``after`` and ``etag`` become its key and ETag (``etag`` is
empty when ``after`` names a key that was passed over, not read).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otlp_meter.events import EncodedEvent, encode_payload, format_time, rfc3339_millis
from otlp_meter.receivers.cloudevents import validate_event
from otlp_meter.sources.base import SCOPE_PREFIX, any_value, key_values
from otlp_meter.sources.s3_formats import BOM, Layout, Position, Row, gunzip, read_rows

Format = Literal["jsonl", "json", "csv", "cloudevents"]
Compression = Literal["auto", "none", "gzip"]

SCOPE_NAME = f"{SCOPE_PREFIX}s3"
KEY_ATTRIBUTE = "aws.s3.key"
ROW_ATTRIBUTE = "otlp_meter.s3.row"
LINE_ATTRIBUTE = "otlp_meter.s3.line"
ERROR_ATTRIBUTE = "otlp_meter.s3.error"
READ_SIZE = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class ObjectProgress:
    """An object being read: its version (``etag``, ``modified_ns``), how it is read, how far."""

    key: str
    etag: str
    modified_ns: int
    gzip: bool | None = None
    layout: Layout | None = None
    position: Position = field(default_factory=Position)


@dataclass(frozen=True, slots=True)
class S3Cursor:
    """Where a source instance stands: every key up to ``after`` is done (``etag``: the version of
    ``after`` that was read); ``current`` is half read."""

    after: str = ""
    current: ObjectProgress | None = None
    etag: str = ""

    def encode(self) -> bytes:
        current = None
        if (p := self.current) is not None:
            current = {
                "key": p.key,
                "etag": p.etag,
                "modified_ns": p.modified_ns,
                "gzip": p.gzip,
                "layout": p.layout,
                "rows": p.position.rows,
                "line": p.position.line,
                "offset": p.position.offset,
                "columns": p.position.columns,
            }
        return orjson.dumps({"after": self.after, "etag": self.etag, "object": current})

    @classmethod
    def decode(cls, raw: bytes | None) -> S3Cursor:
        """The cursor in ``raw`` (None: a fresh start). Raises ValueError when unreadable."""
        if raw is None:
            return cls()
        document = orjson.loads(raw)
        after, etag = str(document.get("after") or ""), str(document.get("etag") or "")
        current = document.get("object")
        if current is None:
            return cls(after=after, etag=etag)
        columns = current.get("columns")
        position = Position(
            rows=int(current["rows"]),
            line=int(current["line"]),
            offset=None if current["offset"] is None else int(current["offset"]),
            columns=None if columns is None else tuple(str(c) for c in columns),
        )
        return cls(
            after=after,
            etag=etag,
            current=ObjectProgress(
                key=str(current["key"]),
                etag=str(current["etag"]),
                modified_ns=int(current["modified_ns"]),
                gzip=current.get("gzip"),
                layout=current.get("layout"),
                position=position,
            ),
        )


class ObjectStream:
    """One object's rows after ``progress``, from one GET (ranged when resuming a plain file).

    ``changed`` tells that the object's ETag is not the one ``progress`` names (it was rewritten):
    the rows then continue at the same row number of the new version, read from its start. That
    holds too when the new version is shorter than the committed offset (the ranged GET is refused
    as InvalidRange): its rows after the committed row number are read, if it has any.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        progress: ObjectProgress,
        *,
        file_format: Format,
        compression: Compression,
        max_row_bytes: int,
        delimiter: str,
    ) -> None:
        self.bucket = bucket
        self.progress = progress
        self.changed = False
        self._client = client
        self._format = file_format
        self._compression = compression
        self._max_row_bytes = max_row_bytes
        self._delimiter = delimiter
        self._body: Any = None
        self.rows: Iterator[Row] = iter(())

    def open(self) -> ObjectStream:
        """GET the object and set up its rows. Raises botocore's errors (NoSuchKey, network)."""
        p = self.progress
        offset = p.position.offset
        ranged = p.gzip is False and offset is not None and offset > 0
        response = self._get(f"bytes={offset}-" if ranged else None)
        if response is None:  # the range starts at or past the end of the object
            if self._etag() == p.etag:
                return self  # the same version, read to its end: every row was read
            response, ranged = self._get(None), False  # rewritten shorter: read the new version
        if response["ETag"] != p.etag:
            self.changed = True
            modified = response["LastModified"].timestamp()
            p = replace(p, etag=response["ETag"], modified_ns=round(modified * 1e9), gzip=None, layout=None)
            if ranged:
                self._close_body(response["Body"])
                response, ranged = self._get(None), False
                assert response is not None
        self._body = response["Body"]
        chunks: Iterator[bytes] = iter(lambda: self._body.read(READ_SIZE), b"")
        first = next(chunks, b"")
        chunks = itertools.chain([first], chunks)
        gzip = p.gzip
        if gzip is None:
            gzip = self._compression == "gzip" or (
                self._compression == "auto" and (p.key.endswith(".gz") or first.startswith(_GZIP_MAGIC))
            )
        if gzip:
            chunks = gunzip(chunks)
        layout = p.layout
        if layout is None:
            layout, chunks = self._layout(chunks)
        position = p.position if gzip is False else replace(p.position, offset=None)
        self.progress = p = replace(p, gzip=gzip, layout=layout, position=position)
        self.rows = read_rows(
            chunks,
            layout,
            p.position,
            ranged=ranged,
            max_row_bytes=self._max_row_bytes,
            delimiter=self._delimiter,
        )
        return self

    def _get(self, byte_range: str | None) -> Any:
        from botocore.exceptions import ClientError  # imported once a source runs, not at startup

        kwargs = {"Bucket": self.bucket, "Key": self.progress.key}
        try:
            return self._client.get_object(**kwargs, **({"Range": byte_range} if byte_range else {}))
        except ClientError as exc:
            if byte_range and exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise

    def _etag(self) -> str:
        """The object's current ETag (a HEAD; NoSuchKey/404 when it is gone)."""
        etag: str = self._client.head_object(Bucket=self.bucket, Key=self.progress.key)["ETag"]
        return etag

    def _layout(self, chunks: Iterator[bytes]) -> tuple[Layout, Iterator[bytes]]:
        if self._format != "cloudevents":
            return self._format, chunks
        # CloudEvents files hold a JSON array (a batch) or JSON Lines: look at the first byte that is
        # not space (after a byte-order mark), even when the first chunks are short.
        head = b""
        for chunk in chunks:
            head += chunk
            if (len(head) >= len(BOM) and head.removeprefix(BOM).lstrip()) or len(head) >= READ_SIZE:
                break
        layout: Layout = "json" if head.removeprefix(BOM).lstrip().startswith(b"[") else "jsonl"
        return layout, itertools.chain([head], chunks)

    def take(self, max_rows: int, max_bytes: int) -> tuple[list[Row], bool]:
        """The next rows (at most ``max_rows``, or fewer once ``max_bytes`` are read) and whether
        the object is exhausted."""
        rows: list[Row] = []
        size = 0
        for row in self.rows:
            rows.append(row)
            size += row.size
            if len(rows) >= max_rows or size >= max_bytes:
                return rows, False
        return rows, True

    def close(self) -> None:
        if self._body is not None:
            self._close_body(self._body)
            self._body = None

    @staticmethod
    def _close_body(body: Any) -> None:
        # Closing a half-read body on a broken connection must not mask why reading stopped.
        with contextlib.suppress(Exception):
            body.close()


def logs_request(
    bucket: str, key: str, modified_ns: int, rows: Sequence[Row], resource: dict[str, str]
) -> ExportLogsServiceRequest:
    """One log record per row: the row as a map body and its fields as attributes, plus the key,
    row and line; an unreadable row has its text as body and the reason in ``otlp_meter.s3.error``
    (the s3 pack dead-letters it). Time is the object's last-modified time."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(key_values({"aws.s3.bucket": bucket, **resource}))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = SCOPE_NAME  # no version: it is part of every event id, keep ids stable
    for row in rows:
        record = scope_logs.log_records.add(time_unix_nano=modified_ns)
        where = {KEY_ATTRIBUTE: key, ROW_ATTRIBUTE: row.number, LINE_ATTRIBUTE: row.line}
        if row.value is None:
            reason = f"{key} line {row.line}: {row.error}"
            record.attributes.extend(key_values({**where, ERROR_ATTRIBUTE: reason}))
            record.body.string_value = row.raw
        else:
            record.attributes.extend(key_values({**row.value, **where}))
            record.body.CopyFrom(any_value(row.value))
    return request


def cloud_event(row: Row, modified_ns: int = 0, *, strict: bool = False) -> EncodedEvent | Row:
    """A row of a ``cloudevents`` file as the event to queue, or the row marked unreadable.

    ``strict``: validated as OpenMeter's v3 API takes events (the exporter's target). An event
    without a ``time`` gets the object's last-modified time ``modified_ns`` (the same on every
    read of the object; OpenMeter would stamp its own arrival time, which a backlog read later
    would put in the wrong billing period).
    """
    if row.value is None:
        return row
    problems = validate_event(row.value, None, strict=strict)
    if problems:
        text = "; ".join(f"{name or 'event'} {message}" for _, name, message in problems[:3])
        raw = orjson.dumps(row.value)[:1024].decode("utf-8", "replace")
        return replace(row, value=None, error=f"invalid CloudEvent: {text}", raw=raw)
    value = row.value
    if value.get("time") is None and modified_ns > 0:
        value = {**value, "time": format_time(modified_ns)}
    return EncodedEvent(
        value["source"], value["id"], encode_payload(value), rfc3339_millis(value.get("time"))
    )
