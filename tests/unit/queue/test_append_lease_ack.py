"""Appending, leasing, acknowledging and releasing events; what survives a restart."""

from __future__ import annotations

import asyncio

from otlp_meter.queue import AppendResult, LmdbQueue
from tests.unit.queue.conftest import FakeClock, QueueFactory, event, events


async def test_appended_events_are_leased_oldest_first_with_their_bytes(
    queue: LmdbQueue, clock: FakeClock
) -> None:
    first, second = events(0, 3), events(3, 5)

    assert await queue.append(first) == AppendResult(appended=3, deduplicated=0, dead_lettered=0)
    await queue.append(second)

    leased = queue.lease(max_events=10, max_bytes=1 << 20)
    assert [(e.source, e.id, e.payload) for e in leased] == [
        (e.source, e.id, e.payload) for e in first + second
    ]
    assert [e.seq for e in leased] == sorted(e.seq for e in leased)
    assert all(e.enqueued_at == clock.now for e in leased)


async def test_lease_stops_at_max_events_and_max_bytes(queue: LmdbQueue) -> None:
    await queue.append(events(0, 10, size=100))

    assert len(queue.lease(max_events=4, max_bytes=1 << 20)) == 4
    assert len(queue.lease(max_events=100, max_bytes=250)) == 2


async def test_lease_returns_one_event_even_if_it_alone_exceeds_max_bytes(queue: LmdbQueue) -> None:
    await queue.append([event(0, size=5000), event(1)])

    leased = queue.lease(max_events=10, max_bytes=100)

    assert [e.id for e in leased] == ["e-0"]


async def test_an_empty_queue_leases_nothing(queue: LmdbQueue) -> None:
    assert queue.lease(max_events=10, max_bytes=1000) == []


async def test_leasing_twice_does_not_hand_out_the_same_events(queue: LmdbQueue) -> None:
    await queue.append(events(0, 6))

    a = queue.lease(max_events=3, max_bytes=1 << 20)
    b = queue.lease(max_events=10, max_bytes=1 << 20)

    assert [e.id for e in a] == ["e-0", "e-1", "e-2"]
    assert [e.id for e in b] == ["e-3", "e-4", "e-5"]
    assert queue.lease(max_events=10, max_bytes=1 << 20) == []
    assert queue.stats().leased == 6


async def test_events_appended_after_a_lease_are_leased_next(queue: LmdbQueue) -> None:
    await queue.append(events(0, 2))
    queue.lease(max_events=10, max_bytes=1 << 20)

    await queue.append(events(2, 4))

    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == ["e-2", "e-3"]


async def test_acked_events_are_deleted_and_stay_deleted_after_reopen(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 4))
    leased = queue.lease(max_events=2, max_bytes=1 << 20)

    await queue.ack([e.seq for e in leased])

    assert queue.stats().depth == 2
    assert queue.stats().leased == 0
    queue.close()
    reopened = make_queue()
    assert [e.id for e in reopened.lease(max_events=10, max_bytes=1 << 20)] == ["e-2", "e-3"]


async def test_released_events_are_leased_again_before_newer_ones(queue: LmdbQueue) -> None:
    await queue.append(events(0, 4))
    a = queue.lease(max_events=2, max_bytes=1 << 20)
    queue.lease(max_events=1, max_bytes=1 << 20)

    queue.release([e.seq for e in a])

    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == ["e-0", "e-1", "e-3"]


async def test_releasing_an_acked_event_does_not_bring_it_back(queue: LmdbQueue) -> None:
    await queue.append(events(0, 2))
    leased = queue.lease(max_events=10, max_bytes=1 << 20)
    await queue.ack([leased[0].seq])

    queue.release([e.seq for e in leased])

    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == ["e-1"]


async def test_unacked_events_are_leased_again_with_the_same_ids_after_reopen(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    await queue.append(events(0, 3))
    before = queue.lease(max_events=10, max_bytes=1 << 20)
    queue.close()

    after = make_queue().lease(max_events=10, max_bytes=1 << 20)

    assert [(e.seq, e.source, e.id, e.payload) for e in after] == [
        (e.seq, e.source, e.id, e.payload) for e in before
    ]


async def test_depth_bytes_and_dead_letters_are_exact_after_reopen(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 50, size=300))
    await queue.ack([e.seq for e in queue.lease(max_events=20, max_bytes=1 << 20)])
    await queue.dead_letter(
        [(e, "HTTP 400: bad event") for e in queue.lease(max_events=5, max_bytes=1 << 20)]
    )
    before = queue.stats()
    queue.close()

    after = make_queue().stats()

    assert (after.depth, after.bytes, after.dead_letters, after.dead_bytes) == (
        before.depth,
        before.bytes,
        before.dead_letters,
        before.dead_bytes,
    )
    assert after.depth == 25
    assert after.bytes > 25 * 300


async def test_sequence_numbers_keep_growing_after_reopen(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 3))
    await queue.ack([e.seq for e in queue.lease(max_events=10, max_bytes=1 << 20)])
    queue.close()

    reopened = make_queue()
    await reopened.append(events(3, 4))

    assert [e.seq for e in reopened.lease(max_events=10, max_bytes=1 << 20)] == [4]


async def test_oldest_enqueued_at_is_the_time_of_the_oldest_undelivered_event(
    queue: LmdbQueue, clock: FakeClock
) -> None:
    assert queue.stats().oldest_enqueued_at is None
    first_at = clock.now
    await queue.append(events(0, 1))
    clock.advance(10)
    await queue.append(events(1, 2))

    assert queue.stats().oldest_enqueued_at == first_at
    await queue.ack([queue.lease(max_events=1, max_bytes=1 << 20)[0].seq])
    assert queue.stats().oldest_enqueued_at == first_at + 10


async def test_on_append_is_called_after_a_commit_that_added_events(make_queue: QueueFactory) -> None:
    calls: list[None] = []
    queue = make_queue(on_append=lambda: calls.append(None))

    await queue.append(events(0, 2))
    assert len(calls) == 1

    await queue.append(events(0, 2))  # all copies: nothing new to deliver
    assert len(calls) == 1


async def test_leases_from_another_thread_while_appending_hand_out_each_event_once(
    queue: LmdbQueue,
) -> None:
    async def appender() -> None:
        for start in range(0, 500, 50):
            await queue.append(events(start, start + 50))

    leased: list[str] = []
    task = asyncio.create_task(appender())
    while not task.done() or queue.stats().depth > len(leased):
        batch = await asyncio.to_thread(queue.lease, 37, 1 << 20)
        leased.extend(e.id for e in batch)
        if not batch:
            await asyncio.sleep(0)
    await task

    assert sorted(leased) == sorted(f"e-{n}" for n in range(500))
