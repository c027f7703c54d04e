"""Expiring cumulative streams: ended streams' states are deleted, and a stream forgotten while it
was still alive never bills its history again when it comes back (the watermark)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from otlp_meter.rules.delta import (
    EXPIRED_BEFORE_KEY,
    FIRST_START_KEY,
    KEY_PREFIX,
    StreamState,
    expire_streams,
)
from otlp_meter.rules.model import CumulativeConfig
from tests.unit.rules.otlp import T0
from tests.unit.rules.test_delta import Db, Meter, S, request, values
from tests.unit.rules.test_delta_properties import World, op

START = T0 - 3600 * S  # the streams started an hour before T0


def scan(db: Db) -> Any:
    def items(start: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter([(key, db[key]) for key in sorted(db) if key >= start])

    return items


def expire(meter: Meter, horizon: int, limit: int = 2) -> int:
    """An expiry pass in batches of ``limit`` (each committed on its own), then the cache reloaded
    (what the pipeline's generation check does)."""
    start: bytes | None = KEY_PREFIX
    expired = 0
    while start is not None:
        batch = expire_streams(meter.db.get, scan(meter.db), horizon, start, limit)
        meter.db.commit(batch.updates)
        expired += batch.expired
        start = batch.next_key
    meter.states = meter.engine.stream_states(meter.db.get, meter.states.first_start_ns)
    return expired


def point(value: int, t: int, start: int = START, customer: str = "acme") -> Any:
    return request("sum", {"value": value, "t": t, "start": start, "attrs": {"customer": customer}})


def streams(db: Db) -> set[bytes]:
    return {key for key in db if len(key) == len(KEY_PREFIX) + 16 and key != EXPIRED_BEFORE_KEY}


# --- targeted ------------------------------------------------------------------------------------


def test_a_stream_expired_while_alive_does_not_bill_its_history_again() -> None:
    for policy in ("keep", "auto"):
        meter = Meter(policy, started=START - S)  # the stream started after the collector: kept
        assert values(meter.send(point(100, T0))) == [100]
        assert values(meter.send(point(130, T0 + S))) == [30]
        assert expire(meter, horizon=T0 + 2 * S) == 1
        assert streams(meter.db) == set()
        assert int.from_bytes(meter.db[EXPIRED_BEFORE_KEY], "big") == T0 + 2 * S
        # It was only silent: it comes back with the same start time and its whole value.
        assert meter.send(point(150, T0 + 10 * S)) == []
        assert meter.last.cumulative == {"first_dropped": 1}
        assert values(meter.send(point(160, T0 + 11 * S))) == [10], policy


def test_a_retried_old_export_of_a_forgotten_stream_does_not_become_its_base() -> None:
    meter = Meter("keep")
    old = point(10, T0)
    assert values(meter.send(old)) == [10]
    assert values(meter.send(point(30, T0 + S))) == [20]
    expire(meter, horizon=T0 + 2 * S)
    # A copy of the first export arrives late: older than the watermark, it may be (it is) older
    # than the forgotten last point, so it is not remembered: 30 - 10 must not be billed again.
    assert meter.send(old) == []
    assert streams(meter.db) == set()
    assert meter.send(point(50, T0 + 3 * S)) == []  # newer than the watermark: the new base
    assert values(meter.send(point(60, T0 + 4 * S))) == [10]


def test_a_stream_that_started_after_the_watermark_follows_the_first_point_policy() -> None:
    meter = Meter("keep")
    meter.send(point(10, T0))
    expire(meter, horizon=T0 + 2 * S)
    # A new run of the same series, and a new stream: neither can have been forgotten.
    assert values(meter.send(point(7, T0 + 3 * S, start=T0 + 2 * S))) == [7]
    assert values(meter.send(point(5, T0 + 3 * S, start=T0 + 2 * S, customer="new"))) == [5]
    # One that started before the watermark might have been: dropped, whatever the policy.
    assert meter.send(point(9, T0 + 3 * S, customer="other")) == []
    assert meter.last.cumulative == {"first_dropped": 1}


def test_only_streams_last_seen_before_the_horizon_expire() -> None:
    meter = Meter("keep")
    meter.send(point(1, T0, customer="old"))
    meter.send(point(1, T0 + 5 * S, customer="recent"))
    meter.send(point(1, T0 + 2 * S, start=T0 + 2 * S, customer="at-horizon"))
    before = streams(meter.db)
    assert expire(meter, horizon=T0 + 2 * S) == 1
    assert len(streams(meter.db)) == 2
    assert streams(meter.db) < before
    assert meter.send(point(3, T0 + 6 * S, customer="recent")) != []  # kept: billed on
    assert FIRST_START_KEY in meter.db


def test_a_start_time_after_the_last_point_counts_as_seen() -> None:
    """A producer sending start > time: "last seen" is the later of the two, so a stream whose
    start time is at or after the watermark was never forgotten (else it would bill again)."""
    meter = Meter("keep")
    meter.send(point(10, T0, start=T0 + 5 * S))
    assert expire(meter, horizon=T0 + 5 * S) == 0
    assert expire(meter, horizon=T0 + 5 * S + 1) == 1
    assert meter.send(point(10, T0 + 6 * S, start=T0 + 5 * S)) == []


def test_the_watermark_only_rises_and_moves_only_when_something_expired() -> None:
    meter = Meter("keep")
    meter.send(point(1, T0, customer="a"))
    meter.send(point(1, T0 + 10 * S, customer="b"))
    assert expire(meter, horizon=T0 - S) == 0
    assert EXPIRED_BEFORE_KEY not in meter.db, "nothing forgotten: nothing to guard against"
    assert expire(meter, horizon=T0 + 20 * S) == 2
    meter.send(point(1, T0 + 21 * S, start=T0 + 21 * S, customer="c"))
    assert expire(meter, horizon=T0 + 22 * S) == 1
    assert int.from_bytes(meter.db[EXPIRED_BEFORE_KEY], "big") == T0 + 22 * S
    meter.send(point(1, T0 + 30 * S, start=T0 + 30 * S, customer="d"))
    meter.db[KEY_PREFIX + b"x" * 16] = StreamState(0, T0, 1).encode()
    assert expire(meter, horizon=T0 + 5 * S) == 1  # a lower horizon (a clock stepped back)
    assert int.from_bytes(meter.db[EXPIRED_BEFORE_KEY], "big") == T0 + 22 * S


def test_batches_read_at_most_the_limit_and_resume_where_they_stopped() -> None:
    meter = Meter("keep")
    for n in range(7):
        meter.send(point(1, T0, customer=f"c{n}"))
    meter.db[KEY_PREFIX + b"?" * 16] = b"unreadable: another version"
    first = expire_streams(meter.db.get, scan(meter.db), T0 + S, KEY_PREFIX, 3)
    assert first.expired <= 3
    assert first.next_key is not None
    assert expire(meter, T0 + S, limit=3) == 7
    assert KEY_PREFIX + b"?" * 16 in meter.db, "a state this version cannot read is left alone"
    assert FIRST_START_KEY in meter.db
    assert EXPIRED_BEFORE_KEY in meter.db


def test_no_horizon_no_expiry() -> None:
    meter = Meter("keep")
    meter.send(point(1, T0))
    assert expire_streams(meter.db.get, scan(meter.db), 0, KEY_PREFIX, 10).updates == {}


def test_max_staleness_defaults_to_a_week_and_reads_durations() -> None:
    assert CumulativeConfig().max_staleness == 7 * 86400
    assert CumulativeConfig.model_validate({"max_staleness": "36h"}).max_staleness == 36 * 3600
    assert CumulativeConfig.model_validate({"max_staleness": 0}).max_staleness == 0


# --- properties ----------------------------------------------------------------------------------

with_expiry = st.one_of(op, st.tuples(st.just("expire"), st.integers(-3, 12)))


@dataclass
class ExpiringWorld(World):
    """:class:`World` with expiry passes (horizon: ``age`` before the latest point). Tracks, per
    stream, what it billed, and whether it may lose usage: forgotten while alive, or first seen
    with no state and a start before the watermark (indistinguishable from forgotten)."""

    keys: dict[str, bytes] = field(default_factory=dict)
    forgotten_run: dict[str, int] = field(default_factory=dict)
    lossy: set[str] = field(default_factory=set)
    billed_by: dict[str, int] = field(default_factory=dict)

    def deliver(self, index: int, *, fail: bool = False) -> None:
        name, run, _value, req = self.sent[index]
        p = req.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
        watermark = int.from_bytes(self.meter.db.get(EXPIRED_BEFORE_KEY, b""), "big")
        had_state = name in self.keys and self.keys[name] in self.meter.db
        newer = p.time_unix_nano > self.last_committed_time.get(name, 0)
        billed = len(self.billed)
        super().deliver(index, fail=fail)
        if fail:
            return
        self.billed_by[name] = self.billed_by.get(name, 0) + sum(self.billed[billed:])
        for key in self.meter.last.state_updates:
            if len(key) == len(KEY_PREFIX) + 16:
                self.keys[name] = key
        forgotten = self.forgotten_run.get(name) == run
        if newer and (forgotten or (not had_state and p.start_time_unix_nano < watermark)):
            self.lossy.add(name)

    def apply(self, operation: tuple[Any, ...]) -> None:
        if operation[0] != "expire":
            super().apply(operation)
            return
        before = set(self.meter.db)
        expire(self.meter, self.clock - operation[1])
        gone = before - set(self.meter.db)
        for name, key in self.keys.items():
            if key in gone:
                self.forgotten_run[name] = self.streams[name].run

    def committed_by(self, name: str) -> int:
        return sum(value for (stream, _run), value in self.committed.items() if stream == name)


@settings(max_examples=500, deadline=None)
@given(st.lists(with_expiry, max_size=40), st.booleans())
@example(  # a stream expired while alive, a late copy of its first export, then its next point
    [
        ("increase", "a", 10),
        ("increase", "a", 20),
        ("increase", "b", 1),
        ("expire", 0),
        ("resend", 0),
        ("increase", "a", 5),
    ],
    True,
)
def test_expiry_never_bills_more_than_the_true_increase(
    ops: list[tuple[Any, ...]], start_times: bool
) -> None:
    world = ExpiringWorld(with_start_times=start_times)
    for operation in ops:
        world.apply(operation)
    assert all(delta > 0 for delta in world.billed)
    for name in world.streams:
        billed, true = world.billed_by.get(name, 0), world.committed_by(name)
        assert billed <= true, name
        if name not in world.lossy:
            assert billed == true, name
