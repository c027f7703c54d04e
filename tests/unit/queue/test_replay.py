"""Replaying dead letters: each one leaves the store in the transaction that queues what it became."""

from __future__ import annotations

import pytest

from otlp_meter.errors import QueueFullError
from otlp_meter.queue import LmdbQueue
from otlp_meter.queue.types import ReplayItem, ReplayResult
from tests.unit.queue.conftest import FakeClock, QueueFactory, event, events, rejection
from tests.unit.queue.test_accounting import balanced


async def dead_event(queue: LmdbQueue, n: int) -> ReplayItem:
    """Append event ``n``, have the destination refuse it, and plan to put it back."""
    await queue.append([event(n)])
    [leased] = [e for e in queue.lease(max_events=100, max_bytes=1 << 20) if e.id == f"e-{n}"]
    await queue.dead_letter([(leased, "HTTP 400: bad")])
    [dead] = [d for d in queue.list_dead() if d.id == f"e-{n}"]
    return ReplayItem(dead_seq=dead.seq, events=(event(n),), requeue=True)


async def test_a_requeued_event_goes_back_although_the_dedupe_window_remembers_it(queue: LmdbQueue) -> None:
    item = await dead_event(queue, 1)

    result = await queue.replay_dead([item])

    assert result == ReplayResult(replayed=1, appended=1, deduplicated=0, rejected=0, missing=0)
    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == ["e-1"]
    assert queue.list_dead() == []
    assert balanced(queue.stats()).replayed == 1


async def test_events_made_by_the_rules_again_are_deduplicated_like_any_append(queue: LmdbQueue) -> None:
    await queue.append(events(0, 1), [rejection()])
    [dead] = queue.list_dead()

    result = await queue.replay_dead([ReplayItem(dead_seq=dead.seq, events=(event(0), event(7)))])

    assert result == ReplayResult(replayed=1, appended=1, deduplicated=1, rejected=0, missing=0)
    assert balanced(queue.stats()).deduplicated == 1


async def test_a_record_still_rejected_replaces_its_dead_letter_keeping_its_first_time(
    queue: LmdbQueue, clock: FakeClock
) -> None:
    await queue.append([], [rejection(reason="no subject")])
    [before] = queue.list_dead()
    clock.advance(3600)

    result = await queue.replay_dead(
        [ReplayItem(dead_seq=before.seq, rejected=(rejection(reason="tokens is not a number"),))]
    )

    assert result.rejected == 1
    [after] = queue.list_dead()
    assert after.seq > before.seq
    assert (after.reason, after.dead_at, after.attempts) == ("tokens is not a number", before.dead_at, 1)
    balanced(queue.stats())


async def test_a_dead_letter_gone_meanwhile_is_skipped_and_nothing_is_queued_for_it(queue: LmdbQueue) -> None:
    item = await dead_event(queue, 1)
    await queue.purge_dead([item.dead_seq])

    result = await queue.replay_dead([item, item])

    assert result == ReplayResult(replayed=0, appended=0, deduplicated=0, rejected=0, missing=2)
    assert queue.stats().depth == 0


async def test_listing_one_dead_letter_twice_replays_it_once(queue: LmdbQueue) -> None:
    item = await dead_event(queue, 1)

    result = await queue.replay_dead([item, item])

    assert (result.replayed, result.appended, result.missing) == (1, 1, 1)


async def test_a_replay_that_does_not_fit_changes_nothing(make_queue: QueueFactory) -> None:
    queue = make_queue(max_bytes=3_000)
    item = await dead_event(queue, 1)
    await queue.append(events(10, 12, size=1470))

    with pytest.raises(QueueFullError):
        await queue.replay_dead([item])

    assert [d.seq for d in queue.list_dead()] == [item.dead_seq]
    balanced(queue.stats())
