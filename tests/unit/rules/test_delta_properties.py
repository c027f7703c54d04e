"""Properties of cumulative → delta over random histories: nothing billed twice, nothing lost.

A history is a random sequence of exports of a few cumulative streams: increases, resets (a new
run with a later start time, or a value that went down when the producer sends no start time),
exports resent (a retry after a lost answer), appends that fail (rolled back; the increase comes
with the stream's next point) and collector restarts (new stream states reading the committed
state back). Whatever happens, the deltas billed add up to the true increase of every run as far
as it was committed, and no delta is negative or zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from tests.unit.rules.otlp import T0
from tests.unit.rules.test_delta import Meter, request

STREAMS = ("a", "b", "c")

op = st.one_of(
    st.tuples(st.just("increase"), st.sampled_from(STREAMS), st.integers(0, 1000)),
    st.tuples(st.just("reset"), st.sampled_from(STREAMS), st.integers(0, 1000)),
    st.tuples(st.just("fail"), st.sampled_from(STREAMS), st.integers(0, 1000)),
    st.tuples(st.just("resend"), st.integers(0, 10_000)),
    st.tuples(st.just("restart")),
)


@dataclass
class Stream:
    start: int = T0
    value: int = 0
    run: int = 0


@dataclass
class World:
    """The producer's truth and what the collector has committed, per run of each stream."""

    with_start_times: bool
    meter: Meter = field(default_factory=Meter)
    clock: int = T0
    streams: dict[str, Stream] = field(default_factory=lambda: {name: Stream() for name in STREAMS})
    sent: list[tuple[str, int, int, ExportMetricsServiceRequest]] = field(default_factory=list)
    last_committed_time: dict[str, int] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)  # (stream, run) → last value
    billed: list[int] = field(default_factory=list)

    def export(self, name: str, *, fail: bool = False) -> None:
        self.clock += 1
        s = self.streams[name]
        point: dict[str, Any] = {"value": s.value, "t": self.clock, "attrs": {"customer": name}}
        point["start"] = s.start if self.with_start_times else 0
        req = request("sum", point)
        self.sent.append((name, s.run, s.value, req))
        self.deliver(len(self.sent) - 1, fail=fail)

    def deliver(self, index: int, *, fail: bool = False) -> None:
        name, run, value, req = self.sent[index]
        time = req.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].time_unix_nano
        data = self.meter.send(req, commit=not fail)
        if fail:
            return
        self.billed += [d["value"] for d in data]
        if time > self.last_committed_time.get(name, 0):
            self.last_committed_time[name] = time
            self.committed[(name, run)] = value

    def apply(self, operation: tuple[Any, ...]) -> None:
        kind = operation[0]
        if kind in ("increase", "fail"):
            _, name, amount = operation
            self.streams[name].value += amount
            self.export(name, fail=kind == "fail")
        elif kind == "reset":
            _, name, value = operation
            s = self.streams[name]
            if not self.with_start_times:
                if s.value == 0:
                    return
                value %= s.value  # without a start time only a value that went down shows a reset
                if self.committed.get((name, s.run), 0) <= value:
                    return  # ... below what was last committed; anything else is indistinguishable
            self.clock += 1
            self.streams[name] = Stream(start=self.clock, value=value, run=s.run + 1)
            self.export(name)
        elif kind == "resend" and self.sent:
            self.deliver(operation[1] % len(self.sent))
        elif kind == "restart":
            self.meter = self.meter.restart(started=self.clock)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_billed_deltas_add_up_to_the_committed_increase_with_start_times(ops: list[tuple[Any, ...]]) -> None:
    world = World(with_start_times=True)
    for operation in ops:
        world.apply(operation)
    assert all(delta > 0 for delta in world.billed)
    assert sum(world.billed) == sum(world.committed.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_billed_deltas_add_up_without_start_times(ops: list[tuple[Any, ...]]) -> None:
    world = World(with_start_times=False)
    for operation in ops:
        world.apply(operation)
    assert all(delta > 0 for delta in world.billed)
    assert sum(world.billed) == sum(world.committed.values())


@settings(max_examples=100, deadline=None)
@given(st.lists(op, max_size=30))
def test_replaying_the_whole_history_bills_nothing_more(ops: list[tuple[Any, ...]]) -> None:
    world = World(with_start_times=True)
    for operation in ops:
        world.apply(operation)
    billed = sum(world.billed)
    world.meter = world.meter.restart(started=world.clock)
    for index in range(len(world.sent)):
        world.deliver(index)
    assert sum(world.billed) == sum(world.committed.values())  # what had failed is billed now, once
    assert billed <= sum(world.billed)
