"""Cumulative → delta: what each cumulative point of a stream bills, and the state behind it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from otlp_meter.rules import RulesEngine
from otlp_meter.rules.delta import FIRST_START_KEY, KEY_PREFIX, StreamState, StreamStates
from tests.unit.rules.otlp import RECEIVED, T0, attributes, engine, events, metrics_request

S = 1_000_000_000  # one second in ns
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

USAGE = {
    "name": "usage",
    "match": {"signal": "metrics", "metric": "usage"},
    "event": {
        "type": "usage",
        "subject": {"path": "attributes.customer"},
        "data": {
            "value": {"path": "point.value"},
            "count": {"path": "point.count", "optional": True},
            "from": {"path": "point.start_time", "optional": True},
            "to": {"path": "point.time"},
        },
    },
}


def cumulative(kind: str, *points: Mapping[str, Any], monotonic: bool = True) -> Metric:
    """A cumulative ``usage`` metric; points give ``value`` (sums) or ``count``/``sum``, ``start``, ``t``."""
    out = Metric(name="usage", unit="1")
    data = getattr(out, kind)
    data.aggregation_temporality = CUMULATIVE
    if kind == "sum":
        data.is_monotonic = monotonic
    for p in points:
        point = data.data_points.add(start_time_unix_nano=p.get("start", T0), time_unix_nano=p["t"])
        if "value" in p:
            setattr(point, "as_int" if isinstance(p["value"], int) else "as_double", p["value"])
        for key in ("count", "sum"):
            if key in p:
                setattr(point, key, p[key])
        point.attributes.extend(attributes(p.get("attrs", {"customer": "acme"})))
    return out


def request(kind: str, *points: Mapping[str, Any], **options: Any) -> ExportMetricsServiceRequest:
    return metrics_request(cumulative(kind, *points, **options), resource={"service.name": "api"})


class Db(dict[bytes, bytes]):
    """The queue's ``state`` database, as far as stream states are concerned."""

    def commit(self, updates: Mapping[bytes, bytes | None]) -> None:
        for key, value in updates.items():
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


class Meter:
    """An engine, a state database and the protocol the pipeline follows around them."""

    def __init__(
        self, initial_value: str = "keep", db: Db | None = None, started: int = T0 - S, rule: Any = USAGE
    ) -> None:
        self.engine: RulesEngine = engine(rule)
        self.engine.initial_value = initial_value  # type: ignore[assignment]
        self.db = db if db is not None else Db()
        self.states = self.engine.stream_states(self.db.get, started)

    def send(self, req: ExportMetricsServiceRequest, *, commit: bool = True) -> list[dict[str, Any]]:
        result = self.engine.map_metrics(req, RECEIVED, self.states)
        if commit:
            self.db.commit(result.state_updates)
        else:
            assert result.state_token is not None
            self.states.rollback(result.state_token)
        self.last = result
        return [e["data"] for e in events(result)]

    def restart(self, started: int) -> Meter:
        return Meter(self.engine.initial_value, self.db, started)


def values(data: list[dict[str, Any]]) -> list[Any]:
    return [d["value"] for d in data]


# --- sums ----------------------------------------------------------------------------------------


def test_each_point_bills_the_increase_since_the_previous_one() -> None:
    meter = Meter()
    assert values(meter.send(request("sum", {"value": 10, "t": T0 + S}))) == [10]
    assert meter.send(request("sum", {"value": 25, "t": T0 + 2 * S})) == [
        {"value": 15, "from": T0 + S, "to": T0 + 2 * S}
    ]
    assert values(meter.send(request("sum", {"value": 26.5, "t": T0 + 3 * S}))) == [1.5]


def test_streams_are_told_apart_by_their_attributes_in_any_order() -> None:
    meter = Meter()
    a, b = {"customer": "a", "region": "eu"}, {"customer": "b", "region": "eu"}
    meter.send(request("sum", {"value": 1, "t": T0 + S, "attrs": a}, {"value": 100, "t": T0 + S, "attrs": b}))
    a_reordered = {"region": "eu", "customer": "a"}
    assert values(meter.send(request("sum", {"value": 3, "t": T0 + 2 * S, "attrs": a_reordered}))) == [2]


def test_the_same_request_twice_bills_once() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    second = request("sum", {"value": 25, "t": T0 + 2 * S})
    first_time = meter.send(second)
    ids = [e.id for e in meter.last.events]
    assert meter.send(second) == []
    assert meter.last.cumulative == {"duplicate": 1}
    assert meter.last.records == 1
    assert meter.last.unmatched == 0
    assert first_time == [{"value": 15, "from": T0 + S, "to": T0 + 2 * S}]
    assert len(ids) == 1


def test_a_point_older_than_the_last_one_is_dropped_as_out_of_order() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + 2 * S}))
    assert meter.send(request("sum", {"value": 5, "t": T0 + S})) == []
    assert values(meter.send(request("sum", {"value": 12, "t": T0 + 3 * S}))) == [2]


def test_a_new_start_time_is_a_reset_and_bills_the_whole_new_value() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    restarted = {"value": 30, "start": T0 + 5 * S, "t": T0 + 6 * S}
    assert meter.send(request("sum", restarted)) == [{"value": 30, "from": T0 + 5 * S, "to": T0 + 6 * S}]
    assert meter.last.cumulative == {"reset": 1}


def test_a_value_that_went_down_is_a_reset_even_without_a_start_time() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "start": 0, "t": T0 + S}))
    assert values(meter.send(request("sum", {"value": 4, "start": 0, "t": T0 + 2 * S}))) == [4]


def test_a_start_time_that_moves_within_the_run_is_not_a_reset() -> None:
    # Some producers derive the start from uptime and it jitters; only a run that began after the
    # last point we saw is a new run.
    meter = Meter()
    meter.send(request("sum", {"value": 10, "start": T0, "t": T0 + 10 * S}))
    assert values(meter.send(request("sum", {"value": 12, "start": T0 + 1, "t": T0 + 20 * S}))) == [2]


def test_no_increase_makes_no_event() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    assert meter.send(request("sum", {"value": 10, "t": T0 + 2 * S})) == []
    assert meter.last.cumulative == {"unchanged": 1}


def test_points_without_a_recorded_value_are_skipped() -> None:
    meter = Meter()
    req = request("sum", {"value": 10, "t": T0 + S})
    req.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].flags = 1
    assert meter.send(req) == []
    assert meter.last.cumulative == {"no_value": 1}


def test_non_monotonic_cumulative_sums_pass_through_as_levels() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}, monotonic=False))
    assert values(meter.send(request("sum", {"value": 7, "t": T0 + 2 * S}, monotonic=False))) == [7]
    assert meter.last.cumulative == {}
    assert meter.last.state_updates == {}


# --- histograms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["histogram", "exponential_histogram"])
def test_histograms_bill_the_increase_of_count_and_sum(kind: str) -> None:
    meter = Meter()
    assert meter.send(request(kind, {"count": 2, "sum": 30.0, "t": T0 + S})) == [
        {"value": 30.0, "count": 2, "from": T0, "to": T0 + S}
    ]
    assert meter.send(request(kind, {"count": 5, "sum": 42.5, "t": T0 + 2 * S})) == [
        {"value": 12.5, "count": 3, "from": T0 + S, "to": T0 + 2 * S}
    ]
    assert values(meter.send(request(kind, {"count": 1, "sum": 4.0, "t": T0 + 3 * S}))) == [4.0]  # reset


@pytest.mark.parametrize("kind", ["histogram", "exponential_histogram"])
def test_a_histogram_sum_that_goes_down_is_no_reset_when_its_count_goes_up(kind: str) -> None:
    """Negative measurements make a sum shrink; only the count (or a new start) tells a reset."""
    meter = Meter()
    meter.send(request(kind, {"count": 5, "sum": -50.0, "t": T0 + S}))
    assert meter.send(request(kind, {"count": 7, "sum": -70.0, "t": T0 + 2 * S})) == [
        {"value": -20.0, "count": 2, "from": T0 + S, "to": T0 + 2 * S}
    ]
    assert meter.last.cumulative == {"converted": 1}


@pytest.mark.parametrize(
    ("first", "second"),
    [({"count": 5}, {"count": 7, "sum": 70.0}), ({"count": 5, "sum": 50.0}, {"count": 7})],
    ids=["sum-appears", "sum-disappears"],
)
def test_a_histogram_sum_carried_by_one_point_of_two_is_no_increase(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    """A sum that appears is a new base (its whole value was not earned since the last point); a
    sum that disappears is no reset. The count's increase is billed either way."""
    counts_and_sums = {**USAGE, "event": {**USAGE["event"], "data": {  # type: ignore[dict-item]
        "count": {"path": "point.count"}, "sum": {"path": "point.sum", "optional": True}}}}  # fmt: skip
    meter = Meter(rule=counts_and_sums)
    meter.send(request("histogram", {**first, "t": T0 + S}))
    assert meter.send(request("histogram", {**second, "t": T0 + 2 * S})) == [{"count": 2}]
    assert meter.last.cumulative == {"converted": 1}


# --- points no counter can have ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"value": -5}, "cumulative point: a monotonic sum cannot be -5"),
        ({"value": float("nan")}, "cumulative point: a monotonic sum cannot be nan"),
        ({"value": float("inf")}, "cumulative point: a monotonic sum cannot be infinite"),
    ],
)
def test_an_impossible_counter_value_is_dead_lettered_alone_and_the_stream_goes_on(
    bad: dict[str, Any], reason: str
) -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    other = {"value": 3, "t": T0 + 2 * S, "attrs": {"customer": "globex"}}
    assert values(meter.send(request("sum", {**bad, "t": T0 + 2 * S}, other))) == [3]
    assert [(r.rule, r.reason) for r in meter.last.rejected] == [("usage", reason)]
    assert meter.last.rejected_records == 1
    # The state was left as it was: the next real point bills its increase since 10.
    assert values(meter.send(request("sum", {"value": 30, "t": T0 + 3 * S}))) == [20]


def test_an_int64_counter_at_its_extremes_never_fails_the_request() -> None:
    meter = Meter()
    assert meter.send(request("sum", {"value": -(2**63), "t": T0 + S})) == []
    assert values(meter.send(request("sum", {"value": 2**63 - 1, "t": T0 + 2 * S}))) == [2**63 - 1]


def test_a_histogram_sum_that_is_not_finite_is_dead_lettered() -> None:
    meter = Meter()
    assert meter.send(request("histogram", {"count": 2, "sum": float("nan"), "t": T0 + S})) == []
    assert [r.reason for r in meter.last.rejected] == ["cumulative point: a histogram's sum cannot be nan"]


# --- the first point of a stream -----------------------------------------------------------------


def test_first_point_policy_keep_bills_the_whole_value() -> None:
    assert values(Meter("keep").send(request("sum", {"value": 10, "start": T0 - 9 * S, "t": T0 + S}))) == [10]


def test_first_point_policy_drop_only_remembers_it() -> None:
    meter = Meter("drop")
    assert meter.send(request("sum", {"value": 10, "t": T0 + S})) == []
    assert meter.last.cumulative == {"first_dropped": 1}
    assert values(meter.send(request("sum", {"value": 12, "t": T0 + 2 * S}))) == [2]


def test_first_point_policy_auto_keeps_streams_that_began_after_the_collector_first_started() -> None:
    meter = Meter("auto", started=T0)
    old = {"value": 10, "start": T0 - S, "t": T0 + S, "attrs": {"customer": "old"}}
    new = {"value": 7, "start": T0 + S, "t": T0 + 2 * S, "attrs": {"customer": "new"}}
    assert values(meter.send(request("sum", old, new))) == [7]
    assert meter.last.cumulative == {"first_dropped": 1, "first_kept": 1}


def test_the_first_start_is_persisted_so_a_restart_keeps_streams_born_while_it_was_down() -> None:
    meter = Meter("auto", started=T0)
    meter.send(request("sum", {"value": 1, "t": T0 + S, "attrs": {"customer": "x"}}))
    assert meter.db[FIRST_START_KEY] == T0.to_bytes(8, "big")
    later = meter.restart(started=T0 + 100 * S)
    assert later.states.first_start_ns == T0
    born_while_down = {"value": 5, "start": T0 + 50 * S, "t": T0 + 101 * S}
    assert values(later.send(request("sum", born_while_down))) == [5]


# --- state: restarts, rollback, memory -----------------------------------------------------------


def test_a_restart_continues_from_the_committed_state() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    later = meter.restart(started=T0 + 60 * S)
    assert values(later.send(request("sum", {"value": 15, "t": T0 + 2 * S}))) == [5]
    assert later.send(request("sum", {"value": 15, "t": T0 + 2 * S})) == []  # resent after the restart


def test_state_updates_are_keyed_under_the_delta_prefix() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    keys = set(meter.last.state_updates)
    assert FIRST_START_KEY in keys
    (stream,) = keys - {FIRST_START_KEY}
    assert stream.startswith(KEY_PREFIX)
    assert len(stream) == len(KEY_PREFIX) + 16
    assert StreamState.decode(meter.db[stream]) == StreamState(T0, T0 + S, 10)
    meter.send(request("sum", {"value": 11, "t": T0 + 2 * S}))
    assert set(meter.last.state_updates) == {stream}  # the first start is written once


def test_a_failed_append_is_rolled_back_and_the_retry_bills_the_same_event() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    retry = request("sum", {"value": 25, "t": T0 + 2 * S})
    assert values(meter.send(retry, commit=False)) == [15]
    failed_ids = [e.id for e in meter.last.events]
    assert values(meter.send(retry)) == [15]
    assert [e.id for e in meter.last.events] == failed_ids


def test_rollback_of_a_first_mapping_writes_the_first_start_again() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}), commit=False)
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    assert FIRST_START_KEY in meter.last.state_updates


def test_only_the_last_mapping_can_be_rolled_back() -> None:
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    token = meter.last.state_token
    meter.send(request("sum", {"value": 11, "t": T0 + 2 * S}))
    assert token is not None
    with pytest.raises(RuntimeError, match="only the last finished mapping"):
        meter.states.rollback(token)


def test_memory_is_bounded_and_evicted_streams_are_read_back_from_state() -> None:
    db = Db()
    states = StreamStates(db.get, started_ns=T0, max_streams=2)
    rules = engine(USAGE)
    points = [{"value": 10, "t": T0 + S, "attrs": {"customer": f"c{i}"}} for i in range(5)]
    db.commit(rules.map_metrics(request("sum", *points), RECEIVED, states).state_updates)
    rules.map_metrics(metrics_request(), RECEIVED, states)  # the next mapping trims memory
    assert len(states) == 2
    later = [{"value": 13, "t": T0 + 2 * S, "attrs": {"customer": f"c{i}"}} for i in range(5)]
    assert (
        values([e["data"] for e in events(rules.map_metrics(request("sum", *later), RECEIVED, states))])
        == [3] * 5
    )


def test_state_that_cannot_be_decoded_starts_the_stream_afresh() -> None:
    assert StreamState.decode(b"\x09junk") is None
    assert StreamState.decode(b"") is None
    for state in (StreamState(1, 2, 3), StreamState(1, 2, 2.5), StreamState(1, 2, 9.0, 4, False)):
        assert StreamState.decode(state.encode()) == state


# --- what rules and the dead-letter store see ----------------------------------------------------


def test_without_states_the_engine_keeps_its_own_in_memory() -> None:
    rules = engine(USAGE)  # made "now": streams that started earlier are old, their first point drops
    assert rules.map_metrics(request("sum", {"value": 10, "t": T0 + S}), RECEIVED).cumulative == {
        "first_dropped": 1
    }
    assert [
        e["data"]["value"]
        for e in events(rules.map_metrics(request("sum", {"value": 12, "t": T0 + 2 * S}), RECEIVED))
    ] == [2]


def test_delta_points_pass_through_untouched() -> None:
    rules = engine(USAGE)
    req = request("sum", {"value": 10, "t": T0 + S})
    req.resource_metrics[0].scope_metrics[0].metrics[
        0
    ].sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    result = rules.map_metrics(req, RECEIVED)
    assert [e["data"]["value"] for e in events(result)] == [10]
    assert result.cumulative == {}


def test_a_rejected_delta_is_dead_lettered_as_a_delta_that_replays_to_the_same_event() -> None:
    event: dict[str, Any] = {**USAGE["event"], "subject": {"path": "attributes.tenant"}}  # type: ignore[dict-item]
    broken = {**USAGE, "event": event}
    first, second = request("sum", {"value": 10, "t": T0 + S}), request("sum", {"value": 25, "t": T0 + 2 * S})

    meter = Meter()
    meter.engine = engine(broken)
    meter.engine.initial_value = "keep"
    meter.send(first)
    meter.send(second)
    (rejection,) = meter.last.rejected
    dead = ExportMetricsServiceRequest.FromString(rejection.original)
    metric = dead.resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    assert (metric.sum.data_points[0].as_int, metric.sum.data_points[0].start_time_unix_nano) == (15, T0 + S)

    # After fixing the rule, replaying the dead letter bills the 15 as the fixed rule would have.
    fixed = Meter()
    fixed.send(first)
    fixed.send(second)
    replayed = fixed.engine.map_metrics(dead, RECEIVED)
    assert [(e.id, e.payload) for e in replayed.events] == [(e.id, e.payload) for e in fixed.last.events]


def test_rollback_is_right_even_when_the_append_committed_after_all() -> None:
    # A cancelled append may still commit; with a database the touched streams are read back.
    meter = Meter()
    meter.send(request("sum", {"value": 10, "t": T0 + S}))
    result = meter.engine.map_metrics(request("sum", {"value": 25, "t": T0 + 2 * S}), RECEIVED, meter.states)
    meter.db.commit(result.state_updates)  # it did commit ...
    assert result.state_token is not None
    meter.states.rollback(result.state_token)  # ... but the pipeline could not know
    assert meter.send(request("sum", {"value": 25, "t": T0 + 2 * S})) == []  # not billed twice
    assert values(meter.send(request("sum", {"value": 30, "t": T0 + 3 * S}))) == [5]


def test_a_failure_to_read_stream_state_fails_the_request_instead_of_dead_lettering_it() -> None:
    """The request is refused (retryably, by the pipeline): the sender keeps the usage and retries."""

    def broken(key: bytes) -> bytes | None:
        if key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 16:  # a stream's state
            raise OSError("the state database cannot be read")
        return None

    meter = Meter()
    states = meter.engine.stream_states(broken, T0 - S)
    with pytest.raises(OSError, match="cannot be read"):
        meter.engine.map_metrics(request("sum", {"value": 10, "t": T0 + S}), RECEIVED, states)
