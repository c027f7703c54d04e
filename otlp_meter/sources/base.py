"""The contract every source obeys, and the aligned-tick schedule the periodic ones share.

A source builds OTLP export requests (semantic-convention attributes, scope name
``otlp_meter.sources.<kind>`` so the shipped packs recognise them) and hands each one to the
:class:`SourceSink` *together with its cursor update*; the sink commits events and cursor in one
LMDB transaction, so after a crash a source resumes exactly after the last committed request.

The sink raises :class:`~otlp_meter.errors.RetryableError` (queue full, disk full, shutting down)
when it cannot take a request now: a source then keeps its cursor, waits and tries again
(backpressure: sources pause instead of dropping).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult

Cursor = Mapping[bytes, bytes | None]
"""State keys to write (or delete, with None) in the same transaction as the request's events."""

SCOPE_PREFIX = "otlp_meter.sources."
"""Instrumentation scope name of a source's requests: ``otlp_meter.sources.<kind>``."""


def cursor_key(kind: str, name: str, part: str = "cursor") -> bytes:
    """The state key of one source instance: ``source/<kind>/<name>/<part>``."""
    return f"source/{kind}/{name}/{part}".encode()


class SourceSink(Protocol):
    """What a source hands its output to (implemented by the service over the pipeline)."""

    async def logs(self, request: ExportLogsServiceRequest, cursor: Cursor) -> IngestResult: ...

    async def metrics(self, request: ExportMetricsServiceRequest, cursor: Cursor) -> IngestResult: ...

    async def events(self, events: list[EncodedEvent], cursor: Cursor) -> IngestResult:
        """Ready-made CloudEvents (e.g. S3 objects that already hold CloudEvents)."""
        ...

    def get_state(self, key: bytes) -> bytes | None:
        """The last committed value of a state key (a cursor)."""
        ...


class Source(Protocol):
    """A running source. ``run`` returns when ``stop`` is set (finishing or abandoning its current step)."""

    kind: str
    name: str

    async def run(self, sink: SourceSink, stop: asyncio.Event) -> None: ...


@dataclass(frozen=True, slots=True)
class TickPlan:
    """Which ticks are due: ``due`` in order (oldest first), and ``skipped`` ticks beyond ``max_catch_up``."""

    due: list[float]
    skipped: int


def aligned_ticks(last_done: float | None, now: float, interval: float, max_catch_up: int) -> TickPlan:
    """Ticks are multiples of ``interval`` (Unix seconds). Due: every tick after ``last_done`` up to ``now``.

    The first run (``last_done`` None) starts with the latest completed tick only. After downtime at
    most ``max_catch_up`` missed ticks are run (the newest ones); older ones are reported as skipped.
    """
    latest = math.floor(now / interval) * interval
    if last_done is None:
        return TickPlan([latest], 0)
    first = last_done + interval
    if first > latest:
        return TickPlan([], 0)
    count = round((latest - first) / interval) + 1
    skipped = max(0, count - max_catch_up)
    start = first + skipped * interval
    return TickPlan([start + i * interval for i in range(count - skipped)], skipped)


def backoff_delays(initial: float = 1.0, cap: float = 60.0) -> Iterator[float]:
    """1, 2, 4 … ``cap`` seconds: the waits of a source retrying a failed step."""
    delay = initial
    while True:
        yield delay
        delay = min(cap, delay * 2)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when stopping."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
WALL_CLOCK: Clock = time.time
