"""OTLP/HTTP ``Content-Encoding``: gzip (also several concatenated members), zstd (also several
frames) and deflate/zlib bodies are inflated, like the Collector's receiver takes them; the size
limit applies *after* inflation without ever inflating past it."""

from __future__ import annotations

import gzip
import os
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
import zstandard
from google.rpc import status_pb2

from otlp_meter.errors import DecodeError, PayloadTooLargeError, UnsupportedMediaTypeError
from otlp_meter.receivers import encoding
from otlp_meter.receivers.config import HttpReceiverConfig
from otlp_meter.receivers.encoding import decompress
from otlp_meter.receivers.otlp_http import otlp_http_app
from tests.unit.receivers.conftest import Stack, genai_logs

PROTOBUF = "application/x-protobuf"
LIMIT = 256 * 1024
MiB = 1024 * 1024


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zero bytes as gzip, built in 1 MiB steps (the bomb is about 1000 times smaller)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [deflater.compress(zeros) for _ in range(inflated // MiB)]
    parts.append(deflater.flush())
    return b"".join(parts)


def deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    app = otlp_http_app(HttpReceiverConfig(max_request_body_size=LIMIT), stack.core)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://otlp") as http:
        yield http


async def post(client: httpx.AsyncClient, body: bytes, encoding: str) -> httpx.Response:
    headers = {"content-type": PROTOBUF, "content-encoding": encoding}
    return await client.post("/v1/logs", content=body, headers=headers)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", deflate),
        ("zlib", deflate),
        ("zstd", zstd),
    ],
)
async def test_compressed_bodies_are_inflated(
    client: httpx.AsyncClient, stack: Stack, encoding: str, compress: object
) -> None:
    assert callable(compress)
    body = compress(genai_logs("acme", "globex").SerializeToString())

    response = await post(client, body, encoding)

    assert response.status_code == 200
    assert sorted(e["subject"] for e in stack.queued()) == ["acme", "globex"]


async def test_identity_is_no_encoding(client: httpx.AsyncClient, stack: Stack) -> None:
    response = await post(client, genai_logs("acme").SerializeToString(), "identity")

    assert response.status_code == 200
    assert len(stack.queued()) == 1


async def test_concatenated_gzip_members_are_one_body(client: httpx.AsyncClient, stack: Stack) -> None:
    raw = genai_logs("acme", "globex", "initech").SerializeToString()
    cut = len(raw) // 2
    body = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:])

    response = await post(client, body, "gzip")

    assert response.status_code == 200
    assert sorted(e["subject"] for e in stack.queued()) == ["acme", "globex", "initech"]


async def test_a_gzip_bomb_gets_413(client: httpx.AsyncClient, stack: Stack) -> None:
    bomb = gzip_bomb(64 * MiB)
    assert len(bomb) < LIMIT

    response = await post(client, bomb, "gzip")

    assert response.status_code == 413
    assert status_pb2.Status.FromString(response.content).code == 8  # RESOURCE_EXHAUSTED
    assert (
        stack.count("receiver_requests", transport="http_protobuf", signal="logs", outcome="too_large") == 1
    )


def refused_at_peak(body: bytes, encoding: str) -> int:
    """Peak bytes allocated while ``body`` is decompressed and refused as too large."""
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError):
            decompress(body, encoding, LIMIT)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_is_refused_without_inflating_past_the_limit() -> None:
    assert refused_at_peak(gzip_bomb(64 * MiB), "gzip") < 4 * LIMIT  # a few buffers of the limit, not 64 MiB


def test_a_bomb_hidden_in_a_later_gzip_member_is_refused_too() -> None:
    body = gzip.compress(b"x" * (LIMIT // 2)) + gzip_bomb(8 * MiB)

    with pytest.raises(PayloadTooLargeError):
        decompress(body, "gzip", LIMIT)


def test_inflating_to_exactly_the_limit_is_allowed() -> None:
    data = bytes(range(256)) * (LIMIT // 256)

    assert decompress(gzip.compress(data), "gzip", LIMIT) == data
    with pytest.raises(PayloadTooLargeError):
        decompress(gzip.compress(data + b"!"), "gzip", LIMIT)


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"not gzip at all", "gzip"),
        (gzip.compress(b"x" * 1000)[:-12], "gzip"),  # truncated
        (gzip.compress(b"payload") + b"trailing garbage", "gzip"),
        (b"not deflate", "deflate"),
    ],
    ids=["garbage", "truncated", "trailing-garbage", "deflate-garbage"],
)
async def test_broken_compressed_bodies_get_400(
    client: httpx.AsyncClient, body: bytes, encoding: str
) -> None:
    with pytest.raises(DecodeError):
        decompress(body, encoding, LIMIT)

    response = await post(client, body, encoding)

    assert response.status_code == 400
    assert status_pb2.Status.FromString(response.content).code == 3


@pytest.mark.parametrize("encoding", ["br", "snappy", "lz4", "compress"])
def test_other_encodings_are_unsupported_and_the_answer_names_the_supported_ones(encoding: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="gzip, zstd, deflate, zlib"):
        decompress(b"...", encoding, LIMIT)


def test_several_zstd_frames_are_one_body_and_a_zstd_bomb_stops_at_the_limit() -> None:
    assert decompress(zstd(b"one ") + zstd(b"two"), "zstd", LIMIT) == b"one two"
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 * MiB))
    assert len(bomb) < 64 * 1024
    assert refused_at_peak(bomb, "zstd") < 4 * LIMIT


@pytest.mark.parametrize(
    "body",
    [zstd(b"x" * 10_000)[:-3], b"not zstd", zstd(b"payload") + b"trailing garbage"],
    ids=["truncated", "garbage", "trailing-garbage"],
)
def test_broken_zstd_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decompress(body, "zstd", LIMIT)


def test_many_gzip_members_are_read_and_too_many_are_refused_before_inflating_them_all() -> None:
    """Each member costs a fresh inflater: a body of a million empty members is refused, not
    paid for (no client sends more than a few), and what is left of the body is never copied per
    member (that made such a body cost minutes)."""
    assert decompress(gzip.compress(b"") * 1000 + gzip.compress(b"{}"), "gzip", LIMIT) == b"{}"
    with pytest.raises(DecodeError, match="more than 1024 gzip members"):
        decompress(gzip.compress(b"") * 1_000_000, "gzip", 32 * MiB)


async def test_a_large_compressed_body_is_inflated_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inflated_on: list[threading.Thread] = []
    inflate = encoding.decompress

    def recording(body: bytes, content_encoding: str | None, limit: int) -> bytes:
        inflated_on.append(threading.current_thread())
        return inflate(body, content_encoding, limit)

    monkeypatch.setattr(encoding, "decompress", recording)
    large = os.urandom(encoding.OFF_LOOP_BYTES)  # incompressible: the gzip is as large
    assert await encoding.decompress_body(gzip.compress(large), "gzip", 2 * encoding.OFF_LOOP_BYTES) == large
    assert await encoding.decompress_body(gzip.compress(b"{}"), "gzip", LIMIT) == b"{}"
    assert [thread is threading.current_thread() for thread in inflated_on] == [False, True]
