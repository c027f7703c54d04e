"""``sweep_state``: state changes a caller decides from the state database as the very transaction
that commits them sees it (stream expiry uses it); the queue reads and writes, the caller decides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from otlp_meter.queue import LmdbQueue
from tests.unit.queue.conftest import events

Get = Callable[[bytes], bytes | None]
Scan = Callable[[bytes], Iterator[tuple[bytes, bytes]]]


async def test_the_plan_reads_the_state_and_its_updates_commit(queue: LmdbQueue) -> None:
    await queue.append([], state={b"a/1": b"x", b"a/2": b"keep", b"a/3": b"x", b"b/1": b"x"})

    def plan(get: Get, scan: Scan) -> tuple[dict[bytes, bytes | None], list[bytes]]:
        seen = [key for key, _ in scan(b"a/") if key.startswith(b"a/")]
        deletes: dict[bytes, bytes | None] = {k: None for k in seen if get(k) == b"x"}
        return {**deletes, b"a/done": b"1"}, seen

    assert await queue.sweep_state(plan) == [b"a/1", b"a/2", b"a/3"]
    assert [queue.get_state(k) for k in (b"a/1", b"a/2", b"a/3", b"b/1", b"a/done")] == [
        None,
        b"keep",
        None,
        b"x",
        b"1",
    ]


async def test_a_scan_past_the_last_key_is_empty(queue: LmdbQueue) -> None:
    await queue.append([], state={b"a": b"1"})
    assert await queue.sweep_state(lambda get, scan: ({}, list(scan(b"z")))) == []


async def test_the_plan_sees_what_earlier_operations_of_its_transaction_wrote(queue: LmdbQueue) -> None:
    append = asyncio.ensure_future(queue.append(events(0, 1), state={b"k": b"new"}))
    sweep = asyncio.ensure_future(queue.sweep_state(lambda get, scan: ({}, get(b"k"))))
    await append
    assert await sweep == b"new"  # submitted after the append: applied after it (same group or not)


async def test_a_plan_that_raises_fails_alone_and_writes_nothing(queue: LmdbQueue) -> None:
    def plan(get: Get, scan: Scan) -> tuple[dict[bytes, bytes | None], None]:
        raise ValueError("a bug in the caller's decision")

    append = asyncio.ensure_future(queue.append(events(0, 1), state={b"k": b"v"}))
    with pytest.raises(ValueError, match="bug"):
        await queue.sweep_state(plan)
    await append
    assert queue.get_state(b"k") == b"v"
    assert queue.stats().depth == 1


async def test_an_invalid_key_refuses_the_sweep(queue: LmdbQueue) -> None:
    with pytest.raises(ValueError, match="state keys"):
        await queue.sweep_state(lambda get, scan: ({b"": b"v", b"ok": b"v"}, None))
    assert queue.get_state(b"ok") is None
