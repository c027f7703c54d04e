"""The persisted totals prove where every event went: accepted = delivered + queued + dead-lettered
+ deduplicated + corrupt, and the dead-letter store balances too, after every commit and restart."""

from __future__ import annotations

import lmdb

from otlp_meter.queue import LmdbQueue, QueueStats
from otlp_meter.queue.ledger import Counters
from otlp_meter.queue.types import Accounting, ReplayItem
from tests.unit.queue.conftest import QueueFactory, append_each, events, rejection
from tests.unit.queue.test_corrupt_records import overwrite_event


def balanced(stats: QueueStats) -> Accounting:
    accounting = stats.accounting
    assert accounting is not None
    assert accounting.unaccounted_events(stats.depth) == 0, (accounting, stats.depth)
    assert accounting.unaccounted_dead_letters(stats.dead_letters) == 0, (accounting, stats.dead_letters)
    return accounting


async def test_every_outcome_is_counted_and_the_identities_hold_after_each_step(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    await queue.append(events(0, 10), [rejection()])
    await queue.append(events(8, 12))  # two copies
    balanced(queue.stats())
    leased = queue.lease(max_events=6, max_bytes=1 << 20)
    await queue.ack([e.seq for e in leased[:4]])
    await queue.ack([leased[0].seq])  # acked twice: counted once
    await queue.dead_letter([(leased[4], "HTTP 400: bad")])
    balanced(queue.stats())

    [event_letter] = [d for d in queue.list_dead() if d.kind == "event"]
    await queue.replay_dead([ReplayItem(dead_seq=event_letter.seq, events=(events(4, 5)[0],), requeue=True)])
    await queue.purge_dead([d.seq for d in queue.list_dead() if d.kind != "event"])
    stats = queue.stats()
    accounting = balanced(stats)

    assert (accounting.accepted, accounting.deduplicated, accounting.delivered) == (15, 2, 4)
    assert (accounting.dead_lettered, accounting.replayed, accounting.records_rejected) == (1, 1, 1)
    assert (accounting.dead_replayed, accounting.dead_purged, stats.depth, stats.dead_letters) == (1, 1, 8, 0)


async def test_totals_survive_a_restart_and_count_moved_aside_records(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await append_each(queue, events(0, 3))
    queue.close()
    overwrite_event(queue, 2, b"garbage")

    reopened = make_queue()
    leased = reopened.lease(max_events=10, max_bytes=1 << 20)
    await reopened.ack([e.seq for e in leased])
    accounting = balanced(reopened.stats())

    assert (accounting.accepted, accounting.delivered, accounting.corrupt) == (3, 2, 1)


async def test_purging_everything_counts_what_was_purged(queue: LmdbQueue) -> None:
    await queue.append([], [rejection(original=bytes([n])) for n in range(4)])

    await queue.purge_dead()

    assert balanced(queue.stats()).dead_purged == 4


async def test_expired_dedupe_keys_are_counted(make_queue: QueueFactory) -> None:
    queue = make_queue(dedupe_window="1s")
    await queue.append(events(0, 3))

    assert await queue.prune_dedupe(now=2_000_000_000.0) == 3
    assert balanced(queue.stats()).dedupe_expired == 3


async def test_a_queue_written_before_the_totals_existed_starts_balanced(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 5), [rejection()])
    queue.close()
    # Rewrite the counters in the old six-field layout, as an older otlp-meter left them.
    env = lmdb.open(str(queue.config.path), max_dbs=8, subdir=True)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True, db=meta) as txn:
            current = Counters.unpack(txn.get(b"counters") or b"")
            assert current is not None
            txn.put(b"counters", current.pack()[: 6 * 8])
    finally:
        env.close()

    accounting = balanced(make_queue().stats())

    assert (accounting.accepted, accounting.records_rejected) == (5, 1)


def stored_bytes(queue: LmdbQueue) -> int:
    """The bytes of the ``events`` records as they are on disk, read one by one."""
    h = queue._require_handles()
    with h.env.begin() as txn:
        return sum(len(value) for _, value in txn.cursor(db=h.events))


async def test_acks_by_delete_keep_the_byte_counter_exact_whatever_was_acked(queue: LmdbQueue) -> None:
    await queue.append(events(0, 8, size=120))
    first = queue.lease(max_events=3, max_bytes=1 << 20)
    queue.release([first[2].seq])  # released: its size is no longer at hand; the ack reads it
    await queue.ack([e.seq for e in first])
    assert queue.stats().bytes == stored_bytes(queue)

    second = queue.lease(max_events=5, max_bytes=1 << 20)
    await queue.dead_letter([(second[0], "HTTP 400")])
    await queue.ack([second[0].seq, second[1].seq, second[1].seq, first[0].seq])  # gone ones: no-ops
    await queue.ack([second[2].seq, 10_000])  # 10_000 was never stored

    stats = queue.stats()
    assert (stats.depth, stats.bytes, stats.leased) == (2, stored_bytes(queue), 2)
    assert balanced(stats).delivered == 5


async def test_an_ack_of_an_event_moved_aside_as_corrupt_counts_nothing(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await append_each(queue, events(0, 2))
    leased = queue.lease(max_events=2, max_bytes=1 << 20)
    queue.close()
    overwrite_event(queue, 2, b"garbage")
    reopened = make_queue()
    assert [e.id for e in reopened.lease(max_events=2, max_bytes=1 << 20)] == ["e-0"]  # e-1 moved aside

    await reopened.ack([e.seq for e in leased])

    stats = reopened.stats()
    assert (stats.depth, stats.bytes) == (0, 0)
    assert (balanced(stats).delivered, balanced(stats).corrupt) == (1, 1)
