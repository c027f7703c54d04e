"""Schema 3: dedupe keys ordered by the event's time, and the upgrade from a schema-2 queue whose
keys (random hashes of (source, id)) must keep catching copies until their window ends."""

from __future__ import annotations

import logging

import pytest

from otlp_meter.errors import StorageError
from otlp_meter.events import EncodedEvent
from otlp_meter.queue import AppendResult, LmdbQueue, codec
from otlp_meter.queue.ledger import LEGACY_UNTIL_KEY, Counters, open_environment, store_counters
from otlp_meter.queue.types import ReplayItem
from tests.unit.queue.conftest import FakeClock, QueueFactory, event, rejection
from tests.unit.queue.test_accounting import balanced
from tests.unit.queue.test_dedupe import expiry_entries

HOUR_NS = 3600 * 10**9
T0 = 1_699_999_000_000  # ms: event times a little before the test clock (1_700_000_000 s)


def timed(n: int) -> EncodedEvent:
    """Event ``n`` with a time of its own: later events have later times."""
    return event(n, time_ms=T0 + 10 * n)


def dedupe_keys(queue: LmdbQueue) -> list[bytes]:
    h = queue._require_handles()
    with h.env.begin() as txn:
        return [bytes(key) for key, _ in txn.cursor(db=h.dedupe)]


def meta(queue: LmdbQueue, key: bytes) -> bytes | None:
    h = queue._require_handles()
    with h.env.begin() as txn:
        value = txn.get(key, db=h.meta)
    return None if value is None else bytes(value)


# -- the keys ------------------------------------------------------------------------------------


async def test_an_event_is_remembered_under_its_time_and_hash(queue: LmdbQueue) -> None:
    await queue.append([timed(1), event(2)])  # e-2 has no time

    assert dedupe_keys(queue) == [
        codec.event_dedupe_key("test", "e-2", 0),  # no time: 0 in front, sorts first
        codec.event_dedupe_key("test", "e-1", T0 + 10),
    ]
    assert dedupe_keys(queue)[1][:6] == (T0 + 10).to_bytes(6, "big")
    assert meta(queue, LEGACY_UNTIL_KEY) is None  # a new queue has no old keys to look up


async def test_keys_are_stored_in_event_time_order(queue: LmdbQueue) -> None:
    await queue.append([timed(n) for n in (5, 1, 9, 3)])
    await queue.append([timed(n) for n in (7, 2)])

    times = [int.from_bytes(key[:6], "big") for key in dedupe_keys(queue)]
    assert times == [T0 + 10 * n for n in (1, 2, 3, 5, 7, 9)]


async def test_copies_with_the_same_time_are_dropped_within_and_across_commits_and_restarts(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    assert await queue.append([timed(1), timed(2), timed(1), event(3), event(3)]) == AppendResult(
        appended=3, deduplicated=2, dead_lettered=0
    )
    assert (await queue.append([timed(2), event(3), timed(4)])).deduplicated == 2
    queue.close()

    reopened = make_queue()
    assert await reopened.append([timed(1), timed(2), event(3), timed(4)]) == AppendResult(
        appended=0, deduplicated=4, dead_lettered=0
    )
    assert balanced(reopened.stats()).deduplicated == 8


async def test_late_and_early_events_among_fresh_ones_are_still_caught(queue: LmdbQueue) -> None:
    """Keys past the largest stored one are taken as new without a lookup and appended at the
    B-tree's edge: copies older than it, or repeated within a request, must still be found."""
    await queue.append([timed(n) for n in (10, 20, 30)])
    result = await queue.append([timed(5), timed(20), timed(25), timed(40), timed(40), timed(10)])
    assert result == AppendResult(appended=3, deduplicated=3, dead_lettered=0)  # 5, 25, 40
    assert (await queue.append([timed(n) for n in (5, 25, 40, 50)])).deduplicated == 3
    times = [int.from_bytes(key[:6], "big") for key in dedupe_keys(queue)]
    assert times == [T0 + 10 * n for n in (5, 10, 20, 25, 30, 40, 50)]


async def test_copies_are_caught_among_rejection_keys(queue: LmdbQueue) -> None:
    """Rejections' keys are random hashes, sorting anywhere among the time-ordered event keys:
    lookups start at the first stored key at or after the smallest wanted one, whatever it is."""
    originals = [bytes([n]) * 8 for n in range(40)]
    await queue.append([timed(1)], rejected=[rejection(original=o) for o in originals])
    await queue.append([timed(n) for n in (2, 3)])
    result = await queue.append([timed(n) for n in (1, 2, 3, 4)], rejected=[rejection(original=originals[7])])
    assert result == AppendResult(appended=1, deduplicated=3, dead_lettered=0)
    assert (await queue.append([timed(4), timed(5)])).deduplicated == 1


async def test_a_copy_with_another_time_is_not_the_collectors_to_catch(queue: LmdbQueue) -> None:
    # Documented: OpenMeter's own deduplication by (source, id) drops the second one.
    await queue.append([event(1, time_ms=T0)])

    assert (await queue.append([event(1, time_ms=T0 + 1)])).appended == 1


async def test_eviction_at_the_limit_forgets_the_oldest_keys(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    queue = make_queue(dedupe_max_keys=3, dedupe_window="1h")
    for n in range(5):
        await queue.append([timed(n)])
        clock.advance(1)

    assert dedupe_keys(queue) == [codec.event_dedupe_key("test", f"e-{n}", T0 + 10 * n) for n in (2, 3, 4)]
    assert queue.stats().evicted_dedupe_total == 2


# -- the upgrade from schema 2 ---------------------------------------------------------------------


def write_schema_2_queue(queue: LmdbQueue, clock: FakeClock, old: list[EncodedEvent], window_ns: int) -> int:
    """What a schema-2 otlp-meter left behind after accepting ``old`` (one commit per event, a
    second apart, the last one now), and a dead-lettered record. Written with lmdb directly, after
    closing ``queue``, as schema 2 did. Returns the last expiry."""
    queue.close()
    config = queue.config
    h = open_environment(config.path, config.effective_map_size(), sync=False)
    now_ns = int(clock.now * 1e9)
    try:
        with h.env.begin(write=True) as txn:
            txn.put(b"schema_version", b"2", db=h.meta)
            txn.delete(LEGACY_UNTIL_KEY, db=h.meta)
            counters = Counters()
            expiry = 0
            for n, e in enumerate(old):
                committed_ns = now_ns - (len(old) - 1 - n) * 10**9
                raw = codec.encode_event(e, committed_ns)
                txn.put(codec.seq_key(counters.next_seq), raw, db=h.events)
                counters.next_seq += 1
                counters.depth += 1
                counters.size += len(raw)
                counters.accepted += 1
                key = codec.legacy_event_dedupe_key(e.source, e.id)
                expiry = committed_ns + window_ns
                txn.put(key, codec.encode_expiry(expiry), db=h.dedupe)
                txn.put(codec.expiry_index_key(expiry, key), codec.expiry_index_value([key]), db=h.expiry)
            store_counters(txn, h, counters)
    finally:
        h.env.close()
    return expiry


async def test_an_upgrade_records_until_when_old_keys_matter(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    until = write_schema_2_queue(make_queue(), clock, [timed(n) for n in range(3)], HOUR_NS)

    queue = make_queue()

    assert meta(queue, b"schema_version") == b"4"
    assert meta(queue, LEGACY_UNTIL_KEY) == codec.encode_expiry(until)
    assert until == int(clock.now * 1e9) + HOUR_NS
    leased = queue.lease(max_events=10, max_bytes=1 << 20)  # schema-2 events still drain
    assert [e.id for e in leased] == ["e-0", "e-1", "e-2"]


async def test_an_upgrade_without_dedupe_keys_records_nothing(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_2_queue(make_queue(), clock, [], HOUR_NS)

    queue = make_queue()

    assert (meta(queue, b"schema_version"), meta(queue, LEGACY_UNTIL_KEY)) == (b"4", None)


async def test_reading_a_schema_2_queue_does_not_upgrade_it(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    first = make_queue()
    write_schema_2_queue(first, clock, [timed(0)], HOUR_NS)
    reader = LmdbQueue(first.config, clock=clock)
    reader.open(readonly=True)
    try:
        assert (meta(reader, b"schema_version"), meta(reader, LEGACY_UNTIL_KEY)) == (b"2", None)
    finally:
        reader.close()


async def test_a_newer_schema_is_refused(make_queue: QueueFactory) -> None:
    queue = make_queue()
    h = queue._require_handles()
    with h.env.begin(write=True) as txn:
        txn.put(b"schema_version", b"5", db=h.meta)
    queue.close()

    with pytest.raises(StorageError, match="schema version 5"):
        make_queue()


async def test_a_copy_of_an_event_appended_before_the_upgrade_is_dropped_within_its_window(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_2_queue(make_queue(), clock, [timed(n) for n in range(3)], HOUR_NS)
    queue = make_queue(dedupe_window="1h")

    # Its v3 key is new; its old key is found.
    assert await queue.append([timed(0), timed(5)]) == AppendResult(
        appended=1, deduplicated=1, dead_lettered=0
    )
    clock.advance(1800)
    assert await queue.append([timed(1), timed(2), timed(1), timed(5)]) == AppendResult(
        appended=0, deduplicated=4, dead_lettered=0
    )
    queue.close()
    reopened = make_queue(dedupe_window="1h")  # the upgrade's record survives a restart
    assert (await reopened.append([timed(2)])).deduplicated == 1
    assert balanced(reopened.stats()).deduplicated == 6


async def test_a_replayed_copy_of_an_event_appended_before_the_upgrade_is_dropped(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_2_queue(make_queue(), clock, [timed(0)], HOUR_NS)
    queue = make_queue(dedupe_window="1h")
    await queue.append([], [rejection()])
    [dead] = queue.list_dead()

    result = await queue.replay_dead([ReplayItem(dead_seq=dead.seq, events=(timed(0), timed(7)))])

    assert (result.appended, result.deduplicated) == (1, 1)


async def test_after_the_old_keys_window_only_new_keys_are_looked_up(
    make_queue: QueueFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    until = write_schema_2_queue(make_queue(), clock, [timed(0), timed(1)], HOUR_NS)
    queue = make_queue(dedupe_window="1h")
    legacy_calls: list[int] = []
    with_legacy = codec.event_dedupe_keys_with_legacy

    def spy(events: list[EncodedEvent]) -> tuple[list[bytes], list[bytes]]:
        legacy_calls.append(len(events))
        return with_legacy(events)

    monkeypatch.setattr(codec, "event_dedupe_keys_with_legacy", spy)
    assert (await queue.append([timed(0)])).deduplicated == 1
    assert legacy_calls == [1]

    clock.now = until / 1e9 + 0.001  # the last old key's window has ended
    assert (await queue.append([timed(1), timed(9)])).appended == 2
    assert (await queue.append([timed(9)])).deduplicated == 1
    assert legacy_calls == [1]  # no old-format lookups any more


async def test_eviction_and_pruning_forget_keys_of_both_formats(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_2_queue(make_queue(), clock, [timed(n) for n in range(3)], HOUR_NS)
    clock.advance(1)
    queue = make_queue(dedupe_window="1h", dedupe_max_keys=4)

    await queue.append([timed(n) for n in range(10, 13)])  # 6 keys: the 2 oldest (old format) go

    legacy = {codec.legacy_event_dedupe_key("test", f"e-{n}") for n in range(3)}
    assert len(set(dedupe_keys(queue)) & legacy) == 1
    assert queue.stats().evicted_dedupe_total == 2
    assert (await queue.append([timed(2)])).deduplicated == 1  # e-2's old key is the one kept

    clock.advance(1800)
    await queue.append([timed(20)])  # evicts e-2's old key
    assert not set(dedupe_keys(queue)) & legacy
    clock.advance(3600)
    assert await queue.prune_dedupe() == 4
    assert (queue.stats().dedupe_keys, expiry_entries(queue)) == (0, [])


async def test_pruning_after_an_upgrade_forgets_old_and_new_keys_when_due(
    make_queue: QueueFactory, clock: FakeClock
) -> None:
    write_schema_2_queue(make_queue(), clock, [timed(n) for n in range(3)], HOUR_NS)
    queue = make_queue(dedupe_window="1h")
    clock.advance(1800)
    await queue.append([timed(n) for n in range(10, 12)])

    clock.advance(1801)  # the old keys' window has ended, not the new ones'
    assert await queue.prune_dedupe() == 3
    assert dedupe_keys(queue) == [codec.event_dedupe_key("test", f"e-{n}", T0 + 10 * n) for n in (10, 11)]
    clock.advance(1800)
    assert await queue.prune_dedupe() == 2
    assert expiry_entries(queue) == []


# -- the eviction warning --------------------------------------------------------------------------


async def test_evictions_are_logged_once_per_interval_with_their_count(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(dedupe_max_keys=2)
    now = [0.0]
    queue._require_writer()._evictions_log._clock = lambda: now[0]

    def lines() -> list[dict[str, object]]:
        return [r.fields for r in caplog.records if r.getMessage() == "queue_dedupe_keys_evicted"]  # type: ignore[attr-defined]

    with caplog.at_level(logging.WARNING, logger="otlp_meter.queue"):
        await queue.append([timed(n) for n in range(3)])  # evicts 1: the first line is written
        await queue.append([timed(3)])
        await queue.append([timed(4), timed(5)])
        assert [(f["evicted"], f["suppressed"]) for f in lines()] == [(1, 0)]
        now[0] = 11.0
        await queue.append([timed(6)])

    assert [(f["evicted"], f["suppressed"], f["limit"]) for f in lines()] == [(1, 0, 2), (4, 2, 2)]
    assert queue.stats().evicted_dedupe_total == 5


async def test_once_eviction_took_every_old_key_they_are_no_longer_looked_up(
    make_queue: QueueFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    until = write_schema_2_queue(make_queue(), clock, [timed(0), timed(1)], HOUR_NS)
    clock.advance(1)
    queue = make_queue(dedupe_window="1h", dedupe_max_keys=2)
    legacy_calls: list[int] = []
    with_legacy = codec.event_dedupe_keys_with_legacy

    def spy(events: list[EncodedEvent]) -> tuple[list[bytes], list[bytes]]:
        legacy_calls.append(len(events))
        return with_legacy(events)

    monkeypatch.setattr(codec, "event_dedupe_keys_with_legacy", spy)
    await queue.append([timed(10), timed(11)])  # looked up both ways; evicts both old keys
    assert legacy_calls == [2]
    assert clock.now * 1e9 < until

    assert (await queue.append([timed(12)])).appended == 1
    assert legacy_calls == [2]  # the old keys' window has not ended, but none is left
