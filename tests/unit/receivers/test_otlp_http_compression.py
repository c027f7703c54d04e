"""OTLP/HTTP ``Content-Encoding``: gzip (also several concatenated members) and deflate bodies are
inflated, and the size limit applies *after* inflation without ever inflating past it."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from google.rpc import status_pb2

from otlp_meter.errors import DecodeError, PayloadTooLargeError, UnsupportedMediaTypeError
from otlp_meter.receivers.config import HttpReceiverConfig
from otlp_meter.receivers.otlp_http import decompress, otlp_http_app
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
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZIP", gzip.compress), ("deflate", deflate)],
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


def test_a_gzip_bomb_is_refused_without_inflating_past_the_limit() -> None:
    bomb = gzip_bomb(64 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError):
            decompress(bomb, "gzip", LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT  # a few buffers of the limit, not 64 MiB


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


def test_unknown_encodings_are_unsupported() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        decompress(b"...", "br", LIMIT)
    with pytest.raises(UnsupportedMediaTypeError):
        decompress(b"...", "zstd", LIMIT)
