"""An event whose (source, id) was appended within the dedupe window is stored once."""

from __future__ import annotations

import pytest

from otlp_meter.queue import AppendResult, LmdbQueue, codec, lmdb_queue
from tests.unit.queue.conftest import FakeClock, QueueFactory, event, events, rejection


async def test_a_copy_within_the_same_append_is_stored_once(queue: LmdbQueue) -> None:
    result = await queue.append([event(1), event(2), event(1)])

    assert result == AppendResult(appended=2, deduplicated=1, dead_lettered=0)
    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == ["e-1", "e-2"]


async def test_a_copy_in_a_later_append_is_dropped_and_counted(queue: LmdbQueue) -> None:
    await queue.append(events(0, 3))

    result = await queue.append(events(2, 5))

    assert result == AppendResult(appended=2, deduplicated=1, dead_lettered=0)
    assert queue.stats().depth == 5
    assert queue.stats().deduplicated_total == 1


async def test_a_copy_of_an_already_delivered_event_is_dropped(queue: LmdbQueue) -> None:
    await queue.append(events(0, 1))
    await queue.ack([e.seq for e in queue.lease(max_events=10, max_bytes=1 << 20)])

    result = await queue.append(events(0, 1))

    assert result.deduplicated == 1
    assert queue.stats().depth == 0


async def test_a_copy_after_a_restart_is_dropped(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 2))
    queue.close()

    result = await make_queue().append(events(0, 2))

    assert result == AppendResult(appended=0, deduplicated=2, dead_lettered=0)


async def test_the_same_id_from_another_source_is_a_different_event(queue: LmdbQueue) -> None:
    result = await queue.append([event(1, source="a"), event(1, source="b")])

    assert result.appended == 2


async def test_a_copy_after_the_window_ended_is_appended_again(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue(dedupe_window="1h")
    await queue.append(events(0, 1))

    clock.advance(3599)
    assert (await queue.append(events(0, 1))).deduplicated == 1
    clock.advance(2)
    assert (await queue.append(events(0, 1))).appended == 1


async def test_pruning_forgets_the_keys_whose_window_ended(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue(dedupe_window="1h")
    await queue.append(events(0, 3))
    clock.advance(1800)
    await queue.append(events(3, 5))
    clock.advance(1801)

    assert await queue.prune_dedupe() == 3

    stats = queue.stats()
    assert stats.dedupe_keys == 2
    assert stats.expired_dedupe_total == 3
    assert (await queue.append(events(3, 5))).deduplicated == 2


async def test_beyond_the_key_limit_the_oldest_keys_are_forgotten_first_and_counted(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue(dedupe_max_keys=3)
    await queue.append(events(0, 1))
    clock.advance(1)
    await queue.append(events(1, 2))
    clock.advance(1)
    await queue.append(events(2, 4))

    stats = queue.stats()
    assert stats.dedupe_keys == 3
    assert stats.evicted_dedupe_total == 1
    assert (await queue.append(events(0, 1))).appended == 1  # e-0 was forgotten
    assert (await queue.append(events(3, 4))).deduplicated == 1


async def test_a_zero_window_disables_deduplication(make_queue: QueueFactory) -> None:
    queue = make_queue(dedupe_window=0)

    result = await queue.append([event(1), event(1)])

    assert result.appended == 2
    assert queue.stats().dedupe_keys == 0


def expiry_entries(queue: LmdbQueue) -> list[tuple[int, int]]:
    """(expiry, keys named) of each expiry index entry, in index order."""
    h = queue._require_handles()
    with h.env.begin() as txn:
        return [
            (codec.split_expiry_index_key(k)[0], len(codec.expiry_index_keys(k, v)))
            for k, v in txn.cursor(db=h.expiry)
        ]


async def test_one_commit_indexes_its_keys_under_one_expiry_entry(queue: LmdbQueue) -> None:
    await queue.append(events(0, 5), [rejection()])

    assert [keys for _, keys in expiry_entries(queue)] == [6]
    assert queue.stats().dedupe_keys == 6


async def test_copies_within_an_append_and_across_appends_are_dropped_together(queue: LmdbQueue) -> None:
    await queue.append(events(0, 3))

    result = await queue.append([event(5), event(1), event(5), event(6), event(2), event(6)])

    assert result == AppendResult(appended=2, deduplicated=4, dead_lettered=0)
    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == [
        "e-0",
        "e-1",
        "e-2",
        "e-5",
        "e-6",
    ]


async def test_a_key_remembered_again_is_not_forgotten_with_its_older_entry(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue(dedupe_window="1h")
    await queue.append(events(0, 3))
    clock.advance(3601)  # the window of e-0..e-2 ended; nothing pruned yet
    await queue.append(events(1, 2))  # e-1 again: appended, and remembered for another hour

    assert await queue.prune_dedupe() == 2  # e-0 and e-2; the old entry's e-1 is not due
    assert (await queue.append(events(0, 3))).deduplicated == 1
    clock.advance(3601)
    assert await queue.prune_dedupe() == 3
    assert (queue.stats().dedupe_keys, expiry_entries(queue)) == (0, [])


async def test_pruning_in_small_batches_keeps_the_rest_of_an_entry(
    make_queue: QueueFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmdb_queue, "PRUNE_BATCH", 2)
    queue = make_queue(dedupe_window="1h")
    await queue.append(events(0, 5))
    clock.advance(3601)

    assert await queue.prune_dedupe() == 5  # batches of 2, 2 and 1 out of one entry of 5

    assert (queue.stats().dedupe_keys, queue.stats().expired_dedupe_total, expiry_entries(queue)) == (
        0,
        5,
        [],
    )


async def test_eviction_takes_part_of_the_oldest_entry(make_queue: QueueFactory, clock: FakeClock) -> None:
    queue = make_queue(dedupe_max_keys=4, dedupe_window="1h")
    await queue.append(events(0, 3))
    clock.advance(1)
    await queue.append(events(3, 5))

    stats = queue.stats()
    assert (stats.dedupe_keys, stats.evicted_dedupe_total) == (4, 1)
    assert [keys for _, keys in expiry_entries(queue)] == [2, 2]
    # Which key of the oldest entry went is not specified; exactly one of e-0..e-2 is new again.
    assert (await queue.append(events(0, 3))).appended == 1
    clock.advance(7200)
    assert await queue.prune_dedupe() == 4
    assert expiry_entries(queue) == []


async def test_a_restart_keeps_the_multi_key_entries_working(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue(dedupe_window="1h")
    await queue.append(events(0, 4))
    queue.close()
    reopened = make_queue(dedupe_window="1h")

    assert (await reopened.append(events(0, 4))).deduplicated == 4
    clock.advance(3601)
    assert await reopened.prune_dedupe() == 4
