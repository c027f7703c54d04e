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
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import Field, model_validator

from otlp_meter.config_types import Duration, Section
from otlp_meter.errors import RetryableError
from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult
from otlp_meter.telemetry.logging import get_logger

_log = get_logger("sources")

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
    A ``last_done`` off the grid (the interval was changed) is followed by the next multiple of the
    new interval: ticks stay on the grid and never end after ``now``.
    """
    latest = math.floor(now / interval) * interval
    if last_done is None:
        return TickPlan([latest], 0)
    first = (math.floor(last_done / interval) + 1) * interval
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


# --- Shared helpers (added with the prometheus and s3 sources; generic, for every source) ---------


def any_value(value: object) -> AnyValue:
    """A JSON-like Python value as an OTLP AnyValue: str, bool, int, float, bytes, list, dict; None
    is an empty AnyValue (OTLP's "no value"). Ints beyond int64 become doubles (OTLP has no bigger
    int); anything else is turned into its text."""
    if value is None:
        return AnyValue()
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return AnyValue(int_value=value)
        return AnyValue(double_value=float(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list | tuple):
        out = AnyValue()
        out.array_value.values.extend(any_value(item) for item in value)
        return out
    if isinstance(value, Mapping):
        out = AnyValue()
        out.kvlist_value.values.extend(key_values(value))
        return out
    return AnyValue(string_value=str(value))


def key_values(values: Mapping[str, object]) -> list[KeyValue]:
    """Attributes (or a kvlist) from a mapping, in its order."""
    return [KeyValue(key=str(key), value=any_value(value)) for key, value in values.items()]


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class BackoffConfig(Section):
    """How long a source waits before retrying a failed step (a query, a listing, a read)."""

    initial: Duration = Field(1.0, gt=0, description="First wait after a failure; doubles per failure.")
    max: Duration = Field(60.0, gt=0, description="Longest wait between attempts.")

    def delays(self) -> Iterator[float]:
        """A fresh sequence of waits (restart it after a success)."""
        return backoff_delays(self.initial, max(self.initial, self.max))


class SourceObserver(Protocol):
    """Where sources report what they did; the service maps it onto its metrics.

    ``what`` is a short snake_case name (``ticks_run``, ``objects_processed``); ``kind``/``name``
    identify the source instance.
    """

    def count(self, kind: str, name: str, what: str, amount: float) -> None: ...

    def gauge(self, kind: str, name: str, what: str, value: float) -> None: ...


class SourceStats:
    """Counters and gauges of one source instance: plain values (tests, debugging) mirrored to an
    optional :class:`SourceObserver`."""

    def __init__(self, kind: str, name: str, observer: SourceObserver | None = None) -> None:
        self.kind = kind
        self.name = name
        self.counts: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self._observer = observer

    def add(self, what: str, amount: float = 1.0) -> None:
        """Count ``amount`` more of ``what`` (no-op for zero)."""
        if amount:
            self.counts[what] = self.counts.get(what, 0.0) + amount
            if self._observer is not None:
                self._observer.count(self.kind, self.name, what, amount)

    def set(self, what: str, value: float) -> None:
        """Set the gauge ``what``."""
        self.gauges[what] = value
        if self._observer is not None:
            self._observer.gauge(self.kind, self.name, what, value)


Wait = Callable[[asyncio.Event, float], Awaitable[bool]]
"""How a source waits: ``wait_or_stop`` in production; tests pass one that advances a fake clock."""


async def deliver(
    send: Callable[[], Awaitable[IngestResult]],
    stop: asyncio.Event,
    *,
    backoff: BackoffConfig | None = None,
    wait: Wait = wait_or_stop,
    on_retry: Callable[[RetryableError, float], None] | None = None,
) -> IngestResult | None:
    """Call ``send`` (a sink call with its cursor) until it is taken; None when ``stop`` came first.

    A :class:`RetryableError` (queue full, disk full, shutting down) means nothing was stored: the
    cursor did not move, so the same request is offered again after ``retry_after`` (or the
    backoff, whichever is longer, capped by the backoff's max). Other errors propagate.
    """
    delays = (backoff or BackoffConfig()).delays()
    cap = (backoff or BackoffConfig()).max
    while not stop.is_set():
        try:
            return await send()
        except RetryableError as exc:
            delay = min(cap, max(exc.retry_after, next(delays)))
            if on_retry is not None:
                on_retry(exc, delay)
            if await wait(stop, delay):
                return None
    return None


async def run_until_stopped(
    stop: asyncio.Event,
    *loops: Callable[[], Awaitable[None]],
    restart: BackoffConfig | None = None,
    wait: Wait = wait_or_stop,
) -> None:
    """Run ``loops`` concurrently until ``stop`` is set, then cancel what is still running.

    Cancelling is safe at any await: a commit either happened with its cursor or not at all. A loop
    that raises (a bug, an error nobody foresaw) is logged with its traceback and started again after
    a backoff, so one surprise does not end metering silently; a loop that returns is done.
    """

    async def guarded(loop: Callable[[], Awaitable[None]]) -> None:
        delays = (restart or BackoffConfig()).delays()
        while not stop.is_set():
            try:
                await loop()
                return
            except Exception:
                delay = next(delays)
                _log.exception("source_loop_failed", restart_in=delay)
                if await wait(stop, delay):
                    return

    tasks = [asyncio.ensure_future(guarded(loop)) for loop in loops]
    waiter = asyncio.ensure_future(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = {*tasks, waiter}
        while not stop.is_set() and (not tasks or any(not t.done() for t in tasks)):
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*tasks, waiter):
            task.cancel()
        await asyncio.gather(*tasks, waiter, return_exceptions=True)


class TlsClientConfig(Section):
    """TLS of a source's outgoing connections (Prometheus, S3 endpoints, APIs)."""

    ca_file: Path | None = Field(None, description="PEM CA bundle to trust instead of the system's.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key (PEM) of cert_file.")
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the server's certificate (testing only: anyone can then listen in)."
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsClientConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """A client context with these settings (for httpx ``verify=``)."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context
