"""The C fast path (``_native.c``) makes exactly what the Python engine makes, or defers to it.

Every property here maps the same request with two engines compiled from the same rules: one with
the C programs, one with ``OTLP_METER_NATIVE=0`` (pure Python), and requires the same events (byte
for byte), rejections (with their reasons and originals), counts and cumulative outcomes. The rules
cover what C runs itself — every place and condition kind, every conversion, defaults, omitted and
skipped fields, the built-in source, time and id, literals, and the point and metric paths of every
point type — and the values are whatever hypothesis makes of them (empty, duplicate, nested,
control characters, NaN, huge numbers...), so every deferral is exercised too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from otlp_meter import native
from otlp_meter.events import format_time
from otlp_meter.rules import MappingResult, RuleModel, RulesConfig, RulesEngine, delta, ids
from otlp_meter.rules.ids import format_uuid8
from otlp_meter.rules.views import LogView, PointView, RecordView, ResourceState, ScopeState
from tests.unit.rules.otlp import RECEIVED, T0, any_value, rule

if native.module is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("the C extension otlp_meter._native is not built (CI has a compiler)")
    pytest.skip(
        "the C extension is not built here (no C compiler?): nothing to compare", allow_module_level=True
    )
_native: Any = native.module

KEYS = ["k", "n", "user", "t", "tags", "k.x"]
scalars = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.sampled_from(
        ["", "a", "b", "1", "-2", "2.5", "1e3", "nan", "true", "No", "a:b", "x%zz", '\x00\n"\\é']
    ),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-02-03T04:05:06.789+02:00", "ok\u2028"]),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**53 + 1, 1_717_200_000, 1_717_200_000_123]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e-5, 1e16, 9007199254740993.0, 1.5e300]),
    st.binary(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=2),
    max_leaves=4,
)
# (key, value) pairs: duplicate keys included (the last one wins)
attribute_lists = st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=8)
maps = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)


def kvs(pairs: Sequence[tuple[str, Any]]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in pairs]


def data_fields(prefix: str) -> dict[str, Any]:
    """Every conversion, plain and with defaults, of the record's ``n`` (and raw values)."""
    out: dict[str, Any] = {
        "raw": {"path": f"{prefix}n", "optional": True},
        "from_k": {"path": [f"{prefix}k", f"{prefix}t"], "optional": True},
        "tags": {"path": f"{prefix}tags", "default": ["none", 1]},
        "nulled": {"path": f"{prefix}k.x", "default": None},
        "literal": {"value": {"a": [1, 2.5, "x"]}},
        "resource": {"path": "resource.attributes.k", "optional": True},
        "scope": {"path": "scope.attributes.n", "default": "s"},
    }
    for kind in ("int", "float", "number", "string", "bool"):
        out[f"as_{kind}"] = {"path": f"{prefix}n", "as": kind, "optional": True}
    out["as_int_default"] = {"path": f"{prefix}k.x", "as": "int", "default": "7"}
    return out


def log_rules() -> list[dict[str, Any]]:
    subject = {"path": ["attributes.user", "record.body.user", "resource.attributes.user"]}
    return [
        rule(
            "exists",
            continue_=True,
            match={"where": [{"path": "attributes.k", "exists": True}]},
            event={
                "type": {"path": ["attributes.t", "record.body.t"]},
                "subject": subject,
                "data": data_fields("attributes."),
            },
        ),
        rule(
            "tests",
            continue_=True,
            match={
                "where": [
                    {"path": "attributes.n", "exists": False},
                    {"path": ["attributes.k", "record.body.k"], "in": ["a", "b", ""]},
                    {"path": "resource.attributes.t", "equals": True},
                    {"path": "scope.name", "equals": "lib"},
                ]
            },
            event={
                "type": "t",
                "subject": {"path": "attributes.user", "default": "anyone"},
                "data": {"k": {"path": "attributes.k"}},
            },
        ),
        rule(
            "calls",
            continue_=True,
            match={
                "where": [
                    {"path": "attributes.k", "regex": "^[a-z]"},
                    {"path": "attributes.user", "in": ["a", 1, True]},
                ]
            },
            event={"type": "calls", "subject": "s", "data": {"k": {"path": "attributes.k", "as": "string"}}},
        ),
        rule(
            "equals-number",
            continue_=True,
            match={"where": [{"path": "attributes.n", "equals": 1}]},
            event={"type": "n", "subject": {"path": "record.body.user", "optional": True}, "data": {}},
        ),
        rule(
            "head-paths",
            continue_=True,
            match={"where": [{"path": "record.body.k", "exists": True}]},
            event={
                "type": {"path": "record.body.t", "default": "typed"},
                "subject": {"path": "record.body.user", "default": "body"},
                "source": {"path": ["attributes.k", "resource.attributes.k"], "optional": True},
                "time": {"path": "attributes.t", "optional": True},
                "id": {"path": "attributes.user", "optional": True},
                "data": {
                    "severity": {"path": "record.severity_text", "optional": True},
                    "at": {"path": "record.time"},
                },
            },
        ),
        rule(
            "required",
            match={"where": [{"path": "attributes.user", "exists": True}]},
            event={
                "type": "req",
                "subject": {"path": "attributes.user"},
                "source": {"path": "attributes.k"},
                "time": {"path": "attributes.n"},
                "data": {"v": {"path": "attributes.n", "as": "number"}, "body": {"path": "record.body"}},
            },
        ),
    ]


def metric_rules() -> list[dict[str, Any]]:
    data = data_fields("attributes.") | {
        "value": {"path": "point.value", "optional": True},
        "as_int": {"path": "point.value", "as": "int", "optional": True},
        "number": {"path": "point.value", "as": "number", "optional": True},
        "sum": {"path": "point.sum", "optional": True},
        "count": {"path": "point.count", "optional": True},
        "time": {"path": "point.time", "optional": True},
        "start": {"path": "point.start_time", "optional": True},
        "name": {"path": "metric.name"},
        "unit": {"path": "metric.unit", "optional": True},
        "type": {"path": "metric.type"},
    }
    return [
        rule(
            "points",
            signal="metrics",
            continue_=True,
            match={"metric": "m*"},
            event={
                "type": {"path": "metric.name"},
                "subject": {"path": ["attributes.user", "resource.attributes.user"]},
                "data": data,
            },
        ),
        rule(
            "required-value",
            signal="metrics",
            match={"where": [{"path": "attributes.k", "in": ["a", "b"]}]},
            event={"type": "v", "subject": "s", "data": {"v": {"path": "point.value", "as": "int"}}},
        ),
    ]


@contextmanager
def native_off() -> Iterator[None]:
    with mock.patch.dict(os.environ, {"OTLP_METER_NATIVE": "0"}):
        yield


def engines(rules: list[dict[str, Any]]) -> tuple[RulesEngine, RulesEngine]:
    config = RulesConfig(packs=[], inline=[RuleModel.model_validate(r) for r in rules])
    fast = RulesEngine.from_config(config, config_key="rules")
    with native_off():
        slow = RulesEngine.from_config(config, config_key="rules")
    assert all(r.native is None for r in slow.rules)
    return fast, slow


LOGS_FAST, LOGS_SLOW = engines(log_rules())
METRICS_FAST, METRICS_SLOW = engines(metric_rules())


def outcome(result: MappingResult) -> tuple[Any, ...]:
    return (
        [tuple(event) for event in result.events],
        [(r.signal, r.rule, r.reason, r.original) for r in result.rejected],
        result.records,
        result.unmatched,
        result.matched,
        result.rejected_records,
        result.cumulative,
    )


def test_the_rules_here_run_in_c() -> None:
    """Not vacuous: every rule of the comparison has a C program (else both sides are Python)."""
    assert all(r.native is not None for r in (*LOGS_FAST.rules, *METRICS_FAST.rules))


def c_outcomes(engine: RulesEngine, view: RecordView) -> dict[str, str]:
    """What each rule's C program says of the record: no match, an event, or "Python"."""
    said = {}
    for r in engine.rules:
        assert r.native is not None
        result = r.native(view)
        said[r.name] = "no match" if result is False else "Python" if result is None else "event"
    return said


def test_c_makes_the_events_of_well_formed_records_itself() -> None:
    """The comparisons below also cover C's own events, not only its deferrals."""
    request = log_request(
        [
            (
                [("k", "a"), ("n", 1), ("user", "a"), ("t", "2024-01-01T00:00:00Z")],
                {"k": "x", "user": "b"},
                T0,
                0,
            )
        ],
        {"k": "src", "t": True},
        {"n": 3},
        "lib",
    )
    res = ResourceState(request.resource_logs[0], LOGS_FAST._log_keys)
    view = LogView(res, ScopeState(res, request.resource_logs[0].scope_logs[0]), RECEIVED)
    view.record = request.resource_logs[0].scope_logs[0].log_records[0]
    assert c_outcomes(LOGS_FAST, view) == {
        "exists": "event",
        "tests": "no match",
        "calls": "event",
        "equals-number": "event",
        "head-paths": "event",
        "required": "event",
    }
    view.record.attributes[1].value.int_value = 2  # as: bool refuses 2: Python rejects the record
    view = LogView(res, view.scope, RECEIVED)
    view.record = request.resource_logs[0].scope_logs[0].log_records[0]
    assert c_outcomes(LOGS_FAST, view)["exists"] == "Python"


@pytest.mark.parametrize("kind", ["gauge", "sum", "histogram", "exponential_histogram", "summary"])
def test_c_makes_the_events_of_well_formed_points_itself(kind: str) -> None:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    scope_metrics = resource_metrics.scope_metrics.add()
    metric = scope_metrics.metrics.add(name="m1", unit="By")
    add_points(metric, kind, [([("k", "a"), ("user", "u"), ("n", 1)], 4, T0, 4, True)])
    res = ResourceState(resource_metrics, METRICS_FAST._metric_keys)
    view = PointView(res, ScopeState(res, scope_metrics), RECEIVED)
    view.metric, view.metric_type = metric, kind
    view.metric_key = ids.metric_key("m1", kind)
    view.point = getattr(metric, kind).data_points[0]
    assert c_outcomes(METRICS_FAST, view) == {"points": "event", "required-value": "event"}


def test_the_shipped_packs_run_in_c() -> None:
    engine = RulesEngine.from_config(
        RulesConfig(packs=["genai", "http", "kubernetes", "runai", "prometheus", "s3"])
    )
    in_python = sorted(r.name for r in engine.rules if r.native is None)
    # data_from (the whole map as data) and reject rules stay in Python
    assert in_python == ["prometheus-query", "s3-unreadable-row", "s3-usage-row"]


def log_request(
    records: list[tuple[list[tuple[str, Any]], Any, int, int]],
    resource: Mapping[str, Any],
    scope_attrs: Mapping[str, Any],
    scope_name: str,
) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(kvs(list(resource.items())))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = scope_name
    scope_logs.scope.attributes.extend(kvs(list(scope_attrs.items())))
    for attrs, body, time, observed in records:
        record = LogRecord(time_unix_nano=time, observed_time_unix_nano=observed, severity_text="INFO")
        record.attributes.extend(kvs(attrs))
        if body is not None:
            record.body.CopyFrom(any_value(body))
        scope_logs.log_records.append(record)
    return request


times = st.sampled_from([0, T0, T0 + 1, T0 + 1_000, T0 + 1_000_000, 2**64 - 1])
bodies = st.one_of(
    st.none(), values, st.dictionaries(st.sampled_from(["k", "t", "user"]), values, max_size=3)
)


# Fields protobuf keeps aside as unknown (a known number with another wire type, an unknown number,
# string_value_strindex), appended to AnyValues: a sender's newer or odd encoder.
odd_tails = st.sampled_from(
    [
        b"",
        b"",
        b"\x08\x01",
        b"\x12\x00",
        b"\x21\x00\x00\x00\x00\x00\x00\xf0\x3f",
        b"\x4a\x00",
        b"\x40\x05",
        b"\x1a\x00",
    ]
)


def with_tail(value: AnyValue, tail: bytes) -> AnyValue:
    return AnyValue.FromString(value.SerializeToString() + tail)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(attribute_lists, bodies, times, times), min_size=1, max_size=4),
    maps,
    maps,
    st.sampled_from(["lib", "other", ""]),
    st.lists(odd_tails, min_size=2, max_size=2),
)
def test_logs_map_the_same_in_c_and_in_python(
    records: list[tuple[list[tuple[str, Any]], Any, int, int]],
    resource: dict[str, Any],
    scope_attrs: dict[str, Any],
    scope_name: str,
    tails: list[bytes],
) -> None:
    request = log_request(records, resource, scope_attrs, scope_name)
    for record in request.resource_logs[0].scope_logs[0].log_records:
        if record.HasField("body"):
            record.body.CopyFrom(with_tail(record.body, tails[0]))
        for kv in record.attributes:
            kv.value.CopyFrom(with_tail(kv.value, tails[1]))
    assert outcome(LOGS_FAST.map_logs(request, RECEIVED)) == outcome(LOGS_SLOW.map_logs(request, RECEIVED))


point_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 3, 2.5]),
)


def add_points(
    metric: Metric, kind: str, points: list[tuple[list[tuple[str, Any]], Any, int, int, bool]]
) -> None:
    data: Any = getattr(metric, kind)
    if kind in ("sum", "histogram", "exponential_histogram"):
        data.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    for attrs, value, time, count, with_sum in points:
        point = data.data_points.add(time_unix_nano=time, start_time_unix_nano=time // 2)
        point.attributes.extend(kvs(attrs))
        if kind in ("gauge", "sum"):
            if value is not None:
                setattr(point, "as_int" if isinstance(value, int) else "as_double", value)
        else:
            point.count = count
            if with_sum or kind == "summary":
                point.sum = float(value) if value is not None else 0.0


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary"]),
    st.lists(
        st.tuples(
            attribute_lists, point_values, times, st.sampled_from([0, 5, 2**63, 2**64 - 1]), st.booleans()
        ),
        min_size=1,
        max_size=4,
    ),
    maps,
    st.sampled_from(["m1", "mine", "other"]),
    st.sampled_from(["", "By"]),
)
def test_metrics_map_the_same_in_c_and_in_python(
    kind: str,
    points: list[tuple[list[tuple[str, Any]], Any, int, int, bool]],
    resource: dict[str, Any],
    name: str,
    unit: str,
) -> None:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(kvs(list(resource.items())))
    metric = resource_metrics.scope_metrics.add().metrics.add(name=name, unit=unit)
    add_points(metric, kind, points)
    assert outcome(METRICS_FAST.map_metrics(request, RECEIVED)) == outcome(
        METRICS_SLOW.map_metrics(request, RECEIVED)
    )


def test_cumulative_points_map_the_same_in_c_and_in_python() -> None:
    """Converted (delta) points are what C reads; each engine keeps its own stream states."""
    fast_states = METRICS_FAST.stream_states(None, T0 - 1)
    slow_states = METRICS_SLOW.stream_states(None, T0 - 1)
    for export in range(1, 4):
        request = ExportMetricsServiceRequest()
        metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="m1")
        metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.is_monotonic = True
        for i in range(3):
            point = metric.sum.data_points.add(
                start_time_unix_nano=T0, time_unix_nano=T0 + export, as_int=export * (i + 1)
            )
            point.attributes.extend(kvs([("user", f"u{i}"), ("k", "a")]))
        fast = METRICS_FAST.map_metrics(request, RECEIVED, fast_states)
        assert len(fast.events) == 6  # both rules, every point
        assert outcome(fast) == outcome(METRICS_SLOW.map_metrics(request, RECEIVED, slow_states))


def same_in_c_and_python(rules: list[dict[str, Any]], request: ExportLogsServiceRequest) -> MappingResult:
    fast, slow = engines(rules)
    result = fast.map_logs(request, RECEIVED)
    assert outcome(result) == outcome(slow.map_logs(request, RECEIVED))
    return result


@pytest.mark.parametrize("value", [2.0**63, 1e19, 2.0**64 - 2048])
def test_a_whole_number_beyond_int64_is_still_an_int(value: float) -> None:
    """``as: number`` makes an int of any whole value up to 2^64 - 1; C's int64 stops earlier."""
    rules = [
        rule(
            "r", event={"type": "t", "subject": "s", "data": {"v": {"path": "attributes.n", "as": "number"}}}
        )
    ]
    result = same_in_c_and_python(rules, log_request([([("n", value)], None, T0, 0)], {}, {}, "lib"))
    assert orjson.loads(result.events[0].payload)["data"]["v"] == int(value)


def test_a_map_body_with_a_field_protobuf_set_aside_is_still_a_map() -> None:
    """A known AnyValue field with another wire type after the kvlist is unknown to protobuf: the
    body is still the map (found by the record.body.<key> paths)."""
    kvlist = KeyValueList(values=kvs([("user", "alice")])).SerializeToString()
    body = AnyValue.FromString(b"\x32" + bytes([len(kvlist)]) + kvlist + b"\x08\x01")  # field 1 as a varint
    assert body.WhichOneof("value") == "kvlist_value"
    request = log_request([([("k", "x")], None, T0, 0)], {}, {}, "lib")
    request.resource_logs[0].scope_logs[0].log_records[0].body.CopyFrom(body)
    rules = [
        rule(
            "r",
            continue_=True,
            match={"where": [{"path": "attributes.k", "exists": True}]},
            event={
                "type": "t",
                "subject": "s",
                "data": {"user": {"path": "record.body.user", "optional": True}},
            },
        ),
        rule(
            "c",
            match={"where": [{"path": "record.body.user", "exists": True}]},
            event={"type": "t", "subject": "s"},
        ),
    ]
    result = same_in_c_and_python(rules, request)
    assert [orjson.loads(e.payload)["data"] for e in result.events] == [{"user": "alice"}, {}]


# --- the pieces ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=700), st.binary(max_size=300), st.integers(1, 64), st.binary(max_size=16))
def test_hasher_digests_are_hashlibs(first: bytes, more: bytes, size: int, person: bytes) -> None:
    ours, theirs = (
        _native.Hasher(first, digest_size=size, person=person),
        hashlib.blake2b(first, digest_size=size, person=person),
    )
    fork, their_fork = ours.copy(), theirs.copy()
    fork.update(more)
    their_fork.update(more)
    assert (ours.digest(), fork.digest(), fork.hexdigest()) == (
        theirs.digest(),
        their_fork.digest(),
        their_fork.hexdigest(),
    )
    assert ours.digest_size == size


@given(
    st.integers(0, 2**64 - 1)
    | st.integers(0, 18 * 10**9).map(lambda s: s * 10**9)
    | st.integers(0, 18 * 10**12).map(lambda s: s * 10**6)
)
def test_times_are_format_times(ns: int) -> None:
    assert _native.format_time(ns) == format_time(ns)


@given(st.binary(min_size=16, max_size=16))
def test_uuids_are_format_uuid8s(digest: bytes) -> None:
    assert _native.uuid8(digest) == format_uuid8(digest)


def test_the_switch_turns_c_off() -> None:
    with native_off():
        assert not native.available()
        assert isinstance(native.blake2b(b"", digest_size=16, person=b"p"), type(hashlib.blake2b()))
    assert native.available()


@given(
    st.sampled_from(["NumberDataPoint", "HistogramDataPoint", "ExponentialHistogramDataPoint"]),
    attribute_lists,
    st.integers(0, 2**64 - 1),
)
def test_stream_keys_and_attributes_are_pythons(kind: str, attrs: list[tuple[str, Any]], time: int) -> None:
    """Cumulative stream keys are stored state: C must make exactly the Python bytes."""
    point = getattr(metrics_pb2, kind)(time_unix_nano=time, start_time_unix_nano=time // 3)
    point.attributes.extend(kvs(attrs))
    metric = _native.Hasher(b"metric", digest_size=16, person=b"otlp-meter.st.v1")
    kv_list, attributes = delta.point_attributes(point)
    expected = (delta.stream_key(metric, kv_list), attributes)
    number = point.DESCRIPTOR.fields_by_name["attributes"].number
    assert _native.stream_key(metric, point.SerializeToString(), number, delta.KEY_PREFIX) == expected
    assert delta.stream(metric, point) == expected
    with native_off():  # a hashlib hasher: the Python path
        in_python = hashlib.blake2b(b"metric", digest_size=16, person=b"otlp-meter.st.v1")
        assert delta.stream(in_python, point) == expected


def test_a_build_from_other_sources_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale in-tree build (its ABI is not the one these sources expect) leaves everything to Python."""
    import importlib

    monkeypatch.setattr(_native, "ABI", native.ABI - 1)
    try:
        reloaded = importlib.reload(native)
        assert reloaded.module is None
        assert not reloaded.available()
    finally:
        monkeypatch.undo()
        importlib.reload(native)
    assert native.module is _native
