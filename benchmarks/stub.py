"""A stub OpenMeter in its own process: answers every ingest request at once, 204 or 503.

It runs apart from the service so that its CPU time is not charged to the service (``/proc/<pid>/stat``
counts per process), and apart from the load generators so that it answers promptly. It is a bare
HTTP/1.1 server on asyncio (uvloop): it reads the head and ``content-length`` bytes of body, counts
the CloudEvents in the batch (one ``"specversion"`` key each) and answers — no JSON parsing, so that
its cost does not limit the exporter being measured. The parent flips ``mode`` (204 ↔ 503) to play
an outage and reads the counters from shared memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.sharedctypes
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

_RESPONSES = {
    204: b"HTTP/1.1 204 No Content\r\n\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
}
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"content-length:"


@dataclass
class StubCounters:
    """Shared with the parent: written by the stub only (so no locks)."""

    mode: Any  # RawValue("i"): the status to answer, 204 or 503
    events: Any  # RawValue("q"): events in batches answered 2xx
    requests: Any  # RawValue("q"): requests answered (any status)
    refused: Any  # RawValue("q"): requests answered 503
    body_bytes: Any  # RawValue("q"): body bytes of batches answered 2xx
    first_ok: Any  # RawValue("d"): time.monotonic() of the first 2xx answer (0: none yet)
    last_ok: Any  # RawValue("d"): time.monotonic() of the latest 2xx answer

    @classmethod
    def create(cls) -> StubCounters:
        raw = multiprocessing.sharedctypes.RawValue
        return cls(
            raw("i", 204), raw("q", 0), raw("q", 0), raw("q", 0), raw("q", 0), raw("d", 0), raw("d", 0)
        )

    def reset(self) -> None:
        for value in (self.events, self.requests, self.refused, self.body_bytes, self.first_ok, self.last_ok):
            value.value = 0


class _Ingest(asyncio.Protocol):
    def __init__(self, counters: StubCounters) -> None:
        self._counters = counters
        self._buffer = bytearray()
        self._need = -1  # body bytes still expected for the current request; -1: reading a head
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._need < 0:
                end = buffer.find(_HEAD_END)
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                del buffer[: end + 4]
                at = head.find(_CONTENT_LENGTH)
                if at < 0:
                    self._need = 0
                else:
                    line_end = head.find(b"\r\n", at)
                    self._need = int(head[at + len(_CONTENT_LENGTH) : line_end if line_end >= 0 else None])
            if len(buffer) < self._need:
                return
            body = bytes(buffer[: self._need])
            del buffer[: self._need]
            self._need = -1
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        counters = self._counters
        status = counters.mode.value
        counters.requests.value += 1
        if 200 <= status < 300:
            now = time.monotonic()
            if counters.first_ok.value == 0:
                counters.first_ok.value = now
            counters.last_ok.value = now
            counters.events.value += body.count(b'"specversion"')
            counters.body_bytes.value += len(body)
        else:
            counters.refused.value += 1
        assert self._transport is not None
        self._transport.write(_RESPONSES[status])


def _serve(sock: socket.socket, counters: StubCounters) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(lambda: _Ingest(counters), sock=sock, backlog=1024)
        async with server:
            await stop.wait()

    uvloop.run(main())


class StubOpenMeter:
    """``with StubOpenMeter() as stub:`` — ``stub.url`` for ``exporter.openmeter.url``."""

    def __init__(self, status: int = 204) -> None:
        self.counters = StubCounters.create()
        self.counters.mode.value = status
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = int(self._sock.getsockname()[1])
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(self._sock, self.counters), name="stub-openmeter", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def set_status(self, status: int) -> None:
        """Answer ``status`` (204: up, 503: outage) from the next request on."""
        if status not in _RESPONSES:
            raise ValueError(f"the stub answers {sorted(_RESPONSES)}, not {status}")
        self.counters.mode.value = status

    def __enter__(self) -> StubOpenMeter:
        self._process.start()
        self._sock.close()  # the child has it
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.pid is not None and self._process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGTERM)
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
