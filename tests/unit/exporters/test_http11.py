"""The HTTP/1.1 transport against real local servers (asyncio, free ports, TLS from a private CA)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from otlp_meter.exporters import http11
from otlp_meter.exporters.config import Target
from otlp_meter.exporters.http11 import Http11Transport, proxied_by_environment
from otlp_meter.exporters.openmeter import OpenMeterSink, trust
from tests.support.certs import CertificateAuthority
from tests.support.service import free_port

Request = tuple[bytes, bytes]  # (head, body)
Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request (Content-Length bodies only), or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def answer(status: int = 200, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Server:
    """An asyncio server running ``handler`` per connection; counts connections and requests."""

    def __init__(self, handler: Handler, context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.context = context
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests: list[Request] = []
        self.received = asyncio.Event()
        self.release = asyncio.Event()  # for handlers that hang until the test ends
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        scheme = "https" if self.context else "http"
        host = "localhost" if self.context else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/api/v1/events?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)

    async def next_request(self, reader: asyncio.StreamReader) -> Request | None:
        request = await read_request(reader)
        if request is not None:
            self.requests.append(request)
            self.received.set()
        return request


def answering(*answers: bytes, close_after: bool = False) -> Handler:
    """Answers the requests on each connection with ``answers`` in turn (the last one repeats)."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = 0
        while await server.next_request(reader) is not None:
            writer.write(answers[min(index, len(answers) - 1)])
            await writer.drain()
            index += 1
            if close_after:
                return

    return handler


@pytest.fixture
async def client() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(transport: Http11Transport | None = None, **kwargs: Any) -> httpx.AsyncClient:
        made = httpx.AsyncClient(transport=transport or Http11Transport(None, 4), **kwargs)
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.aclose()


# -- the exchange --------------------------------------------------------------------------------


async def test_the_request_line_host_headers_and_body_go_out_and_the_answer_comes_back(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async with Server(answering(answer(201, b"made", "X-A: 1", "x-a: 2", "Retry-After: 5"))) as server:
        response = await client().post(server.url, content=b"[1,2]", headers={"x-token": "t"})
    head, body = server.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/events?x=1 HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in [line.lower() for line in lines]
    assert b"x-token: t" in lines
    assert b"content-length: 5" in [line.lower() for line in lines]
    assert body == b"[1,2]"
    assert response.status_code == 201
    assert response.content == b"made"
    assert response.headers.get_list("X-a") == ["1", "2"]  # case-insensitive, every value kept
    assert response.headers["retry-after"] == "5"
    assert response.http_version == "HTTP/1.1"


async def test_keep_alive_one_connection_serves_every_request(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    transport = Http11Transport(None, 4)
    async with Server(answering(answer(204))) as server:
        http = client(transport)
        for i in range(5):
            assert (await http.post(server.url, content=b"x" * i)).status_code == 204
    assert server.connections == 1
    assert transport.connections_opened == 1
    assert [body for _, body in server.requests] == [b"x" * i for i in range(5)]


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    closed = asyncio.Event()

    async def answer_once_then_close(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.next_request(reader)
        writer.write(answer(204))  # keep-alive by the headers, then an idle timeout
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    transport = Http11Transport(None, 1)
    async with Server(answer_once_then_close) as server:
        http = client(transport)
        assert (await http.post(server.url, content=b"1")).status_code == 204
        await closed.wait()
        (idle,) = transport._idle[("http", "127.0.0.1", server.port)]
        now = idle.idle_since  # not expired: closed is what makes it unusable
        for _ in range(100):  # the client's loop reads the FIN within an iteration or two
            if not idle.usable(now, 5.0):
                break
            await asyncio.sleep(0)
        assert not idle.usable(now, 5.0)  # seen as closed before use: no failed attempt, no retry
        assert (await http.post(server.url, content=b"2")).status_code == 204
    assert server.connections == 2
    assert transport.connections_opened == 2


async def test_a_connection_idle_longer_than_keepalive_expiry_is_replaced_not_reused(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    """A NAT or load balancer may forget a quiet flow without a FIN: after ``keepalive_expiry``
    the connection is not trusted any more (a request on it could wait out the read timeout)."""
    now = [0.0]
    transport = Http11Transport(None, 1, keepalive_expiry=5.0, clock=lambda: now[0])
    async with Server(answering(answer(204))) as server:
        http = client(transport)
        for at in (0.0, 4.0, 8.9, 15.0):  # 4 and 4.9 s idle: reused; 6.1 s: replaced
            now[0] = at
            assert (await http.post(server.url, content=b"{}")).status_code == 204
    assert transport.connections_opened == 2
    assert server.connections == 2


async def test_a_reused_connection_dropped_before_any_answer_is_retried_once_on_a_fresh_one(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def drop_the_second_request(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.next_request(reader)
        writer.write(answer(204))
        await writer.drain()
        if server.connections == 1:  # the first connection: read the next request, answer nothing
            await server.next_request(reader)
            return
        while await server.next_request(reader) is not None:
            writer.write(answer(204))

    transport = Http11Transport(None, 1)
    async with Server(drop_the_second_request) as server:
        http = client(transport)
        assert (await http.post(server.url, content=b"1")).status_code == 204
        assert (await http.post(server.url, content=b"2")).status_code == 204
    assert [body for _, body in server.requests] == [b"1", b"2", b"2"]
    assert transport.connections_opened == 2


async def test_a_fresh_connection_dropped_without_an_answer_is_an_error_not_a_retry(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def drop(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)

    async with Server(drop) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client().post(server.url, content=b"1")
    assert server.connections == 1


async def test_connection_close_is_honoured(client: Callable[..., httpx.AsyncClient]) -> None:
    transport = Http11Transport(None, 4)
    async with Server(answering(answer(200, b"ok", "Connection: close"))) as server:
        http = client(transport)
        for _ in range(3):
            assert (await http.get(server.url)).content == b"ok"
    assert transport.connections_opened == 3


async def test_a_chunked_answer_is_decoded_and_the_connection_reused(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    chunked = (
        b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    transport = Http11Transport(None, 4)
    async with Server(answering(chunked)) as server:
        http = client(transport)
        for _ in range(2):
            response = await http.post(server.url, content=b"{}")
            assert (response.status_code, response.text) == (400, "hello world")
    assert transport.connections_opened == 1


async def test_a_body_without_length_runs_until_close_and_the_connection_is_not_reused(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    transport = Http11Transport(None, 4)
    async with Server(answering(b"HTTP/1.1 500 Oops\r\n\r\nall of it", close_after=True)) as server:
        http = client(transport)
        for _ in range(2):
            response = await http.post(server.url, content=b"{}")
            assert (response.status_code, response.content) == (500, b"all of it")
    assert transport.connections_opened == 2


async def test_interim_1xx_answers_are_skipped(client: Callable[..., httpx.AsyncClient]) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
    async with Server(answering(interim + answer(202, b"yes"))) as server:
        response = await client().post(server.url, content=b"{}")
    assert (response.status_code, response.content) == (202, b"yes")
    assert "link" not in response.headers


async def test_head_204_and_304_have_no_body_whatever_their_headers_say(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    no_body = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n"
    answers = (no_body % 200, no_body % 204, no_body % 304, answer(200, b"after"))
    transport = Http11Transport(None, 4)
    async with Server(answering(*answers)) as server:
        http = client(transport)
        assert (await http.head(server.url)).content == b""
        assert (await http.get(server.url)).status_code == 204
        assert (await http.get(server.url)).status_code == 304
        assert (await http.get(server.url)).content == b"after"  # the stream stayed in step
    assert transport.connections_opened == 1


async def test_an_oversized_body_is_cut_and_its_connection_closed(
    client: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http11, "MAX_BODY", 4)
    transport = Http11Transport(None, 4)
    async with Server(answering(answer(413, b"too large"))) as server:
        http = client(transport)
        for _ in range(2):
            response = await http.post(server.url, content=b"{}")
            assert (response.status_code, response.content) == (413, b"too ")
    assert transport.connections_opened == 2


# -- failures --------------------------------------------------------------------------------------


_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        _CHUNKED + b"-3\r\nabc\r\n0\r\n\r\n",
        _CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n",
        _CHUNKED + b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
    ],
    ids=["status", "code", "header", "huge-length", "minus-length", "minus-chunk", "0x-chunk", "_-chunk"],
)
async def test_a_malformed_answer_is_a_protocol_error(
    client: Callable[..., httpx.AsyncClient], garbage: bytes
) -> None:
    async with Server(answering(garbage)) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client().post(server.url, content=b"{}")


async def test_a_folded_header_line_is_unfolded_into_one_value(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    folded = b"HTTP/1.1 200 OK\r\nX-Note: one\r\n  two\r\n\tthree\r\nContent-Length: 2\r\n\r\nok"
    async with Server(answering(folded)) as server:
        response = await client().post(server.url, content=b"{}")
    assert response.headers["x-note"] == "one two three"
    assert (response.status_code, response.content) == (200, b"ok")


async def test_an_answer_framed_both_chunked_and_by_length_is_read_chunked_and_its_connection_dropped(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    transport = Http11Transport(None, 1)
    async with Server(answering(both)) as server:
        http = client(transport)
        for _ in range(2):
            assert (await http.post(server.url, content=b"{}")).content == b"ok"
    assert transport.connections_opened == 2


async def test_an_endless_head_is_a_protocol_error(client: Callable[..., httpx.AsyncClient]) -> None:
    async with Server(answering(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000)) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="over"):
            await client().post(server.url, content=b"{}")


async def test_a_refused_connection_is_a_connect_error(client: Callable[..., httpx.AsyncClient]) -> None:
    with pytest.raises(httpx.ConnectError):
        await client().post(f"http://127.0.0.1:{free_port()}/", content=b"{}")


async def test_a_silent_server_is_a_read_timeout(client: Callable[..., httpx.AsyncClient]) -> None:
    async def silent(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        await server.release.wait()

    async with Server(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client(timeout=httpx.Timeout(5.0, read=0.05)).post(server.url, content=b"{}")


async def test_a_server_that_does_not_read_is_a_write_timeout(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def deaf(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.release.wait()

    async with Server(deaf) as server:
        with pytest.raises(httpx.WriteTimeout):
            await client(timeout=httpx.Timeout(5.0, write=0.05)).post(server.url, content=b"x" * 64_000_000)


async def test_a_write_timeout_drops_the_connection_with_what_it_had_not_sent(
    client: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A polite close would wait, socket and buffer held, for a peer that no longer reads."""
    writers: list[asyncio.StreamWriter] = []
    connect = asyncio.open_connection

    async def recording(*args: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await connect(*args, **kwargs)
        writers.append(writer)
        return reader, writer

    async def deaf(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.release.wait()

    monkeypatch.setattr(asyncio, "open_connection", recording)
    async with Server(deaf) as server:
        with pytest.raises(httpx.WriteTimeout):
            await client(timeout=httpx.Timeout(5.0, write=0.05)).post(server.url, content=b"x" * 64_000_000)
        [writer] = writers
        assert writer.transport.get_write_buffer_size() == 0
        await asyncio.wait_for(writer.wait_closed(), 5.0)  # closed while the server still does not read


async def test_a_connect_that_hangs_is_a_connect_timeout(
    client: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio, "open_connection", hang)
    with pytest.raises(httpx.ConnectTimeout):
        await client(timeout=httpx.Timeout(5.0, connect=0.05)).post("http://127.0.0.1:9/", content=b"{}")


async def test_waiting_too_long_for_a_free_connection_is_a_pool_timeout(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def silent(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        await server.release.wait()

    async with Server(silent) as server:
        http = client(Http11Transport(None, 1), timeout=httpx.Timeout(5.0, pool=0.05))
        first = asyncio.create_task(http.post(server.url, content=b"1"))
        await server.received.wait()
        with pytest.raises(httpx.PoolTimeout):
            await http.post(server.url, content=b"2")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


# -- the pool --------------------------------------------------------------------------------------


async def test_concurrent_requests_never_open_more_than_max_connections(
    client: Callable[..., httpx.AsyncClient],
) -> None:
    transport = Http11Transport(None, 2)
    async with Server(answering(answer(204))) as server:
        http = client(transport)
        responses = await asyncio.gather(*(http.post(server.url, content=b"%d" % i) for i in range(20)))
    assert [r.status_code for r in responses] == [204] * 20
    assert transport.connections_opened == 2
    assert server.peak == 2
    assert sorted(body for _, body in server.requests) == sorted(b"%d" % i for i in range(20))


async def test_aclose_closes_the_idle_connections() -> None:
    ended = asyncio.Event()

    async def serve_until_eof(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await server.next_request(reader) is not None:
            writer.write(answer(204))
        ended.set()

    transport = Http11Transport(None, 2)
    async with Server(serve_until_eof) as server:
        http = httpx.AsyncClient(transport=transport)
        await http.post(server.url, content=b"{}")
        await http.aclose()
        await ended.wait()


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = CertificateAuthority()
    cert, key = ca.server("localhost").write(tmp_path, "server")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, ca.write(tmp_path / "ca.pem")


async def test_tls_with_the_private_ca_is_verified_and_kept_alive(
    client: Callable[..., httpx.AsyncClient], tls_server_context: tuple[ssl.SSLContext, Path]
) -> None:
    context, ca_file = tls_server_context
    transport = Http11Transport(trust(ca_file), 2)
    async with Server(answering(answer(204)), context) as server:
        http = client(transport)
        for _ in range(3):
            assert (await http.post(server.url, content=b"{}")).status_code == 204
    assert transport.connections_opened == 1


async def test_aclose_does_not_wait_for_a_tls_peer_that_stopped_answering(
    tls_server_context: tuple[ssl.SSLContext, Path],
) -> None:
    """A TLS close waits for the peer's close_notify (30 s by default); an idle connection has
    nothing to send, so a stop must not wait on a peer that went quiet."""
    context, ca_file = tls_server_context

    async def answer_once_then_hang(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.next_request(reader)
        writer.write(answer(204))
        await writer.drain()
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()  # reads nothing more: no close_notify answered
        await server.release.wait()

    async with Server(answer_once_then_hang, context) as server:
        http = httpx.AsyncClient(transport=Http11Transport(trust(ca_file), 2))
        assert (await http.post(server.url, content=b"{}")).status_code == 204
        await asyncio.wait_for(http.aclose(), 5.0)


async def test_tls_with_another_ca_is_refused(
    client: Callable[..., httpx.AsyncClient], tls_server_context: tuple[ssl.SSLContext, Path], tmp_path: Path
) -> None:
    context, _ = tls_server_context
    other = CertificateAuthority("someone else").write(tmp_path / "other.pem")
    async with Server(answering(answer(204)), context) as server:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client(Http11Transport(trust(other), 2)).post(server.url, content=b"{}")
    assert server.requests == []


# -- proxies: httpx's own transport whenever the environment routes the endpoint through one ---------


@pytest.mark.parametrize(
    ("environment", "proxied"),
    [
        ({}, False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, True),
        ({"ALL_PROXY": "http://proxy:3128"}, True),
        ({"HTTP_PROXY": "http://proxy:3128"}, False),  # the endpoint is https
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "openmeter.example"}, False),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, False),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "other.example"}, True),
    ],
)
async def test_the_sink_keeps_httpx_default_transport_only_behind_a_proxy(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], proxied: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    url = "https://openmeter.example/api/v1/events"
    assert proxied_by_environment(url) is proxied
    sink = OpenMeterSink(Target("openmeter", url), 5.0, 2)
    try:
        assert isinstance(sink._client._transport, Http11Transport) is not proxied
    finally:
        await sink.close()
