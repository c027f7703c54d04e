"""Records the rules rejected, and events the destination refused, are kept as dead letters."""

from __future__ import annotations

from otlp_meter.events import Rejection
from otlp_meter.queue import AppendResult, LmdbQueue
from tests.unit.queue.conftest import FakeClock, QueueFactory, events, rejection


async def test_rejected_records_land_in_dead_letters_with_their_reason_and_rule(
    queue: LmdbQueue, clock: FakeClock
) -> None:
    result = await queue.append(events(0, 2), [rejection(reason="no tokens", original=b"\x0a\x01a")])

    assert result == AppendResult(appended=2, deduplicated=0, dead_lettered=1)
    [dead] = queue.list_dead()
    assert (dead.kind, dead.reason, dead.rule, dead.payload) == (
        "otlp_logs",
        "no tokens",
        "genai-tokens",
        b"\x0a\x01a",
    )
    assert (dead.attempts, dead.dead_at) == (0, clock.now)
    assert queue.stats().dead_letters == 1
    assert queue.stats().depth == 2


async def test_rejected_metrics_are_kept_as_otlp_metrics(queue: LmdbQueue) -> None:
    await queue.append([], [Rejection(signal="metrics", rule="r", reason="why", original=b"m")])

    assert [d.kind for d in queue.list_dead()] == ["otlp_metrics"]


async def test_a_retried_request_does_not_dead_letter_the_same_record_twice(queue: LmdbQueue) -> None:
    await queue.append(events(0, 1), [rejection()])

    result = await queue.append(events(0, 1), [rejection()])

    assert result == AppendResult(appended=0, deduplicated=1, dead_lettered=0)
    assert queue.stats().dead_letters == 1


async def test_dead_letter_moves_leased_events_out_of_the_queue_with_the_reason(queue: LmdbQueue) -> None:
    await queue.append(events(0, 3))
    leased = queue.lease(max_events=2, max_bytes=1 << 20)

    await queue.dead_letter([(leased[1], "HTTP 422: data.tokens must be a number")])

    [dead] = queue.list_dead()
    assert (dead.kind, dead.source, dead.id, dead.payload) == ("event", "test", "e-1", leased[1].payload)
    assert dead.reason == "HTTP 422: data.tokens must be a number"
    assert dead.attempts == 1
    stats = queue.stats()
    assert (stats.depth, stats.leased, stats.dead_letters) == (2, 1, 1)
    queue.release([leased[0].seq])
    assert [e.id for e in queue.lease(max_events=10, max_bytes=1 << 20)] == ["e-0", "e-2"]


async def test_dead_letters_are_listed_in_pages(queue: LmdbQueue) -> None:
    await queue.append([], [rejection(original=bytes([n])) for n in range(5)])

    first = queue.list_dead(limit=2)
    rest = queue.list_dead(limit=10, after=first[-1].seq)

    assert [d.payload for d in first + rest] == [bytes([n]) for n in range(5)]


async def test_purging_dead_letters_frees_their_space(queue: LmdbQueue) -> None:
    await queue.append([], [rejection(original=bytes([n])) for n in range(3)])
    first = queue.list_dead()[0]

    assert await queue.purge_dead([first.seq]) == 1
    assert queue.stats().dead_letters == 2
    assert await queue.purge_dead() == 2
    assert (queue.stats().dead_letters, queue.stats().dead_bytes) == (0, 0)


async def test_dead_letters_survive_a_restart(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append([], [rejection(reason="kept")])
    queue.close()

    assert [d.reason for d in make_queue().list_dead()] == ["kept"]
