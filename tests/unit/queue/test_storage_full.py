"""When the storage fills (the LMDB map, or the disk under it), appends are refused retryably while
acks keep working, and intake recovers by itself once deliveries free space."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from otlp_meter.errors import QueueFullError
from otlp_meter.queue import LmdbQueue
from otlp_meter.queue.group import Group, storage_headroom
from otlp_meter.queue.ops import Op
from tests.unit.queue.conftest import FakeClock, QueueFactory, events, rejection


async def fill(queue: LmdbQueue, *, size: int = 1000, batch: int = 50) -> tuple[int, QueueFullError]:
    """Append batches until the queue refuses one; returns the events stored and the refusal."""
    n = 0
    while True:
        try:
            await queue.append(events(n, n + batch, size=size))
        except QueueFullError as refusal:
            return n, refusal
        n += batch
        assert n < 1_000_000, "the queue never filled"


async def test_a_full_map_refuses_appends_retryably_keeps_headroom_and_acks_still_work(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue(map_size="2MiB", max_bytes="100MiB")
    stored, refusal = await fill(queue)

    assert "storage full" in str(refusal)  # refused by the headroom check, before LMDB ran out
    stats = queue.stats()
    assert stats.full
    assert stats.depth == stored > 0
    assert stats.storage_used_bytes < stats.map_size - storage_headroom(stats.map_size)

    # Every stored event can still be delivered and acked, batch by batch.
    while leased := queue.lease(max_events=100, max_bytes=1 << 20):
        await queue.ack([e.seq for e in leased])

    after = queue.stats()
    assert (after.depth, after.full) == (0, False)
    assert (await queue.append(events(stored, stored + 50, size=1000))).appended == 50
    assert not queue.stats().full


async def test_full_clears_once_a_tenth_has_drained_even_before_the_next_append(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue(max_bytes=20_000)
    await queue.append(events(0, 18, size=1000))
    with pytest.raises(QueueFullError):
        await queue.append(events(18, 21, size=1000))
    assert queue.stats().full

    await queue.ack([e.seq for e in queue.lease(max_events=1, max_bytes=1 << 20)])
    assert queue.stats().full  # one of eighteen is not enough: no flapping on every ack
    await queue.ack([e.seq for e in queue.lease(max_events=2, max_bytes=1 << 20)])
    assert not queue.stats().full


async def test_a_full_dead_letter_store_does_not_mark_intake_full(make_queue: QueueFactory) -> None:
    queue = make_queue(dead_letter_max_bytes=1_000)
    await queue.append([], [rejection(original=b"x" * 600)])

    with pytest.raises(QueueFullError):
        await queue.append(events(0, 1), [rejection(original=b"y" * 600)])

    assert not queue.stats().full


class Blocker(Op[None]):
    """Holds the writer thread inside a commit until released, so the next ops form one group."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, g: Group) -> None:
        self.entered.set()
        self.release.wait(10)


async def test_an_ack_grouped_with_an_append_that_overflows_the_map_still_commits(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(map_size="2MiB", max_bytes="100MiB")
    await queue.append(events(0, 20, size=1000))
    leased = queue.lease(max_events=20, max_bytes=1 << 20)
    # No early refusal: let LMDB itself run out of map (MapFullError) in the middle of the group.
    monkeypatch.setattr(Group, "_reserve_storage", lambda self, record_bytes, keys: None)

    blocker = Blocker()
    blocked = asyncio.ensure_future(queue._submit(blocker))
    await asyncio.to_thread(blocker.entered.wait, 10)
    big = asyncio.ensure_future(queue.append(events(100, 2100, size=1000)))
    ack = asyncio.ensure_future(queue.ack([e.seq for e in leased]))
    await asyncio.sleep(0.01)  # both submitted while the writer is held
    blocker.release.set()
    results: tuple[Any, ...] = await asyncio.gather(blocked, big, ack, return_exceptions=True)

    assert isinstance(results[1], QueueFullError)
    assert results[2] is None
    stats = queue.stats()
    assert stats.depth == 0
    assert stats.accounting is not None
    assert stats.accounting.delivered == 20


async def test_state_writes_take_their_room_too_so_acks_still_work_when_the_map_is_full(
    make_queue: QueueFactory,
) -> None:
    """Stream state (a new cumulative stream's first point is an append of state alone) is outside
    the byte limits but not outside the map: it must not eat the room acks need."""
    queue = make_queue(map_size="8MiB", max_bytes="64MiB")
    await fill(queue, size=100, batch=200)
    leased = queue.lease(max_events=1_000_000, max_bytes=1 << 30)
    refusal = None
    for puts in range(1_000_000):
        try:
            await queue.append([], state={b"stream-%08d" % puts: b"x" * 100})
        except QueueFullError as refused:
            refusal = refused
            break
    assert "storage full" in str(refusal)
    await queue.ack([e.seq for e in leased])
    assert queue.stats().depth == 0


async def test_full_with_nothing_queued_clears_once_expired_dedupe_keys_are_pruned(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    """Refused while empty (the map went to dedupe keys), no drain can clear ``full``; pruning the
    keys whose window ended does, so readiness does not stay 503 with room to spare."""
    queue = make_queue(map_size="2MiB", max_bytes="100MiB", dedupe_window="1h")
    n = 0
    while not queue.stats().full:
        try:
            await queue.append(events(n, n + 200, size=200))
        except QueueFullError:
            break
        await queue.ack([e.seq for e in queue.lease(max_events=1000, max_bytes=1 << 30)])
        n += 200
        assert n < 2_000_000, "the dedupe keys never filled the map"
    assert (queue.stats().depth, queue.stats().full) == (0, True)
    clock.advance(3601)
    while await queue.prune_dedupe():
        pass
    assert not queue.stats().full
    assert (await queue.append(events(n, n + 10))).appended == 10
