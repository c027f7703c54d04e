"""HttpServer: uvicorn on a socket bound by us, so a port in use is an OSError at start and the
service keeps its signals and its shutdown order."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from otlp_meter.config_types import parse_endpoint
from otlp_meter.http_server import (
    HttpServer,
    Receive,
    Scope,
    Send,
    ServerLimits,
    read_body,
    respond,
)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        body = await read_body(receive, 1024)
        await respond(send, 200, b"hello " + (body or b"(too big)"), "text/plain")


async def test_starts_on_port_zero_serves_and_stops() -> None:
    server = HttpServer(hello, "127.0.0.1:0")
    await server.start()
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{host}:{port}/", content=b"world")
    await server.stop()

    assert (response.status_code, response.text) == (200, "hello world")
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((host, port)) != 0  # nobody listens any more


async def test_a_port_in_use_is_an_oserror_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(OSError, match="in use"):
            await HttpServer(hello, f"127.0.0.1:{port}").start()


async def test_the_port_is_free_again_after_stop() -> None:
    first = HttpServer(hello, "127.0.0.1:0")
    await first.start()
    port = first.address[1]
    await first.stop()

    second = HttpServer(hello, f"127.0.0.1:{port}")
    await second.start()
    await second.stop()


async def test_stop_lets_an_in_flight_request_finish() -> None:
    started = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            started.set()
            await asyncio.sleep(0.3)
            await respond(send, 200, b"done", "text/plain")

    server = HttpServer(slow, "127.0.0.1:0", graceful_timeout=5)
    await server.start()
    host, port = server.address
    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(client.get(f"http://{host}:{port}/"))
        await started.wait()
        await server.stop()
        response = await request

    assert (response.status_code, response.text) == (200, "done")


async def test_stop_before_start_and_twice_is_harmless() -> None:
    server = HttpServer(hello, "127.0.0.1:0")
    await server.stop()
    await server.start()
    await server.stop()
    await server.stop()


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [("0.0.0.0:4318", ("0.0.0.0", 4318)), ("[::1]:4318", ("::1", 4318)), (":8888", ("0.0.0.0", 8888))],
)
def test_endpoints_are_host_colon_port(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["4318", "localhost", "host:port", "host:"])
def test_an_endpoint_without_a_port_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_endpoint(endpoint)


async def test_read_body_stops_at_the_limit_and_refuses_a_truncated_body() -> None:
    from otlp_meter.http_server import ClientDisconnectedError

    def receiver(*messages: dict[str, object]) -> Receive:
        queue = list(messages)

        async def receive() -> dict[str, object]:
            return queue.pop(0)

        return receive

    chunk = {"type": "http.request", "body": b"x" * 600, "more_body": True}
    last = {"type": "http.request", "body": b"", "more_body": False}
    assert await read_body(receiver(chunk, last), 1024) == b"x" * 600
    assert await read_body(receiver(chunk, chunk, last), 1024) is None
    with pytest.raises(ClientDisconnectedError):
        await read_body(receiver(chunk, {"type": "http.disconnect"}), 1024)


async def test_a_server_whose_task_ends_is_no_longer_serving_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = HttpServer(hello, "127.0.0.1:0", name="otlp_http")
    assert not server.serving
    await server.start()
    assert server.serving
    task = server._task
    assert task is not None
    task.cancel()  # what a crash of uvicorn's serve() looks like from outside
    await asyncio.gather(task, return_exceptions=True)

    assert not server.serving  # readiness reports this receiver as not listening
    assert any("http_server_stopped" in r.getMessage() for r in caplog.records)


async def test_a_pipelined_request_that_starts_in_the_previous_body_s_last_chunk_is_served() -> None:
    """The head-size limit counts the bytes of the head being read, not the end of the previous
    request's body that came in the same read."""
    server = HttpServer(echo_size, "127.0.0.1:0", limits=ServerLimits(max_header_size=4096))
    await server.start()
    host, port = server.address
    body = b"x" * 100_000
    first = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    second = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(first + second[:20])
        answers = [await read_answer(reader)]
        writer.write(second[20:])
        answers.append(await read_answer(reader))
        writer.close()
    finally:
        await server.stop()
    assert answers == [(200, b"100000"), (200, b"2")]


async def echo_size(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        body = await read_body(receive, 1 << 20)
        await respond(send, 200, str(len(body or b"")).encode(), "text/plain")


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split(" ")[1]), await reader.readexactly(length)
