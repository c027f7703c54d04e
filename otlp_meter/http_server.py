"""The one way otlp-meter serves HTTP: uvicorn on a socket we bind ourselves, inside our event loop.

Binding first means "port in use" is an ordinary ``OSError`` at startup (uvicorn would exit the
process), and that signals stay ours: the service decides the shutdown order, not uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"0.0.0.0:4318"`` / ``"[::1]:4318"`` → (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint must be host:port, got {endpoint!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind(endpoint: str) -> socket.socket:
    """Bind and listen on ``endpoint``; raises OSError (e.g. address in use) right away."""
    host, port = parse_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the service owns signals
        yield


class HttpServer:
    """An ASGI app served by uvicorn on an already-bound socket."""

    def __init__(self, app: AsgiApp, endpoint: str, *, graceful_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self._app = app
        self._graceful_timeout = graceful_timeout
        self._socket: socket.socket | None = None
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._socket is not None
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._socket = bind(self.endpoint)
        config = uvicorn.Config(
            self._app,
            http="httptools",
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=int(self._graceful_timeout) or 1,
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:  # startup is a few ms; the socket already queues connections
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"HTTP server on {self.endpoint} stopped during startup")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None


class ClientDisconnectedError(Exception):
    """The client went away before sending the whole body; there is nobody left to answer."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """Read the whole request body, or return None as soon as it exceeds ``limit`` bytes.

    Raises :class:`ClientDisconnectedError` if the client disconnects first: a truncated body must
    never be taken for the whole one (it may even decode, and then be ingested half).
    """
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
) -> None:
    """Send a complete response."""
    raw_headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        raw_headers.append((b"content-type", content_type.encode()))
    if headers:
        raw_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
