"""Large objects stream: memory stays at one commit's rows whatever the object's size."""

from __future__ import annotations

import datetime as dt
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from otlp_meter.sources.s3_reader import ObjectProgress, ObjectStream

ROWS = 20_000
ROW = b'{"type": "api-calls", "subject": "customer-%06d", "n": %d, "padding": "%s"}\n'
PADDING = "x" * 800


def lines() -> Iterator[bytes]:
    for n in range(ROWS):
        yield ROW % (n % 1000, n, PADDING.encode())


class LazyBody:
    """A response body produced as it is read, like a socket: the object is never in memory."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.size = 0

    def read(self, amount: int) -> bytes:
        while len(self._buffer) < amount:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out, self._buffer = self._buffer[:amount], self._buffer[amount:]
        self.size += len(out)
        return out

    def close(self) -> None:
        pass


def batched(chunks: Iterator[bytes], size: int = 256 * 1024) -> Iterator[bytes]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size:
            yield buffer
            buffer = b""
    yield buffer


def gzipped(chunks: Iterator[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(wbits=31)
    for chunk in batched(chunks):
        yield compressor.compress(chunk)
    yield compressor.flush()


class OneObjectClient:
    def __init__(self, body: LazyBody) -> None:
        self.body = body

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        return {"ETag": '"e"', "LastModified": dt.datetime(2024, 6, 1, tzinfo=dt.UTC), "Body": self.body}


@pytest.mark.parametrize("compressed", [False, True])
def test_a_large_object_is_read_in_bounded_memory(compressed: bool) -> None:
    body = LazyBody(gzipped(lines()) if compressed else batched(lines()))
    stream = ObjectStream(
        OneObjectClient(body),
        "bucket",
        ObjectProgress("big.jsonl.gz" if compressed else "big.jsonl", '"e"', 0),
        file_format="jsonl",
        compression="auto",
        max_row_bytes=1 << 20,
        delimiter=",",
    )
    tracemalloc.start()
    try:
        stream.open()
        seen, finished = 0, False
        while not finished:
            rows, finished = stream.take(1000, 4 << 20)
            assert len(rows) <= 1000
            seen += len(rows)
            assert all(r.error is None for r in rows)
            del rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = ROWS * len(ROW % (0, 0, PADDING.encode()))
    assert seen == ROWS
    assert total > 15 << 20  # the object: over 15 MiB of rows
    assert peak < 5 << 20, f"peak {peak / 2**20:.1f} MiB"  # one batch of rows and a chunk or two
