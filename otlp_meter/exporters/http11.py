"""A small HTTP/1.1 transport for httpx on asyncio streams: what the OpenMeter sink uses for direct
connections (no proxy), because httpcore + anyio + h11 cost ~400 µs of CPU per request.

Scope: one request per connection at a time, keep-alive pool of at most ``max_connections`` per
origin, idle connections dropped after ``keepalive_expiry`` (httpx's 5 s: a NAT or load balancer may
forget a quiet flow without telling either end), TLS through the given ``ssl.SSLContext``. Request
bodies are read into memory and written in one ``write``. Responses: ``Content-Length``,
``chunked``, or until close; 1xx skipped; HEAD/204/304 without a body; ``Connection: close``
honoured; obsolete line folding unfolded. No proxies, no HTTP/2, no upgrades, no trailers kept.

A connection is pooled only after a complete answer; any other end aborts it (no FIN handshake, no
waiting to flush what the peer will not read), so a stalled peer costs no socket or buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from httpx._utils import URLPattern, get_environment_proxies

MAX_HEAD = 64 * 1024  # status line + headers (also the limit of one chunk-size line)
MAX_BODY = 16 * 1024 * 1024  # beyond this the body is truncated and the connection closed
_NO_BODY_STATUS = frozenset((204, 304))
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_LENGTH_DIGITS = 19  # 10**19 bytes: more than anyone sends; and int() of 4300+ digits raises
_DEFAULT_PORTS = {"http": 80, "https": 443}


def proxied_by_environment(url: str) -> bool:
    """Whether httpx (``trust_env``) would send a request for ``url`` through a proxy: the same
    environment variables (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and the same matching."""
    mounts = sorted(
        ((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()), key=lambda m: m[0]
    )
    target = httpx.URL(url)
    for pattern, proxy in mounts:
        if pattern.matches(target):
            return proxy is not None
    return False


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Idle not longer than ``expiry`` and still open: the peer has not closed it, and sent
        nothing we did not ask for."""
        if now - self.idle_since > expiry or self.writer.is_closing() or self.reader.at_eof():
            return False
        return not _buffered(self.reader)  # a stale answer (e.g. a 408) before a close

    def abort(self) -> None:
        """Drop the connection now: unsent bytes are discarded, the socket is closed (a RST)."""
        self.writer.transport.abort()


def _buffered(reader: asyncio.StreamReader) -> bool:
    return bool(getattr(reader, "_buffer", b""))


class _Retry(Exception):
    """A reused connection failed before any byte of the answer: try once more on a fresh one."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


def _timeouts(request: httpx.Request) -> Mapping[str, float | None]:
    timeout: Mapping[str, float | None] = request.extensions.get("timeout", {})
    return timeout


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over ``asyncio.open_connection``, keep-alive pool per (scheme, host, port)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 10,
        keepalive_expiry: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._ssl = ssl_context
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._clock = clock
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self._closed = False
        self.connections_opened = 0  # for tests and diagnostics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[scheme]
        origin = (scheme, host, port)
        timeouts = _timeouts(request)
        body = await request.aread()
        payload = _encode_request(request, body)

        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self._max)
            self._idle[origin] = deque()
        if slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in time", request=request) from None
        else:
            await slots.acquire()
        try:
            idle = self._idle[origin]
            now = self._clock()
            while idle:
                connection = idle.pop()  # the most recently used: the least likely to be timed out
                if connection.usable(now, self._expiry):
                    try:
                        return await self._exchange(connection, origin, request, payload, timeouts, True)
                    except _Retry:
                        break
                connection.abort()
            connection = await self._connect(origin, request, timeouts)
            try:
                return await self._exchange(connection, origin, request, payload, timeouts, False)
            except _Retry as retry:  # pragma: no cover - only raised for reused connections
                raise retry.error from None
        finally:
            slots.release()

    async def _connect(
        self, origin: tuple[str, str, int], request: httpx.Request, timeouts: Mapping[str, float | None]
    ) -> _Connection:
        scheme, host, port = origin
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if scheme == "https":
                    context = self._ssl if self._ssl is not None else ssl.create_default_context()
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=context, server_hostname=host, limit=MAX_HEAD
                    )
                else:
                    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        self.connections_opened += 1
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        origin: tuple[str, str, int],
        request: httpx.Request,
        payload: bytes,
        timeouts: Mapping[str, float | None],
        reused: bool,
    ) -> httpx.Response:
        """Write the request, read the answer; the connection goes back to the pool or is closed."""
        keep = False
        try:
            reader, writer = connection.reader, connection.writer
            try:
                async with asyncio.timeout(timeouts.get("write")):
                    writer.write(payload)
                    await writer.drain()
            except TimeoutError:
                raise httpx.WriteTimeout("writing the request timed out", request=request) from None
            except OSError as exc:
                error = httpx.WriteError(str(exc) or type(exc).__name__, request=request)
                if reused:
                    raise _Retry(error) from exc
                raise error from exc
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    response, keep = await _read_response(reader, request, reused)
            except TimeoutError:
                raise httpx.ReadTimeout("reading the response timed out", request=request) from None
            if self._closed:
                keep = False
            return response
        finally:
            if keep:
                connection.idle_since = self._clock()
                self._idle[origin].append(connection)
            else:  # an error, a cancel, a timeout, or an answer that ends the connection
                connection.abort()

    async def aclose(self) -> None:
        """Close every connection (idle ones now; busy ones when their request ends).

        Idle connections have nothing left to send: they are aborted, not shut down politely,
        so a peer that no longer answers (a TLS close_notify never comes) cannot hold up a stop.
        """
        self._closed = True
        closing = [c for idle in self._idle.values() for c in idle]
        for idle in self._idle.values():
            idle.clear()
        for connection in closing:
            connection.abort()
        for connection in closing:
            with contextlib.suppress(OSError):  # already broken: closed is closed
                await connection.writer.wait_closed()


def _encode_request(request: httpx.Request, body: bytes) -> bytes:
    url = request.url
    head = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":
            chunked = True  # a streamed body of unknown length: we have it all now, send it chunked
        head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    if chunked:
        tail = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
        return b"".join(head) + tail
    return b"".join(head) + body


async def _read_response(
    reader: asyncio.StreamReader, request: httpx.Request, reused: bool
) -> tuple[httpx.Response, bool]:
    """The final answer (1xx skipped) and whether the connection may be reused."""
    first = True
    while True:
        head = await _read_head(reader, request, reused and first)
        first = False
        status, reason, version, headers = _parse_head(head, request)
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols", request=request)
            continue
        break
    keep = version == b"HTTP/1.1"
    content_length: int | None = None
    chunked = False
    until_close = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"connection":
            if b"close" in [token.strip().lower() for token in value.split(b",")]:
                keep = False
        elif lowered == b"content-length":
            if (
                not value.isdigit()
                or len(value) > _MAX_LENGTH_DIGITS
                or (content_length is not None and int(value) != content_length)
            ):
                raise httpx.RemoteProtocolError(f"bad Content-Length {value[:40]!r}", request=request)
            content_length = int(value)
        elif lowered == b"transfer-encoding":
            chunked = value.split(b",")[-1].strip().lower() == b"chunked"
            until_close = not chunked
    if chunked and content_length is not None:
        keep = False  # both framings: a smuggling attempt or a broken proxy (RFC 9112 6.3); no reuse
    if request.method == "HEAD" or status in _NO_BODY_STATUS:
        body = b""
    elif chunked:
        body, complete = await _read_chunked(reader, request)
        keep = keep and complete
    elif content_length is not None and not until_close:
        try:
            body = await reader.readexactly(min(content_length, MAX_BODY))
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("the body ended before Content-Length", request=request) from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        keep = keep and content_length <= MAX_BODY
    else:  # neither: the body runs until the server closes the connection
        keep = False
        try:
            body = await reader.read(MAX_BODY)
            while len(body) < MAX_BODY:
                more = await reader.read(MAX_BODY - len(body))
                if not more:
                    break
                body += more
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    extensions: dict[str, Any] = {"http_version": b"HTTP/1.1", "reason_phrase": reason}
    return httpx.Response(status, headers=headers, content=body, extensions=extensions), keep


async def _read_head(reader: asyncio.StreamReader, request: httpx.Request, retriable: bool) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        error = httpx.RemoteProtocolError("the server disconnected without an answer", request=request)
        if retriable and not exc.partial:
            raise _Retry(error) from None
        raise error from None
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError(f"response head over {MAX_HEAD} bytes", request=request) from None
    except OSError as exc:
        read_error = httpx.ReadError(str(exc) or type(exc).__name__, request=request)
        if retriable and isinstance(exc, ConnectionError) and not _buffered(reader):
            raise _Retry(read_error) from exc  # reset before any byte of the answer
        raise read_error from exc


def _parse_head(head: bytes, request: httpx.Request) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}", request=request)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding: one space (RFC 9112 5.2)
            name, value = headers[-1]
            headers[-1] = (name, (value + b" " + line.strip()).strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}", request=request)
        headers.append((name, value.strip()))
    return int(parts[1]), parts[2] if len(parts) == 3 else b"", parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader, request: httpx.Request) -> tuple[bytes, bool]:
    """The decoded body, and False when it was cut at MAX_BODY (the rest is not read)."""
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):  # int() would take "-3", "0x10", "1_0"
                message = f"bad chunk size {size_text[:20]!r}"
                raise httpx.RemoteProtocolError(message, request=request)
            size = int(size_text, 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers: read and dropped
                    pass
                return b"".join(chunks), True
            if total + size > MAX_BODY:
                chunks.append(await reader.readexactly(MAX_BODY - total))
                return b"".join(chunks), False
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise httpx.RemoteProtocolError("chunk not followed by CRLF", request=request)
            chunks.append(chunk[:-2])
            total += size
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError("the chunked body ended early", request=request) from None
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError("chunk size line too long", request=request) from None
    except OSError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
