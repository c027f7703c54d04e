"""Building blocks of the exporter's tests (the fixtures in ``conftest.py`` assemble them).

Real things where they can run here: an LMDB queue in a temp dir, a fresh :class:`Metrics` registry,
the real :class:`OpenMeterSink` over ``httpx.MockTransport``. Fakes where the logic is the subject:
a scripted :class:`ScriptedSink`, and :class:`VirtualTime` so hours of backoff pass instantly.
Tests wait on conditions (``wait_until``), never on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from otlp_meter.events import EncodedEvent
from otlp_meter.exporters.config import ExporterConfig
from otlp_meter.exporters.delivery import Exporter
from otlp_meter.exporters.retry import Verdict
from otlp_meter.exporters.sink import SendResult, Sink
from otlp_meter.queue import LeasedEvent, LmdbQueue
from otlp_meter.telemetry.metrics import Metrics

Event = dict[str, Any]
DELIVERED = SendResult(Verdict.DELIVERED, 204)


def cloud_event(n: int, *, size: int = 0, source: str = "test") -> EncodedEvent:
    """A CloudEvent OpenMeter accepts; ``size`` pads ``data`` so the payload is about that many bytes."""
    doc: Event = {
        "specversion": "1.0",
        "id": f"e-{n}",
        "source": source,
        "type": "tokens",
        "subject": f"customer-{n % 3}",
        "time": "2026-01-01T00:00:00Z",
        "data": {"n": n},
    }
    payload = json.dumps(doc, separators=(",", ":")).encode()
    if size > len(payload):
        doc["data"]["pad"] = "x" * (size - len(payload) - len(',"pad":""'))
        payload = json.dumps(doc, separators=(",", ":")).encode()
    return EncodedEvent(source=source, id=f"e-{n}", payload=payload)


def cloud_events(count: int, *, start: int = 0, size: int = 0) -> list[EncodedEvent]:
    return [cloud_event(n, size=size) for n in range(start, start + count)]


def retry_result(status: int | None = 503, retry_after: float | None = None, detail: str = "") -> SendResult:
    return SendResult(Verdict.RETRY, status, retry_after, detail or f"{status} from the fake")


# A safety net, not a speed assertion: a broken exporter fails the test instead of hanging it.
WAIT_LIMIT = 10.0


class Changes:
    """Something a test can await: ``notify()`` after each change, ``until(predicate)`` to wait."""

    def __init__(self, describe: Callable[[], str]) -> None:
        self._event = asyncio.Event()
        self._describe = describe

    def notify(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (re-checked after every change)."""
        try:
            async with asyncio.timeout(WAIT_LIMIT):
                while not predicate():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"not reached within {WAIT_LIMIT}s: {self._describe()}") from None


class ObservedQueue(LmdbQueue):
    """The real queue, announcing every ack, dead letter and release so tests can await outcomes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes = Changes(lambda: f"queue {self.stats()}")

    async def ack(self, seqs: Sequence[int]) -> None:
        try:
            await super().ack(seqs)
        finally:
            self.changes.notify()

    async def dead_letter(self, items: Sequence[tuple[LeasedEvent, str]]) -> None:
        try:
            await super().dead_letter(items)
        finally:
            self.changes.notify()

    def release(self, seqs: Sequence[int]) -> None:
        super().release(seqs)
        self.changes.notify()


class ScriptedSink:
    """A :class:`Sink` that answers from a script, then with ``respond(events)`` (default: 204).

    A scripted exception is raised from ``send`` (a bug in a sink). Records every request
    (decoded), counts concurrent sends, and can hold sends until released (``hold()``).
    """

    name = "fake"

    def __init__(
        self,
        *script: SendResult | BaseException,
        respond: Callable[[list[Event]], SendResult] | None = None,
    ) -> None:
        self.script: deque[SendResult | BaseException] = deque(script)
        self.respond = respond or (lambda events: DELIVERED)
        self.requests: list[list[Event]] = []
        self.sent_at: list[float] = []  # event-loop time of each request
        self.delivered: list[Event] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.closed = False
        self.changes = Changes(
            lambda: (
                f"{len(self.requests)} requests, sizes {[len(r) for r in self.requests][-20:]}, "
                f"delivered {len(self.delivered)}, in flight {self.in_flight}"
            )
        )

    @property
    def delivered_ids(self) -> list[str]:
        return [e["id"] for e in self.delivered]

    def hold(self) -> asyncio.Event:
        """Make every send wait until the returned event is set."""
        self.gate = asyncio.Event()
        return self.gate

    async def send(self, payloads: Sequence[bytes]) -> SendResult:
        events = [json.loads(p) for p in payloads]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.sent_at.append(asyncio.get_running_loop().time())
            self.requests.append(events)
            self.changes.notify()
            if self.gate is not None:
                await self.gate.wait()
            answer = self.script.popleft() if self.script else self.respond(events)
            if isinstance(answer, BaseException):
                raise answer
            if answer.verdict is Verdict.DELIVERED:
                self.delivered.extend(events)
            return answer
        finally:
            self.in_flight -= 1
            self.changes.notify()

    async def close(self) -> None:
        self.closed = True

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        await self.changes.until(predicate)


class VirtualTime:
    """The exporter's retry clock and sleep: every wait is recorded and passes instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let the rest of the loop (the test, the queue's wakeups) run


def exporter_config(**overrides: Any) -> ExporterConfig:
    """Small batches, short flushes, tiny backoffs; ``overrides`` are merged per section."""
    settings: dict[str, Any] = {
        "batch": {"max_events": 10, "flush_interval": 0.01},
        "retry": {"initial_backoff": 0.001, "max_backoff": 0.004, "auth_backoff": 0.002},
        "max_in_flight": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            settings[key] = {**settings.get(key, {}), **value}
        else:
            settings[key] = value
    return ExporterConfig.model_validate(settings)


class Harness:
    """A queue, metrics, a sink and the exporter between them, wired like ``service.py`` wires them."""

    def __init__(self, queue: ObservedQueue, metrics: Metrics, sink: Sink, exporter: Exporter) -> None:
        self.queue = queue
        self.metrics = metrics
        self.sink = sink
        self.exporter = exporter
        self.accepted = 0
        self.deduplicated = 0
        self.stopped = False

    async def append(self, events: Sequence[EncodedEvent]) -> None:
        result = await self.queue.append(events)
        self.accepted += len(events)
        self.deduplicated += result.deduplicated

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked after every ack, dead letter and release."""
        await self.queue.changes.until(predicate)

    async def stop(self, deadline: float = 5.0) -> None:
        """``exporter.stop(deadline)``, failing the test if it has not returned after WAIT_LIMIT."""
        self.stopped = True
        await asyncio.wait_for(self.exporter.stop(deadline), WAIT_LIMIT)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of this exporter's metric (``exporter`` label implied); 0 when never touched."""
        value = self.metrics.registry.get_sample_value(name, {"exporter": self.sink.name, **labels})
        return 0.0 if value is None else value

    @property
    def sent_events(self) -> float:
        return self.metric("otlp_meter_exporter_sent_events_total")

    @property
    def dead_lettered(self) -> float:
        return self.metric("otlp_meter_exporter_dead_lettered_events_total")

    def assert_accounted(self) -> None:
        """accepted = delivered + queued + dead-lettered + deduplicated, by counters and by the store."""
        stats = self.queue.stats()
        dead = self.queue.list_dead(limit=100_000)
        assert len(dead) == stats.dead_letters == self.dead_lettered
        assert self.accepted == self.sent_events + stats.depth + stats.dead_letters + self.deduplicated
