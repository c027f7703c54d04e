"""A record that cannot be decoded is moved aside and counted; it never stops delivery."""

from __future__ import annotations

import lmdb

from otlp_meter.queue import LmdbQueue
from otlp_meter.queue.codec import seq_key
from tests.unit.queue.conftest import QueueFactory, append_each, events


def overwrite_event(queue: LmdbQueue, seq: int, garbage: bytes) -> None:
    """Damage the stored record at ``seq`` in place, as bit rot would: same length, other bytes
    (a group: all of its events; the tests append one event per group, :func:`append_each`).

    Written with lmdb directly, behind the closed queue's back.
    """
    env = lmdb.open(str(queue.config.path), max_dbs=8, subdir=True)
    try:
        db = env.open_db(b"events")
        with env.begin(write=True, db=db) as txn:
            original = txn.get(seq_key(seq))
            assert original is not None
            assert txn.put(seq_key(seq), garbage.ljust(len(original), b"\0")[: len(original)])
    finally:
        env.close()


async def test_a_corrupt_record_is_moved_aside_and_counted_and_the_others_are_leased(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    await append_each(queue, events(0, 3))
    queue.close()
    overwrite_event(queue, 2, b"\xde\xad not a record")

    reopened = make_queue()
    leased = reopened.lease(max_events=10, max_bytes=1 << 20)

    assert [e.id for e in leased] == ["e-0", "e-2"]
    assert reopened.stats().corrupt_total == 1
    await reopened.ack([e.seq for e in leased])  # the move aside is committed before this ack
    stats = reopened.stats()
    assert (stats.depth, stats.bytes, stats.corrupt_records) == (0, 0, 1)


async def test_a_record_with_an_unknown_envelope_version_is_treated_as_corrupt(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    await append_each(queue, events(0, 2))
    queue.close()
    overwrite_event(queue, 1, b"\x09" + b"from the future")

    reopened = make_queue()

    assert [e.id for e in reopened.lease(max_events=10, max_bytes=1 << 20)] == ["e-1"]
    assert reopened.stats().corrupt_total == 1


async def test_a_corrupt_record_is_not_leased_again_after_a_restart(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await append_each(queue, events(0, 2))
    queue.close()
    overwrite_event(queue, 1, b"garbage")
    reopened = make_queue()
    reopened.lease(max_events=10, max_bytes=1 << 20)
    reopened.close()

    again = make_queue()

    assert [e.id for e in again.lease(max_events=10, max_bytes=1 << 20)] == ["e-1"]
    assert again.stats().corrupt_total == 0
    assert again.stats().corrupt_records == 1
