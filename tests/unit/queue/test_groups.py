"""Events are stored in groups (envelope 3, schema 4): the events of one append in one record, under
the sequence of the first. Leases take whole groups where they can, an ack of a whole group deletes
one record, an ack of part of one writes the rest back; every event keeps its sequence throughout."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from otlp_meter.queue import LmdbQueue, QueueConfig, codec
from otlp_meter.queue.ledger import SCHEMA_VERSION, Counters, Handles, open_environment, store_counters
from otlp_meter.queue.types import LeasedEvent
from tests.unit.queue.conftest import FakeClock, QueueFactory, events, stored_bytes, stored_records
from tests.unit.queue.test_accounting import balanced

BIG = 1 << 30

# -- the envelope ---------------------------------------------------------------------------------


def test_a_group_holds_its_payloads_in_order_with_one_header() -> None:
    payloads = [b'{"id":"a"}', b'{"id":"bb"}', b"x" * 70_000]

    raw = codec.encode_group(payloads, enqueued_unix_nano=(1 << 63) + 1, attempts=2)

    assert len(raw) == codec.GROUP_HEADER_SIZE + 4 * 3 + sum(map(len, payloads))
    assert codec.record_count(raw) == 3
    assert codec.decode_group(raw) == codec.QueuedGroup(payloads, (1 << 63) + 1, 2)


def test_an_append_is_split_into_groups_by_count_and_by_bytes() -> None:
    many = [b"e%d" % n for n in range(codec.EVENTS_PER_GROUP * 2 + 1)]
    assert [codec.record_count(r) for r in codec.encode_groups(many, 1)] == [codec.EVENTS_PER_GROUP] * 2 + [1]

    half = b"x" * (codec.BYTES_PER_GROUP // 2)
    large = [half, half, b"y", b"z" * (codec.BYTES_PER_GROUP + 1), b"w"]
    groups = [codec.decode_group(r).payloads for r in codec.encode_groups(large, 1)]
    assert groups == [[half, half], [b"y"], [large[3]], [b"w"]]


def test_records_of_the_envelopes_before_are_groups_of_one() -> None:
    raw = codec.encode_event(events(0, 1)[0], enqueued_unix_nano=5)

    assert codec.record_count(raw) == 1
    assert codec.decode_group(raw) == codec.QueuedGroup([events(0, 1)[0].payload], 5, 0)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x03" + b"\0" * 10, "shorter than its header"),
        (codec.GROUP_HEADER.pack(3, 1, 0, 0), "claims 0 events"),
        (codec.GROUP_HEADER.pack(3, 1, 0, 1000) + b"\0\0\0\1x", "claims 1000 events"),
        (codec.GROUP_HEADER.pack(3, 1, 0, 2) + b"\0\0\0\1\0\0\0\1" + b"abc", "do not add up"),
        (codec.GROUP_HEADER.pack(3, 1, 0, 2) + b"\0\0\0\0\0\0\0\1" + b"a", "do not add up"),
    ],
)
def test_a_damaged_group_is_corrupt(raw: bytes, why: str) -> None:
    with pytest.raises(codec.CorruptRecordError, match=why):
        codec.decode_group(raw)


# -- appends, leases and acks ---------------------------------------------------------------------


async def test_one_append_is_one_record_per_group_under_consecutive_sequences(queue: LmdbQueue) -> None:
    await queue.append(events(0, codec.EVENTS_PER_GROUP + 10))
    await queue.append(events(1000, 1003))

    assert stored_records(queue) == 3
    leased = queue.lease(max_events=BIG, max_bytes=BIG)
    assert leased.seqs == list(range(1, codec.EVENTS_PER_GROUP + 14))  # sequences start at 1
    assert [e.id for e in leased][-4:] == ["e-509", "e-1000", "e-1001", "e-1002"]
    assert (queue.stats().depth, queue.stats().bytes) == (513, stored_bytes(queue))


async def test_a_batch_ends_at_a_group_boundary_once_half_full(queue: LmdbQueue) -> None:
    for start in range(0, 1200, 300):
        await queue.append(events(start, start + 300))

    first = queue.lease(max_events=1000, max_bytes=BIG)

    assert len(first) == 900  # the fourth group waits whole for the next batch
    await queue.ack(first.seqs)
    assert stored_records(queue) == 1
    assert queue.lease(max_events=1000, max_bytes=BIG).seqs == list(range(901, 1201))


async def test_a_batch_less_than_half_full_takes_part_of_a_group_and_the_next_the_rest(
    queue: LmdbQueue,
) -> None:
    await queue.append(events(0, 100))
    await queue.append(events(100, 500))

    first = queue.lease(max_events=300, max_bytes=BIG)
    second = queue.lease(max_events=300, max_bytes=BIG)

    assert (first.seqs, second.seqs) == (list(range(1, 301)), list(range(301, 501)))
    assert [e.id for e in second][:2] == ["e-300", "e-301"]
    await queue.ack(second.seqs)
    await queue.ack(first.seqs)
    stats = queue.stats()
    assert (stats.depth, stats.bytes, stored_records(queue)) == (0, 0, 0)
    assert balanced(stats).delivered == 500


async def test_the_byte_budget_can_end_a_batch_inside_a_group(queue: LmdbQueue) -> None:
    await queue.append(events(0, 10, size=100))

    batch = queue.lease(max_events=100, max_bytes=350)

    assert len(batch) == 3
    assert queue.lease(max_events=100, max_bytes=BIG).seqs == list(range(4, 11))


async def test_an_ack_of_part_of_a_group_keeps_the_rest_with_its_sequences_after_a_restart(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue()
    await queue.append(events(0, 10))
    enqueued = queue.lease(max_events=10, max_bytes=BIG)[0].enqueued_at
    clock.advance(60)

    await queue.ack([1, 2, 5, 10])  # e-0, e-1, e-4, e-9
    queue.close()
    reopened = make_queue()

    rest = reopened.lease(max_events=100, max_bytes=BIG)
    assert [(e.seq, e.id) for e in rest] == [(n + 1, f"e-{n}") for n in (2, 3, 5, 6, 7, 8)]
    assert {e.enqueued_at for e in rest} == {enqueued}  # written back, not appended again
    assert stored_records(reopened) == 2
    assert reopened.stats().bytes == stored_bytes(reopened)
    await reopened.append(events(10, 11))
    assert reopened.lease(max_events=100, max_bytes=BIG).seqs == [11]


async def test_dead_lettering_one_event_of_a_group_leaves_the_others(queue: LmdbQueue) -> None:
    await queue.append(events(0, 5))
    leased = queue.lease(max_events=5, max_bytes=BIG)

    await queue.dead_letter([(leased[2], "HTTP 400: bad")])
    await queue.dead_letter([(leased[2], "HTTP 400: bad")])  # already moved: nothing happens

    [dead] = queue.list_dead()
    assert (dead.id, dead.reason) == ("e-2", "HTTP 400: bad")
    queue.release([e.seq for e in leased])
    assert [e.id for e in queue.lease(max_events=5, max_bytes=BIG)] == ["e-0", "e-1", "e-3", "e-4"]
    stats = queue.stats()
    assert (stats.depth, stats.dead_letters, balanced(stats).dead_lettered) == (4, 1, 1)


async def test_released_events_of_a_group_come_back_first_with_their_payloads(queue: LmdbQueue) -> None:
    await queue.append(events(0, 10))
    await queue.append(events(10, 20))
    leased = queue.lease(max_events=10, max_bytes=BIG)

    queue.release([leased[7].seq, leased[3].seq])

    again = queue.lease(max_events=4, max_bytes=BIG)
    assert [(e.seq, e.id) for e in again] == [(4, "e-3"), (8, "e-7")]  # half full: the next group waits
    assert queue.lease(max_events=10, max_bytes=BIG).seqs == list(range(11, 21))


# -- restarts and upgrades ------------------------------------------------------------------------


@contextlib.contextmanager
def behind_its_back(queue: LmdbQueue) -> Iterator[tuple[lmdb.Transaction[bytes], Handles]]:
    """A write transaction on the (closed) queue's environment, as another program would write."""
    queue.close()
    config = queue.config
    h = open_environment(config.path, config.effective_map_size(), sync=False)
    try:
        with h.env.begin(write=True) as txn:
            yield txn, h
    finally:
        h.env.close()


def damage_first_group(queue: LmdbQueue, damage: Callable[[bytes], bytes]) -> None:
    with behind_its_back(queue) as (txn, h):
        raw = txn.get(codec.seq_key(1), db=h.events)
        assert raw is not None
        txn.put(codec.seq_key(1), damage(raw), db=h.events)


async def test_lost_counters_are_recounted_from_the_groups(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 7))
    await queue.append(events(7, 10))
    with behind_its_back(queue) as (txn, h):
        txn.delete(b"counters", db=h.meta)

    reopened = make_queue()

    assert (reopened.stats().depth, reopened.stats().bytes) == (10, stored_bytes(reopened))
    await reopened.append(events(10, 11))  # after the last group's last sequence, not its key
    assert reopened.lease(max_events=100, max_bytes=BIG).seqs == list(range(1, 12))


async def test_a_schema_3_queue_of_single_events_drains_and_becomes_schema_4(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    with behind_its_back(make_queue()) as (txn, h):
        txn.put(b"schema_version", b"3", db=h.meta)
        counters = Counters()
        for e in events(0, 3):
            raw = codec.encode_event(e, int(clock.now * 1e9))
            txn.put(codec.seq_key(counters.next_seq), raw, db=h.events)
            counters.next_seq += 1
            counters.depth += 1
            counters.size += len(raw)
            counters.accepted += 1
        store_counters(txn, h, counters)

    upgraded = make_queue()
    await upgraded.append(events(3, 5))
    leased = upgraded.lease(max_events=100, max_bytes=BIG)
    await upgraded.ack(leased.seqs[1:4])  # one old event and one of the new group

    assert [e.id for e in leased] == [f"e-{n}" for n in range(5)]
    with upgraded._require_handles().env.begin() as txn:
        assert txn.get(b"schema_version", db=upgraded._require_handles().meta) == SCHEMA_VERSION
        assert txn.get(b"dedupe_legacy_until", db=upgraded._require_handles().meta) is None
    upgraded.release(leased.seqs)
    assert [e.id for e in upgraded.lease(max_events=100, max_bytes=BIG)] == ["e-0", "e-4"]
    assert (upgraded.stats().depth, upgraded.stats().bytes) == (2, stored_bytes(upgraded))


# -- a random walk against a model ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_a_random_mix_of_appends_leases_acks_dead_letters_releases_and_restarts_loses_nothing(
    make_queue: QueueFactory, seed: int
) -> None:
    """Against a model (sequence → event id): every event is leased with its own payload, acked or
    dead-lettered once, and the counters match what is on disk after every step."""
    rng = random.Random(seed)
    queue = make_queue()
    stored: dict[int, str] = {}
    leased: dict[int, str] = {}
    settled: list[str] = []
    next_id = 0
    for _step in range(60):
        action = rng.choice(["append", "append", "lease", "lease", "ack", "dead", "release", "restart"])
        if action == "append":
            count = rng.choice([1, 3, 40, 499, 500, 501, 1200])
            before = queue.stats().depth
            await queue.append(events(next_id, next_id + count))
            seqs = range(queue._ledger.counters.next_seq - count, queue._ledger.counters.next_seq)
            stored.update((s, f"e-{next_id + n}") for n, s in enumerate(seqs))
            next_id += count
            assert queue.stats().depth == before + count
        elif action == "lease":
            batch = queue.lease(max_events=rng.choice([1, 7, 300, 1000]), max_bytes=rng.choice([2_000, BIG]))
            for e in batch:
                assert e.seq not in leased
                assert stored[e.seq] == e.id
                leased[e.seq] = e.id
        elif action in ("ack", "dead", "release") and leased:
            chosen = rng.sample(sorted(leased), rng.randint(1, len(leased)))
            if action == "release":
                queue.release(chosen)
            elif action == "ack":
                await queue.ack(chosen + chosen[:1])  # one listed twice
            else:
                by_seq = {e.seq: e for e in queue_events(chosen, leased)}
                await queue.dead_letter([(by_seq[s], "refused") for s in chosen])
            for s in chosen:
                del leased[s]
                if action != "release":
                    settled.append(stored.pop(s))
        elif action == "restart":
            queue.close()
            queue = make_queue()
            leased.clear()
        stats = queue.stats()
        assert (stats.depth, stats.bytes, stats.leased) == (len(stored), stored_bytes(queue), len(leased))
        balanced(stats)
    queue.release(list(leased))
    rest = queue.lease(max_events=BIG, max_bytes=BIG)
    assert sorted((e.seq, e.id) for e in rest) == sorted(stored.items())
    assert len(set(settled) | {e.id for e in rest}) == len(settled) + len(rest) == next_id


def queue_events(seqs: list[int], leased: dict[int, str]) -> list[LeasedEvent]:
    """The leased events ``seqs`` (what the exporter hands to ``dead_letter``)."""
    payloads = {e.id: e.payload for e in events(0, max(int(i[2:]) for i in leased.values()) + 1)}
    return [LeasedEvent(s, payloads[leased[s]], 0, 0) for s in seqs]


async def test_a_damaged_group_is_moved_aside_with_all_its_events_counted(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.append(events(0, 5))
    await queue.append(events(5, 6))
    # the lengths garbled, the header intact
    damage_first_group(queue, lambda raw: raw[:17] + b"\xff" * (len(raw) - 17))

    reopened = make_queue()
    assert [e.id for e in reopened.lease(max_events=100, max_bytes=BIG)] == ["e-5"]
    await reopened.append(events(6, 7))  # the move aside is committed by now

    stats = reopened.stats()
    assert (stats.depth, stats.corrupt_records, balanced(stats).corrupt) == (2, 1, 5)


async def test_a_group_whose_event_count_is_damaged_is_moved_aside_with_no_more_than_it_held(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    await queue.append(events(0, 5))  # sequences 1-5
    await queue.append(events(5, 8))  # sequences 6-8
    # one bit of rot in the event count
    damage_first_group(queue, lambda raw: raw[:13] + (5 | 1 << 20).to_bytes(4, "big") + raw[17:])

    reopened = make_queue()
    batch = reopened.lease(max_events=100, max_bytes=BIG)
    await reopened.append(events(100, 101))  # the move aside is committed by now
    await reopened.ack(batch.seqs)

    assert batch.seqs == [6, 7, 8]
    stats = reopened.stats()
    assert (stats.depth, stats.bytes, balanced(stats).corrupt) == (1, stored_bytes(reopened), 5)


async def test_an_exporter_with_small_batches_gets_groups_of_its_batch_size(
    tmp_path: Path, clock: FakeClock
) -> None:
    """So that its batches take whole groups and its acks write nothing back."""
    queue = LmdbQueue(QueueConfig(directory=tmp_path, sync=False), clock=clock, batch_events=50)
    queue.open()
    try:
        await queue.append(events(0, 120))
        assert stored_records(queue) == 3  # 50, 50, 20

        first = queue.lease(max_events=50, max_bytes=BIG)
        await queue.ack(first.seqs)

        assert (len(first), stored_records(queue), queue.stats().bytes) == (50, 2, stored_bytes(queue))
    finally:
        queue.close()
