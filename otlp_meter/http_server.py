"""The one way otlp-meter serves HTTP: uvicorn on a socket we bind ourselves, inside our event loop.

Binding first means "port in use" is an ordinary ``OSError`` at startup (uvicorn would exit the
process), and that signals stay ours: the service decides the shutdown order, not uvicorn.

uvicorn alone does not defend against slow clients: it has no timeout for the request head, no
limit on its size and no limit on open connections. :class:`ServerLimits` adds those in a
subclass of its httptools protocol (a connection that does not finish its head in time, or
sends too much of it, is closed; connections beyond the limit are closed on arrival), and
:func:`read_body` bounds the time a body may take. TLS comes from
:class:`~otlp_meter.receivers.tls.ServerTls`, whose context reloads rotated certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from otlp_meter.config_types import parse_endpoint
from otlp_meter.telemetry.logging import get_logger
from otlp_meter.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from otlp_meter.receivers.tls import ServerTls

log = get_logger("http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def bind(endpoint: str, *, reuse_port: bool = False) -> socket.socket:
    """Bind and listen on ``endpoint``; raises OSError (e.g. address in use) right away.

    ``reuse_port``: SO_REUSEPORT, so that the intake workers (``service.workers``) listen on the
    same port and the kernel spreads connections over them. Off otherwise: a second otlp-meter on
    the port must fail to start, not share it silently.
    """
    host, port = parse_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one HTTP server tolerates from a client (see ``HttpServerConfig`` for the meaning)."""

    read_header_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_header_size: int = 64 * 1024
    max_connections: int = 1024

    @classmethod
    def of(cls, config: Any) -> ServerLimits:
        """From an ``HttpServerConfig`` (or anything with the same fields)."""
        return cls(
            read_header_timeout=config.read_header_timeout,
            idle_timeout=config.idle_timeout,
            max_header_size=config.max_header_size,
            max_connections=config.max_connections,
        )


def _guarded_protocol(limits: ServerLimits, server: str, metrics: Metrics | None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a head timeout, a head size limit and a connection limit."""

    def closed(reason: str) -> None:
        if metrics is not None:
            metrics.server_connections_closed.labels(server, reason).inc()

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _awaiting_head = True
        _head_bytes = 0
        _ended_in_chunk = False  # a request ended inside the chunk being parsed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                closed("connection_limit")
                transport.close()
                return
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._ended_in_chunk = False
            super().data_received(data)
            if self._awaiting_head and not self.transport.is_closing():
                # A chunk in which a request ended holds its end too (a pipelined client's next
                # head starts mid-chunk): only what arrives after it counts as the new head's, so
                # the limit allows at most one read's worth more, and the last answer is not lost.
                if not self._ended_in_chunk:
                    self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_size:
                    closed("header_too_large")
                    self._refuse(431, b"request header fields too large")

        def on_message_complete(self) -> None:
            self._ended_in_chunk = True
            super().on_message_complete()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_head = True
            self._head_bytes = 0
            self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._awaiting_head = False
            self._disarm_head_timer()
            super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.read_header_timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._awaiting_head and not self.transport.is_closing():
                closed("header_timeout")
                self._refuse(408, b"request head not received in time")

        def _refuse(self, status: int, text: bytes) -> None:
            self._disarm_head_timer()
            phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, phrase, len(text), text)
            )
            self.transport.close()

    return GuardedProtocol


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the service owns signals
        yield


class HttpServer:
    """An ASGI app served by uvicorn on an already-bound socket, with ``limits`` and optional TLS.

    ``reuse_port`` binds with SO_REUSEPORT (see :func:`bind`).
    ``name`` labels the ``server_connections_closed`` metric (otlp_http, events_api, telemetry).
    """

    def __init__(
        self,
        app: AsgiApp,
        endpoint: str,
        *,
        graceful_timeout: float = 10.0,
        limits: ServerLimits | None = None,
        tls: ServerTls | None = None,
        name: str = "http",
        metrics: Metrics | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self._reuse_port = reuse_port
        self._app = app
        self._graceful_timeout = graceful_timeout
        self._limits = limits or ServerLimits()
        self._tls = tls
        self._name = name
        self._metrics = metrics
        self._socket: socket.socket | None = None
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._socket is not None
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._socket = bind(self.endpoint, reuse_port=self._reuse_port)
        tls = self._tls
        config = uvicorn.Config(
            self._app,
            http=_guarded_protocol(self._limits, self._name, self._metrics),
            ssl_context_factory=(lambda _config, _default: tls.ssl_context()) if tls is not None else None,
            # uvicorn answers 503 once connections *or* requests in progress reach this; our
            # protocol already closes connections beyond max_connections, so allow exactly those.
            limit_concurrency=self._limits.max_connections + 1,
            timeout_keep_alive=max(1, math.ceil(self._limits.idle_timeout)),
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=int(self._graceful_timeout) or 1,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        self._task.add_done_callback(self._ended)
        while not self._server.started:  # startup is a few ms; the socket already queues connections
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"HTTP server on {self.endpoint} stopped during startup")
            await asyncio.sleep(0.005)

    @property
    def serving(self) -> bool:
        """Started and still serving (False once the server's task ended, for whatever reason)."""
        return self._task is not None and not self._task.done()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._server is not None and not self._server.should_exit:  # not asked to stop
            error = None if task.cancelled() else task.exception()
            log.error("http_server_stopped", server=self._name, endpoint=self.endpoint, error=repr(error))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None


class ClientDisconnectedError(Exception):
    """The client went away before sending the whole body; there is nobody left to answer."""


class RequestTimeoutError(Exception):
    """The body did not arrive within the read timeout (a slow or stalled client): 408."""


async def read_body(receive: Receive, limit: int, time_limit: float | None = None) -> bytes | None:
    """Read the whole request body, or return None as soon as it exceeds ``limit`` bytes.

    Raises :class:`ClientDisconnectedError` if the client disconnects first: a truncated body must
    never be taken for the whole one (it may even decode, and then be ingested half). Raises
    :class:`RequestTimeoutError` when the body takes longer than ``time_limit`` seconds.
    """
    if time_limit is None:
        return await _read_body(receive, limit)
    try:
        async with asyncio.timeout(time_limit):
            return await _read_body(receive, limit)
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {time_limit:g}s") from None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("client disconnected before the end of the request body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    content_type: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    """Send a complete response; ``close`` ends the connection after it (a body left unread)."""
    raw_headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        raw_headers.append((b"content-type", content_type.encode()))
    if headers:
        raw_headers.extend(headers)
    if close:
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def media_type(content_type: str | None) -> str:
    """``"application/json; charset=utf-8"`` → ``"application/json"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
