"""A queue written before schema 2 (envelope-1 events, one expiry index entry per dedupe key) keeps
working after an upgrade: its events drain, its dedupe keys still drop copies and still expire."""

from __future__ import annotations

from otlp_meter.queue import LmdbQueue, codec
from otlp_meter.queue.ledger import Counters, open_environment, store_counters
from tests.unit.queue.conftest import FakeClock, QueueFactory, event
from tests.unit.queue.test_accounting import balanced
from tests.unit.queue.test_codec import v1_event

HOUR_NS = 3600 * 10**9


def write_schema_1_queue(queue: LmdbQueue, clock: FakeClock, count: int) -> None:
    """What a schema-1 otlp-meter left behind after accepting events ``e-0`` … (one-hour window).

    Written with lmdb directly, after closing ``queue``, byte for byte as schema 1 did.
    """
    queue.close()
    config = queue.config
    h = open_environment(config.path, config.effective_map_size(), sync=False)
    now_ns = int(clock.now * 1e9)
    try:
        with h.env.begin(write=True) as txn:
            txn.put(b"schema_version", b"1", db=h.meta)
            counters = Counters()
            for n in range(count):
                e = event(n)
                raw = v1_event(e.source, e.id, e.payload, now_ns)
                txn.put(codec.seq_key(counters.next_seq), raw, db=h.events)
                counters.next_seq += 1
                counters.depth += 1
                counters.size += len(raw)
                counters.accepted += 1
                key = codec.legacy_event_dedupe_key(e.source, e.id)
                txn.put(key, codec.encode_expiry(now_ns + HOUR_NS), db=h.dedupe)
                txn.put(codec.expiry_index_key(now_ns + HOUR_NS, key), b"", db=h.expiry)
            store_counters(txn, h, counters)
    finally:
        h.env.close()


def schema_version(queue: LmdbQueue) -> bytes | None:
    h = queue._require_handles()  # an open queue: read through its own environment
    with h.env.begin() as txn:
        return txn.get(b"schema_version", db=h.meta)


async def test_envelope_1_events_drain_after_an_upgrade(make_queue: QueueFactory, clock: FakeClock) -> None:
    write_schema_1_queue(make_queue(), clock, 3)
    queue = make_queue()
    await queue.append([event(3)])  # a new event, envelope 2, behind the old ones

    leased = queue.lease(max_events=10, max_bytes=1 << 20)

    assert [(e.source, e.id, e.payload) for e in leased] == [
        (e.source, e.id, e.payload) for e in map(event, range(4))
    ]
    assert all(e.enqueued_at == clock.now for e in leased)
    await queue.ack([e.seq for e in leased])
    stats = queue.stats()
    assert (stats.depth, stats.bytes) == (0, 0)
    assert balanced(stats).delivered == 4
    assert schema_version(queue) == b"4"


async def test_keys_of_the_old_expiry_index_still_drop_copies_and_still_expire(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_1_queue(make_queue(dedupe_window="1h"), clock, 3)
    queue = make_queue(dedupe_window="1h")

    clock.advance(1800)
    assert (await queue.append([event(0), event(5)])).deduplicated == 1
    clock.advance(1801)
    assert await queue.prune_dedupe() == 3
    assert queue.stats().dedupe_keys == 1  # e-5, remembered after the upgrade
    assert (await queue.append([event(0)])).appended == 1


async def test_an_old_index_entry_forgets_the_old_key_but_not_the_key_remembered_since(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_1_queue(make_queue(dedupe_window="1h"), clock, 1)
    queue = make_queue(dedupe_window="1h")
    clock.advance(3601)  # e-0's window ended, but it was not pruned yet

    assert (await queue.append([event(0)])).appended == 1  # remembered again (schema 3 key), an hour
    assert await queue.prune_dedupe() == 1  # the old entry is due: its old-format key goes
    assert queue.stats().dedupe_keys == 1
    assert (await queue.append([event(0)])).deduplicated == 1


async def test_an_older_otlp_meter_is_kept_out_of_an_upgraded_queue(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_1_queue(make_queue(), clock, 1)

    assert schema_version(make_queue()) == b"4"  # which schema 1 refuses to open ("newer")
