"""The queue is bounded by bytes; when full it refuses retryably, and deliveries still drain it."""

from __future__ import annotations

import pytest

from otlp_meter.errors import QueueFullError, RetryableError
from tests.unit.queue.conftest import QueueFactory, events, rejection


async def test_an_append_beyond_max_bytes_is_refused_with_queue_full_and_stores_nothing(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue(max_bytes=10_000)
    await queue.append(events(0, 20, size=300))
    before = queue.stats()

    with pytest.raises(QueueFullError) as refused:
        await queue.append(events(20, 40, size=300))

    assert isinstance(refused.value, RetryableError)
    after = queue.stats()
    assert (after.depth, after.bytes, after.dedupe_keys) == (before.depth, before.bytes, before.dedupe_keys)
    assert after.bytes <= 10_000


async def test_acks_work_when_full_and_appends_are_taken_again_afterwards(make_queue: QueueFactory) -> None:
    queue = make_queue(max_bytes=10_000)
    await queue.append(events(0, 25, size=300))
    with pytest.raises(QueueFullError):
        await queue.append(events(25, 35, size=300))

    await queue.ack([e.seq for e in queue.lease(max_events=15, max_bytes=1 << 20)])

    assert (await queue.append(events(25, 35, size=300))).appended == 10
    assert queue.stats().capacity_bytes == 10_000


async def test_a_refused_append_does_not_remember_its_ids(make_queue: QueueFactory) -> None:
    queue = make_queue(max_bytes=1_000)
    with pytest.raises(QueueFullError):
        await queue.append(events(0, 10, size=300))

    assert (await queue.append(events(0, 2, size=300))).appended == 2


async def test_a_full_dead_letter_store_refuses_new_dead_letters_instead_of_dropping_old_ones(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue(dead_letter_max_bytes=1_000)
    await queue.append([], [rejection(original=b"x" * 600)])

    with pytest.raises(QueueFullError):
        await queue.append(events(0, 1), [rejection(original=b"y" * 600)])

    assert queue.stats().dead_letters == 1
    assert queue.stats().depth == 0  # the events of the refused append were not kept either


async def test_when_lmdb_itself_runs_out_of_space_the_append_fails_retryably_and_the_queue_recovers(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue(map_size="1MiB", max_bytes="100MiB")

    with pytest.raises(QueueFullError):
        await queue.append(events(0, 2000, size=1000))

    assert queue.stats().depth == 0
    assert (await queue.append(events(0, 10))).appended == 10
