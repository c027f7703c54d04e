"""The s3 source against a real S3 API (moto's server on loopback), a real pipeline and LMDB queue.

Waits (polling, backoff) run on a clock the test moves: ``settle`` returns once the source has
read everything it can and waits for its next poll.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult
from otlp_meter.sources.base import Cursor, cursor_key
from otlp_meter.sources.s3 import S3Source, S3SourceConfig, make_client
from otlp_meter.sources.s3_reader import S3Cursor
from tests.support.fake_time import FakeTime
from tests.support.s3 import S3Server
from tests.support.source_sink import PipelineSink


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[PipelineSink]:
    sink = PipelineSink(tmp_path)
    yield sink
    sink.close()


def jsonl(*rows: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def csv_rows(rows: list[dict[str, Any]]) -> bytes:
    return b"type,subject,n\n" + b"".join(b"api-calls,acme,%d\n" % r["n"] for r in rows)


def usage(n: int, subject: str = "acme") -> dict[str, Any]:
    return {"type": "api-calls", "subject": subject, "n": n}


class RecordingClient:
    """The real boto3 client, recording each GET's arguments."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.gets: list[dict[str, Any]] = []

    def get_object(self, **kwargs: Any) -> Any:
        self.gets.append(kwargs)
        return self._client.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Harness:
    def __init__(self, s3: S3Server, sink: PipelineSink) -> None:
        self.s3, self.sink = s3, sink
        self.bucket = s3.new_bucket()
        self.time = FakeTime(1_717_200_000.0)
        self.client: RecordingClient | None = None

    def config(self, **overrides: Any) -> S3SourceConfig:
        base = {"name": "usage", "poll_interval": "1m", "backoff": {"initial": "1s", "max": "4s"}}
        bucket = overrides.pop("bucket", self.bucket)
        return S3SourceConfig.model_validate(self.s3.source_config(bucket, **{**base, **overrides}))

    def source(self, config: S3SourceConfig | None = None, **overrides: Any) -> S3Source:
        config = config or self.config(**overrides)

        def factory() -> RecordingClient:
            self.client = RecordingClient(make_client(config))
            return self.client

        return S3Source(config, wait=self.time.wait, client_factory=factory)

    @asynccontextmanager
    async def running(self, source: S3Source, sink: Any = None) -> AsyncIterator[S3Source]:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(sink or self.sink, stop))
        try:
            yield source
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    async def read_all(self, source: S3Source | None = None, **overrides: Any) -> S3Source:
        async with self.running(source or self.source(**overrides)) as running:
            await self.time.settle(1)
        return running

    def cursor(self, name: str = "usage") -> S3Cursor:
        return S3Cursor.decode(self.sink.get_state(cursor_key("s3", name)))

    def events(self) -> list[dict[str, Any]]:
        return self.sink.events_queued()

    def dead(self) -> list[tuple[str, str]]:
        return [(d.rule, d.reason) for d in self.sink.dead()]


@pytest.fixture
def harness(s3: S3Server, sink: PipelineSink) -> Harness:
    return Harness(s3, sink)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(e["type"], e["subject"], e["data"].get("n")) for e in events]


CSV = b"type,subject,n,time\napi-calls,acme,1,2024-06-01T00:00:00Z\napi-calls,globex,2,\n"
ROWS = [("api-calls", "acme", 1), ("api-calls", "globex", 2)]


@pytest.mark.parametrize(
    ("file_format", "key", "body"),
    [
        ("jsonl", "u/a.jsonl", jsonl(usage(1), usage(2, "globex"))),
        ("jsonl", "u/a.jsonl.gz", gzip.compress(jsonl(usage(1), usage(2, "globex")))),
        ("json", "u/a.json", orjson.dumps([usage(1), usage(2, "globex")])),
        ("csv", "u/a.csv", CSV),
        ("csv", "u/a.csv.gz", gzip.compress(CSV)),
    ],
)
async def test_every_row_of_every_format_becomes_an_event(
    harness: Harness, file_format: str, key: str, body: bytes
) -> None:
    etag = harness.s3.put(harness.bucket, key, body)
    source = await harness.read_all(format=file_format)
    assert summary(harness.events()) == ROWS
    assert harness.cursor() == S3Cursor(after=key, etag=etag)
    assert source.stats.counts == {"rows": 2, "objects_completed": 1}


async def test_rows_are_log_records_with_the_object_and_row_and_the_pack_keeps_every_column(
    harness: Harness,
) -> None:
    harness.s3.put(harness.bucket, "u/a.csv", CSV)
    await harness.read_all(format="csv")
    first, second = harness.events()
    assert (first["time"], first["data"]) == (
        "2024-06-01T00:00:00Z",
        {"type": "api-calls", "subject": "acme", "n": 1, "time": "2024-06-01T00:00:00Z"},
    )
    assert second["time"] != first["time"]  # no time column: the object's last-modified time
    assert second["data"] == {"type": "api-calls", "subject": "globex", "n": 2}  # empty cells left out


async def test_cloudevents_pass_through_with_their_own_ids(harness: Harness) -> None:
    events = [
        {"specversion": "1.0", "id": f"evt-{i}", "source": "billing", "type": "tokens", "subject": "acme",
         "time": "2024-06-01T00:00:00Z", "data": {"tokens": i}}
        for i in range(3)
    ]  # fmt: skip
    harness.s3.put(harness.bucket, "ce/1.jsonl", jsonl(*events))
    harness.s3.put(harness.bucket, "ce/2.json", orjson.dumps(events))  # the same events as a batch
    source = await harness.read_all(format="cloudevents")
    assert harness.events() == events  # the copies in the second file were deduplicated
    assert [r[0] for r in harness.sink.calls] == ["events", "events"]
    assert source.stats.counts["events"] == 6


async def test_invalid_cloudevents_are_dead_lettered_and_the_valid_ones_still_count(harness: Harness) -> None:
    good = {"specversion": "1.0", "id": "e1", "source": "billing", "type": "t", "subject": "acme"}
    bad = {"specversion": "1.0", "id": "e2", "source": "billing", "type": "t"}
    harness.s3.put(harness.bucket, "ce.jsonl", jsonl(good, bad, {**good, "id": "e3"}) + b"oops\n")
    await harness.read_all(format="cloudevents")
    assert [e["id"] for e in harness.events()] == ["e1", "e3"]
    assert harness.dead() == [
        ("s3-unreadable-row", "ce.jsonl line 2: invalid CloudEvent: subject is required"),
        (
            "s3-unreadable-row",
            "ce.jsonl line 4: invalid JSON: unexpected character, expected a JSON value: "
            "line 1 column 1 (char 0)",
        ),
    ]
    assert [r[0] for r in harness.sink.calls] == ["events", "logs", "events", "logs"]


async def test_unreadable_rows_are_dead_lettered_with_key_and_line_and_the_rest_counts(
    harness: Harness,
) -> None:
    harness.s3.put(harness.bucket, "u/a.jsonl", jsonl(usage(1)) + b"{broken\n" + jsonl({"n": 3}, usage(4)))
    harness.s3.put(harness.bucket, "u/b.csv", b"type,subject,n\napi-calls,acme,5\napi-calls,acme\n")
    source = await harness.read_all(format="jsonl", suffix=".jsonl")
    await harness.read_all(harness.source(name="csv", format="csv", suffix=".csv"))
    assert summary(harness.events()) == [
        ("api-calls", "acme", 1),
        ("api-calls", "acme", 4),
        ("api-calls", "acme", 5),
    ]
    [unreadable, no_type, wrong_fields] = harness.dead()
    assert unreadable[0] == "s3-unreadable-row"
    assert unreadable[1].startswith("u/a.jsonl line 2: invalid JSON: ")
    assert no_type == ("s3-usage-row", "type: no value at record.body.type | record.body.event_type")
    assert wrong_fields == (
        "s3-unreadable-row",
        "u/b.csv line 3: 2 fields, the header has 3",
    )
    assert source.stats.counts == {"rows": 3, "rows_unreadable": 1, "objects_completed": 1}
    [dead] = [d for d in harness.sink.dead() if d.rule == "s3-usage-row"]
    assert b"u/a.jsonl" in dead.payload  # the record, with its key and row, is kept for replay


async def test_objects_are_read_once_in_key_order_and_new_ones_on_the_next_poll(harness: Harness) -> None:
    put = harness.s3.put
    put(harness.bucket, "2024-06-02.jsonl", jsonl(usage(2)))
    put(harness.bucket, "2024-06-01.jsonl", jsonl(usage(1)))
    async with harness.running(harness.source()):
        await harness.time.settle(1)
        put(harness.bucket, "2024-06-03.jsonl", jsonl(usage(3)))
        put(harness.bucket, "2024-05-31.jsonl", jsonl(usage(0)))  # late, below the cursor: never read
        await harness.time.advance(60)
        await harness.time.settle(1)
        await harness.time.advance(60)
        await harness.time.settle(1)
    assert [e["data"]["n"] for e in harness.events()] == [1, 2, 3]
    assert harness.cursor().after == "2024-06-03.jsonl"


async def test_prefix_suffix_and_after_choose_the_keys(harness: Harness) -> None:
    for key, n in [
        ("a/1.jsonl", 1),
        ("u/0.jsonl", 0),
        ("u/1.jsonl", 1),
        ("u/1.txt", 9),
        ("u/2.jsonl", 2),
        ("u/x/", 9),
    ]:
        harness.s3.put(harness.bucket, key, jsonl(usage(n)) if n != 9 else b"")
    await harness.read_all(prefix="u/", suffix=".jsonl", after="u/0.jsonl")
    assert [e["data"]["n"] for e in harness.events()] == [1, 2]
    assert harness.cursor() == S3Cursor(after="u/x/")  # passed over the others too (no ETag: not read)


async def test_rows_commit_in_chunks_each_with_the_cursor(harness: Harness) -> None:
    etag = harness.s3.put(harness.bucket, "big.jsonl", jsonl(*(usage(i) for i in range(5))))
    await harness.read_all(batch_rows=2)
    cursors = [S3Cursor.decode(state[cursor_key("s3", "usage")]) for _, _, state in harness.sink.calls]
    progress = [(c.after, c.etag, c.current and (c.current.etag, c.current.position.rows)) for c in cursors]
    assert progress == [("", "", (etag, 2)), ("", "", (etag, 4)), ("big.jsonl", etag, None)]
    assert [n for _, n, _ in harness.sink.calls] == [2, 2, 1]


class CrashAfter:
    """A sink that commits ``commits`` calls, then stops the source (as if the process died)."""

    def __init__(self, sink: PipelineSink, commits: int, stop: asyncio.Event) -> None:
        self.sink, self.left, self.stop = sink, commits, stop

    async def _counted(self, result: IngestResult) -> IngestResult:
        self.left -= 1
        if self.left == 0:
            self.stop.set()
            await asyncio.Event().wait()  # never returns: the source is cancelled here
        return result

    async def logs(self, request: Any, cursor: Cursor) -> IngestResult:
        return await self._counted(await self.sink.logs(request, cursor))

    async def metrics(self, request: Any, cursor: Cursor) -> IngestResult:
        raise AssertionError("no metrics from s3")

    async def events(self, events: list[EncodedEvent], cursor: Cursor) -> IngestResult:
        return await self._counted(await self.sink.events(events, cursor))

    def get_state(self, key: bytes) -> bytes | None:
        return self.sink.get_state(key)


@pytest.mark.parametrize(
    ("file_format", "key", "encode"),
    [
        ("jsonl", "big.jsonl", lambda rows: jsonl(*rows)),
        ("json", "big.json", orjson.dumps),
        ("csv", "big.csv", csv_rows),
        ("jsonl", "big.jsonl.gz", lambda rows: gzip.compress(jsonl(*rows))),
    ],
)  # fmt: skip
async def test_a_crash_mid_object_resumes_after_the_last_commit_with_the_same_ids(
    harness: Harness, s3: S3Server, tmp_path: Path, file_format: str, key: str, encode: Any
) -> None:
    harness.s3.put(harness.bucket, key, encode([usage(i) for i in range(50)]))
    config = harness.config(format=file_format, batch_rows=7)
    stop = asyncio.Event()
    crashing = CrashAfter(harness.sink, 3, stop)
    task = asyncio.create_task(harness.source(config).run(crashing, stop))
    await asyncio.wait_for(task, 10)
    current = harness.cursor().current
    assert current is not None
    assert current.position.rows == 21

    await harness.read_all(harness.source(config))
    ids = [e["id"] for e in harness.events()]
    assert [e["data"]["n"] for e in harness.events()] == list(range(50))
    assert (harness.cursor().after, harness.cursor().current) == (key, None)
    assert harness.client is not None
    resumed_get = harness.client.gets[0]
    assert resumed_get.get("Range") == (
        None if key.endswith(".gz") else f"bytes={_offset_after(encode, 21)}-"
    )

    # The same object read in one go, into another queue, gives the very same ids.
    other = PipelineSink(tmp_path / "other")
    try:
        async with harness.running(harness.source(config), other):
            await harness.time.settle(1)
        assert [e["id"] for e in other.events_queued()] == ids
    finally:
        other.close()


def _offset_after(encode: Any, rows: int) -> int:
    whole = encode([usage(i) for i in range(50)])
    if whole.startswith(b"["):  # json: after the element, before its comma
        return len(encode([usage(i) for i in range(rows)])) - 1
    if whole.startswith(b"type,"):
        return len(encode([usage(i) for i in range(rows)]))
    return len(jsonl(*(usage(i) for i in range(rows))))


async def test_an_object_changed_mid_read_continues_at_the_same_row_of_its_new_version(
    harness: Harness,
) -> None:
    harness.s3.put(harness.bucket, "a.jsonl", jsonl(*(usage(i) for i in range(10))))
    config = harness.config(batch_rows=4)
    stop = asyncio.Event()
    await asyncio.wait_for(harness.source(config).run(CrashAfter(harness.sink, 1, stop), stop), 10)
    harness.s3.put(harness.bucket, "a.jsonl", jsonl(*(usage(100 + i) for i in range(6))))
    source = await harness.read_all(harness.source(config))
    assert [e["data"]["n"] for e in harness.events()] == [0, 1, 2, 3, 104, 105]
    assert source.stats.counts["objects_changed"] == 1
    assert (harness.cursor().after, harness.cursor().current) == ("a.jsonl", None)


async def test_an_object_deleted_mid_read_is_passed_over(harness: Harness) -> None:
    harness.s3.put(harness.bucket, "a.jsonl", jsonl(*(usage(i) for i in range(10))))
    harness.s3.put(harness.bucket, "b.jsonl", jsonl(usage(99)))
    config = harness.config(batch_rows=4)
    stop = asyncio.Event()
    await asyncio.wait_for(harness.source(config).run(CrashAfter(harness.sink, 1, stop), stop), 10)
    harness.s3.client.delete_object(Bucket=harness.bucket, Key="a.jsonl")
    source = await harness.read_all(harness.source(config))
    assert [e["data"]["n"] for e in harness.events()] == [0, 1, 2, 3, 99]
    assert source.stats.counts["objects_vanished"] == 1


async def test_a_full_queue_pauses_the_source_and_the_same_rows_are_offered_again(harness: Harness) -> None:
    harness.s3.put(harness.bucket, "a.jsonl", jsonl(usage(1), usage(2)))
    harness.sink.refuse = 2
    async with harness.running(source := harness.source()):
        await harness.time.settle(1)  # waiting 1s after the first refusal
        assert harness.cursor() == S3Cursor()
        await harness.time.advance(1)
        await harness.time.settle(1)
        await harness.time.advance(2)
        await harness.time.settle(1)
    assert [e["data"]["n"] for e in harness.events()] == [1, 2]
    assert source.stats.counts["commits_retried"] == 2


async def test_a_failing_listing_is_retried_with_backoff(harness: Harness) -> None:
    source = harness.source(bucket="not-there-yet")
    async with harness.running(source):
        await harness.time.settle(1)
        assert source.stats.counts == {"reads_failed": 1}
        harness.s3.client.create_bucket(Bucket="not-there-yet")
        harness.s3.put("not-there-yet", "a.jsonl", jsonl(usage(7)))
        await harness.time.advance(1)
        await harness.time.settle(1)
    assert [e["data"]["n"] for e in harness.events()] == [7]
    assert harness.time.waited[:2] == [1.0, 60.0]  # the backoff, then the poll interval


async def test_an_object_rewritten_shorter_than_the_committed_offset_is_read_as_changed(
    harness: Harness,
) -> None:
    harness.s3.put(harness.bucket, "a.jsonl", jsonl(*(usage(i, "a-long-subject-name") for i in range(5))))
    config = harness.config(batch_rows=3)
    stop = asyncio.Event()
    await asyncio.wait_for(harness.source(config).run(CrashAfter(harness.sink, 1, stop), stop), 10)
    committed = harness.cursor().current
    assert committed is not None
    assert committed.position.rows == 3
    etag = harness.s3.put(harness.bucket, "a.jsonl", jsonl(*({"n": 100 + i} for i in range(6))))
    assert committed.position.offset is not None
    assert len(jsonl(*({"n": 100 + i} for i in range(6)))) < committed.position.offset  # a GET there: 416

    source = await harness.read_all(harness.source(config))
    assert [e["data"]["n"] for e in harness.events()] == [0, 1, 2]
    assert [reason.split(":")[0] for _, reason in harness.dead()] == ["type"] * 3  # rows 4-6, new version
    assert source.stats.counts["objects_changed"] == 1
    assert harness.cursor() == S3Cursor(after="a.jsonl", etag=etag)


async def test_an_unchanged_object_committed_to_its_very_end_is_done_without_reading_again(
    harness: Harness,
) -> None:
    etag = harness.s3.put(harness.bucket, "a.jsonl", jsonl(*(usage(i) for i in range(6))))
    config = harness.config(batch_rows=3)
    stop = asyncio.Event()
    await asyncio.wait_for(harness.source(config).run(CrashAfter(harness.sink, 2, stop), stop), 10)
    current = harness.cursor().current
    assert current is not None
    assert current.position.rows == 6  # every row committed, the object not yet marked done

    source = await harness.read_all(harness.source(config))
    assert [e["data"]["n"] for e in harness.events()] == list(range(6))
    assert "objects_changed" not in source.stats.counts
    assert harness.cursor() == S3Cursor(after="a.jsonl", etag=etag)


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    ("file_format", "key", "body"),
    [
        ("jsonl", "u/a.jsonl", BOM + jsonl(usage(1), usage(2, "globex"))),
        ("json", "u/a.json", BOM + orjson.dumps([usage(1), usage(2, "globex")])),
        ("csv", "u/a.csv", BOM + CSV),
        ("jsonl", "u/a.jsonl.gz", gzip.compress(BOM + jsonl(usage(1), usage(2, "globex")))),
    ],
)
async def test_a_byte_order_mark_at_the_start_of_an_object_is_skipped(
    harness: Harness, file_format: str, key: str, body: bytes
) -> None:
    harness.s3.put(harness.bucket, key, body)
    source = await harness.read_all(format=file_format)
    assert summary(harness.events()) == ROWS
    assert harness.dead() == []
    assert source.stats.counts == {"rows": 2, "objects_completed": 1}


@pytest.mark.parametrize("batch", [True, False])
async def test_cloudevents_files_with_a_byte_order_mark(harness: Harness, batch: bool) -> None:
    events = [
        {"specversion": "1.0", "id": f"evt-{i}", "source": "billing", "type": "tokens", "subject": "acme",
         "time": "2024-06-01T00:00:00Z", "data": {"tokens": i}}
        for i in range(2)
    ]  # fmt: skip
    harness.s3.put(harness.bucket, "ce.json", BOM + (orjson.dumps(events) if batch else jsonl(*events)))
    await harness.read_all(format="cloudevents")
    assert harness.events() == events
    assert harness.dead() == []


async def test_a_stray_quote_in_a_csv_row_loses_no_other_row(harness: Harness) -> None:
    rows = [b"api-calls,acme,%d,x" % n for n in range(1, 50)]
    rows[9] = b'api-calls,acme,10,5" disk'  # a quote inside a field: a character like any other
    rows[19] = b'api-calls,acme,20,"5 disk'  # a quoted field never closed: this row alone is unreadable
    body = b"type,subject,n,note\n" + b"".join(r + b"\n" for r in rows)
    harness.s3.put(harness.bucket, "u.csv", body)
    source = await harness.read_all(format="csv", batch_rows=7)
    assert [e["data"]["n"] for e in harness.events()] == [n for n in range(1, 50) if n != 20]
    assert harness.events()[9]["data"]["note"] == '5" disk'
    assert harness.dead() == [
        (
            "s3-unreadable-row",
            "u.csv line 21: unterminated quoted field (no closing quote before the end of the file)",
        )
    ]
    [dead] = harness.sink.dead()
    assert b'api-calls,acme,20,\\"5 disk' in dead.payload or b'api-calls,acme,20,"5 disk' in dead.payload
    assert source.stats.counts == {"rows": 48, "rows_unreadable": 1, "objects_completed": 1}
