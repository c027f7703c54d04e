"""Fixtures for the queue's tests: real LMDB environments in a temp dir, and a clock we move."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue import LmdbQueue, QueueConfig


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def event(n: int, *, source: str = "test", size: int = 0, time_ms: int = 0) -> EncodedEvent:
    """A small CloudEvent; ``size`` pads the payload to about that many bytes; ``time_ms`` (Unix
    ms) gives it a ``time`` (none when 0)."""
    time = ""
    if time_ms:
        seconds, ms = divmod(time_ms, 1000)
        time = f',"time":"{dt.datetime.fromtimestamp(seconds, dt.UTC):%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"'
    payload = (
        f'{{"specversion":"1.0","id":"e-{n}","source":"{source}","type":"t"{time},"data":{{}}}}'.encode()
    )
    if size > len(payload):
        payload += b" " * (size - len(payload))
    return EncodedEvent(source=source, id=f"e-{n}", payload=payload, time_ms=time_ms)


def events(start: int, stop: int, **kwargs: Any) -> list[EncodedEvent]:
    return [event(n, **kwargs) for n in range(start, stop)]


def rejection(
    reason: str = "attribute 'tokens' is not a number", original: bytes = b"\x0a\x02xy"
) -> Rejection:
    return Rejection(signal="logs", rule="genai-tokens", reason=reason, original=original)


QueueFactory = Callable[..., LmdbQueue]


async def append_each(queue: LmdbQueue, batch: list[EncodedEvent]) -> None:
    """Append ``batch`` one event per append: a stored record (a group) per event."""
    for e in batch:
        await queue.append([e])


def stored_bytes(queue: LmdbQueue) -> int:
    """Bytes of the records in ``events`` as they are on disk (what ``stats().bytes`` counts)."""
    h = queue._require_handles()
    with h.env.begin(db=h.events) as txn:
        return sum(len(value) for _key, value in txn.cursor())


def stored_records(queue: LmdbQueue) -> int:
    """Records (groups) in ``events``."""
    h = queue._require_handles()
    with h.env.begin() as txn:
        return int(txn.stat(h.events)["entries"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_queue(tmp_path: Path, clock: FakeClock) -> Iterator[QueueFactory]:
    """Opens queues on one data directory (same directory = "the same queue after a restart").

    Config overrides are keyword arguments; every queue opened here is closed after the test.
    """
    opened: list[LmdbQueue] = []

    def factory(**overrides: Any) -> LmdbQueue:
        on_append = overrides.pop("on_append", None)
        settings: dict[str, Any] = {"directory": tmp_path, "sync": False, "dedupe_max_keys": 100_000}
        settings.update(overrides)
        queue = LmdbQueue(QueueConfig.model_validate(settings), clock=clock, on_append=on_append)
        queue.open()
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        queue.close()


@pytest.fixture
def queue(make_queue: QueueFactory) -> LmdbQueue:
    return make_queue()
