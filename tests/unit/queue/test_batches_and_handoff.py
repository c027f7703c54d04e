"""Leases as batches (parallel lists), acks of runs of sequences, and how commits wake the loops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.queue.ops import PruneOp
from otlp_meter.queue.types import LeasedBatch, LeasedEvent
from otlp_meter.queue.writer import _settle_all_threadsafe
from tests.unit.queue.conftest import FakeClock, QueueFactory, event, events, stored_bytes, stored_records
from tests.unit.queue.test_other_processes import in_another_process

# -- leases as batches -----------------------------------------------------------------------------


async def test_a_lease_is_parallel_lists_and_a_sequence_of_events(queue: LmdbQueue, clock: FakeClock) -> None:
    first_at = clock.now
    await queue.append(events(0, 3))
    clock.advance(5)
    await queue.append(events(3, 5))

    batch = queue.lease(max_events=10, max_bytes=1 << 20)

    assert isinstance(batch, LeasedBatch)
    assert len(batch) == len(batch.seqs) == len(batch.payloads) == len(batch.sizes) == 5
    assert batch.payloads == [e.payload for e in events(0, 5)]
    assert batch.seqs == sorted(batch.seqs)
    assert batch.payload_bytes == sum(map(len, batch.payloads))
    # One enqueue time per commit, not one per event.
    assert [e.enqueued_at for e in batch] == [first_at] * 3 + [first_at + 5] * 2
    assert [batch[n].enqueued_at for n in range(5)] == [first_at] * 3 + [first_at + 5] * 2
    assert batch[-1] == LeasedEvent(
        batch.seqs[4], batch.payloads[4], int((first_at + 5) * 1e9), batch.sizes[4]
    )
    assert batch == list(batch)
    with pytest.raises(IndexError):
        batch[5]


async def test_slices_of_a_batch_keep_each_events_enqueue_time(queue: LmdbQueue, clock: FakeClock) -> None:
    for n in range(4):
        await queue.append(events(2 * n, 2 * n + 2))
        clock.advance(1)
    batch = queue.lease(max_events=10, max_bytes=1 << 20)
    whole = list(batch)

    for start in range(len(whole) + 1):
        for stop in range(start, len(whole) + 1):
            part = batch[start:stop]
            assert isinstance(part, LeasedBatch)
            assert list(part) == whole[start:stop]
            assert part.seqs == batch.seqs[start:stop]
    assert list(batch[::2]) == whole[::2]


async def test_released_events_come_first_then_fresh_ones_in_the_same_batch(
    queue: LmdbQueue, clock: FakeClock
) -> None:
    await queue.append(events(0, 4))
    first = queue.lease(max_events=2, max_bytes=1 << 20)
    clock.advance(3)
    await queue.append(events(4, 6))
    queue.release(first.seqs)

    batch = queue.lease(max_events=10, max_bytes=1 << 20)

    assert [e.id for e in batch] == ["e-0", "e-1", "e-2", "e-3", "e-4", "e-5"]
    assert [e.enqueued_at for e in batch] == [clock.now - 3] * 4 + [clock.now] * 2
    assert queue.stats().leased == 6


async def test_a_batch_that_stops_at_max_bytes_keeps_no_time_of_the_event_left_out(
    queue: LmdbQueue, clock: FakeClock
) -> None:
    await queue.append([event(0, size=100)])
    clock.advance(1)
    await queue.append([event(1, size=100)])

    batch = queue.lease(max_events=10, max_bytes=150)

    assert [e.id for e in batch] == ["e-0"]
    assert len(batch.runs) == 1
    assert [e.id for e in queue.lease(max_events=10, max_bytes=150)] == ["e-1"]


def test_an_empty_batch_is_falsy_and_equal_to_an_empty_list() -> None:
    assert not LeasedBatch()
    assert LeasedBatch() == []
    assert list(LeasedBatch()) == []


# -- acks -------------------------------------------------------------------------------------------


async def test_an_ack_in_any_order_with_repeats_and_gone_events_counts_each_deletion_once(
    queue: LmdbQueue,
) -> None:
    await queue.append(events(0, 10, size=50))
    batch = queue.lease(max_events=10, max_bytes=1 << 20)
    seqs = batch.seqs
    before = queue.stats()

    await queue.ack([seqs[2]])
    # Out of order, a repeat, one acked already, one that never existed, gaps.
    await queue.ack([seqs[7], seqs[0], seqs[7], seqs[2], 10_000, seqs[5], seqs[1]])

    stats = queue.stats()
    gone = {0, 1, 2, 5, 7}
    assert stats.depth == before.depth - len(gone)
    # The group of ten is written back as the runs left (3-4, 6, 8-9), each a group of its own.
    assert stats.bytes == stored_bytes(queue) < before.bytes
    assert stored_records(queue) == 3
    assert stats.accounting is not None
    assert stats.accounting.delivered == len(gone)
    assert stats.leased == 10 - len(gone)
    rest = [seqs[n] for n in range(10) if n not in gone]
    await queue.ack(rest)
    stats = queue.stats()
    assert (stats.depth, stats.bytes, stats.leased) == (0, 0, 0)
    assert stats.accounting is not None
    assert stats.accounting.delivered == 10
    assert stats.accounting.unaccounted_events(stats.depth) == 0


async def test_an_ack_of_a_run_with_a_dead_lettered_event_inside_deletes_the_others(queue: LmdbQueue) -> None:
    await queue.append(events(0, 6))
    batch = queue.lease(max_events=10, max_bytes=1 << 20)
    await queue.dead_letter([(batch[3], "refused")])

    await queue.ack(batch.seqs)

    stats = queue.stats()
    assert (stats.depth, stats.bytes, stats.dead_letters) == (0, 0, 1)
    assert stats.accounting is not None
    assert (stats.accounting.delivered, stats.accounting.dead_lettered) == (5, 1)
    assert stats.accounting.unaccounted_events(0) == 0


async def test_acks_of_interleaved_batches_leave_exactly_the_unacked_events(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 30))
    a = queue.lease(max_events=10, max_bytes=1 << 20)
    b = queue.lease(max_events=10, max_bytes=1 << 20)
    c = queue.lease(max_events=10, max_bytes=1 << 20)

    await queue.ack(c.seqs)
    await queue.ack(a.seqs[::2])
    queue.close()

    reopened = make_queue()
    left = reopened.lease(max_events=100, max_bytes=1 << 20)
    assert [e.id for e in left] == [e.id for e in a[1::2]] + [e.id for e in b]


# -- the commit hand-off ----------------------------------------------------------------------------


class _CountingLoop:
    """Counts ``call_soon_threadsafe`` on a real (not running) event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.calls = 0
        real = self.loop.call_soon_threadsafe

        def counted(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
            self.calls += 1
            return real(callback, *args, **kwargs)

        setattr(self.loop, "call_soon_threadsafe", counted)  # noqa: B010  # a method, replaced

    def run_callbacks(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))


def test_one_commit_wakes_each_loop_once_and_settles_all_its_futures() -> None:
    a, b = _CountingLoop(), _CountingLoop()
    try:
        ops = []
        for n, loop in enumerate([a.loop, a.loop, b.loop, a.loop, b.loop]):
            ops.append(PruneOp(now=None, limit=n, loop=loop, future=loop.create_future()))
        ops[1].future.cancel()  # type: ignore[union-attr]  # a waiter that gave up
        ops.append(PruneOp(now=None, limit=9))  # nobody waits for this one
        woken: list[str] = []

        def on_append() -> None:
            woken.append("exporter")
            assert not ops[0].future.done()  # type: ignore[union-attr]  # woken before the appenders

        error = ValueError("refused")
        _settle_all_threadsafe(
            [(op, n, error if n == 3 else None) for n, op in enumerate(ops)], on_append, [a.loop]
        )
        assert (a.calls, b.calls) == (1, 1)

        a.run_callbacks()
        b.run_callbacks()
        assert woken == ["exporter"]
        assert [op.future.result() for op in ops if op.future is not None and op.limit in (0, 2, 4)] == [
            0,
            2,
            4,
        ]
        assert ops[1].future.cancelled()  # type: ignore[union-attr]
        assert ops[3].future.exception() is error  # type: ignore[union-attr]
    finally:
        a.loop.close()
        b.loop.close()


def test_settling_on_a_closed_loop_is_ignored() -> None:
    loop = asyncio.new_event_loop()
    op = PruneOp(now=None, limit=1, loop=loop, future=loop.create_future())
    loop.close()

    _settle_all_threadsafe([(op, 1, None)])  # no RuntimeError: nobody is waiting any more


async def test_concurrent_appends_wake_their_loop_once_per_commit(make_queue: QueueFactory) -> None:
    appended = 0

    def on_append() -> None:
        nonlocal appended
        appended += 1

    queue = make_queue(on_append=on_append)
    loop = asyncio.get_running_loop()
    calls = 0
    real = loop.call_soon_threadsafe

    def counted(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
        nonlocal calls
        calls += 1
        return real(callback, *args, **kwargs)

    commits = queue.stats().commits_total
    setattr(loop, "call_soon_threadsafe", counted)  # noqa: B010  # a method, replaced
    try:
        await asyncio.gather(*(queue.append(events(10 * n, 10 * n + 10)) for n in range(50)))
    finally:
        delattr(loop, "call_soon_threadsafe")

    commits = queue.stats().commits_total - commits
    assert commits < 50  # grouped
    assert calls == commits  # one wake-up per commit, on_append included
    assert appended == commits
    assert queue.stats().depth == 500


async def test_an_acked_batch_is_neither_leased_nor_available_while_its_commit_is_published(
    tmp_path: Path, clock: FakeClock
) -> None:
    """``on_commit`` runs after the commit and before the lease book forgets the deleted events:
    ``available`` read then must not subtract them from the committed depth a second time (it once
    did, and the exporter, seeing less than a batch, waited a whole flush interval)."""
    seen: list[int] = []
    queue = LmdbQueue(
        QueueConfig.model_validate({"directory": tmp_path, "sync": False}),
        clock=clock,
        on_commit=lambda _seconds, _ops: seen.append(queue.available()),
    )
    queue.open()
    try:
        await queue.append(events(0, 30))
        batch = queue.lease(max_events=10, max_bytes=1 << 20)
        seen.clear()

        await queue.ack(batch.seqs)

        assert seen == [20]
        assert queue.available() == 20
    finally:
        queue.close()


async def test_an_acked_batch_counts_once_even_if_another_process_commits_before_it_is_published(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An intake worker (or an admin command) may commit between this writer's commit and its
    publishing: the snapshot is then newer than the commit, and still includes it."""
    seen: list[int] = []
    armed = [False]

    def on_commit(_seconds: float, _ops: int) -> None:
        if armed[0]:
            armed[0] = False
            in_another_process(
                tmp_path,
                """
                from otlp_meter.events import EncodedEvent
                await queue.append([EncodedEvent("other", "x-1", b'{"id":"x-1","source":"other"}', 0)])
                """,
            )
            seen.append(queue.available())

    queue = LmdbQueue(
        QueueConfig.model_validate({"directory": tmp_path, "sync": False}), clock=clock, on_commit=on_commit
    )
    queue.open()
    try:
        await queue.append(events(0, 30))
        batch = queue.lease(max_events=10, max_bytes=1 << 20)
        armed[0] = True

        await queue.ack(batch.seqs)

        assert seen == [21]
    finally:
        queue.close()
