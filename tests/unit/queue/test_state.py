"""Callers' state (source cursors, delta state) commits in the same transaction as their events."""

from __future__ import annotations

import pytest

from otlp_meter.errors import QueueFullError
from otlp_meter.queue import LmdbQueue
from tests.unit.queue.conftest import QueueFactory, events


async def test_state_keys_commit_with_the_events(queue: LmdbQueue) -> None:
    await queue.append(events(0, 2), state={b"s3/bucket/cursor": b"2024-01-01/0002.json"})

    assert queue.get_state(b"s3/bucket/cursor") == b"2024-01-01/0002.json"
    assert queue.stats().depth == 2


async def test_a_state_value_of_none_deletes_the_key(queue: LmdbQueue) -> None:
    await queue.append([], state={b"k": b"v"})

    await queue.append([], state={b"k": None})

    assert queue.get_state(b"k") is None


async def test_a_refused_append_leaves_neither_events_nor_state(make_queue: QueueFactory) -> None:
    queue = make_queue(max_bytes=1_000)
    await queue.append([], state={b"cursor": b"old"})

    with pytest.raises(QueueFullError):
        await queue.append(events(0, 10, size=300), state={b"cursor": b"new"})

    assert queue.get_state(b"cursor") == b"old"
    assert queue.stats().depth == 0


async def test_state_survives_a_restart(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 1), state={b"cursor": b"42"})
    queue.close()

    assert make_queue().get_state(b"cursor") == b"42"


async def test_a_state_key_lmdb_cannot_store_is_refused_alone(queue: LmdbQueue) -> None:
    with pytest.raises(ValueError, match="state keys"):
        await queue.append(events(0, 1), state={b"x" * 600: b"v"})

    assert queue.stats().depth == 0
