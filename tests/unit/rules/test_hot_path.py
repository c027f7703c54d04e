"""What the fast paths must keep exactly: attribute semantics, stream keys, delta points, payloads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    HistogramDataPoint,
    NumberDataPoint,
)

from otlp_meter.events import kept_bytes
from otlp_meter.rules import compile_rule
from otlp_meter.rules.attributes import any_value, read_attributes, select, value_of
from otlp_meter.rules.delta import KEY_PREFIX, point_attributes, stream_key
from otlp_meter.rules.model import RuleModel
from otlp_meter.rules.views import EVERY_KEY, NO_KEY, Wanted
from tests.unit.rules.otlp import (
    RECEIVED,
    T0,
    attributes,
    data_of,
    engine,
    events,
    log_record,
    logs_request,
    metric,
    metrics_request,
    rule,
)

READ_DUP = rule(
    event={
        "data": {
            "dup": {"path": "attributes.dup", "default": "none"},
            "body_dup": {"path": "record.body.dup", "default": "none"},
            "res_dup": {"path": "resource.attributes.dup", "default": "none"},
        }
    }
)


def with_duplicates(*values: AnyValue) -> list[KeyValue]:
    return [KeyValue(key="other", value=AnyValue(int_value=1))] + [
        KeyValue(key="dup", value=v) for v in values
    ]


def text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


# --- attributes: one pass over the list, only the keys rules read ----------------------------------


def test_of_duplicate_keys_the_last_wins_in_record_body_and_resource_attributes() -> None:
    record = log_record()
    record.attributes.extend(with_duplicates(text("first"), text("last")))
    record.body.kvlist_value.values.extend(with_duplicates(text("first"), text("last")))
    request = logs_request(record)
    request.resource_logs[0].resource.attributes.extend(with_duplicates(text("first"), text("last")))
    [event] = events(engine(READ_DUP).map_logs(request, RECEIVED))
    assert event["data"] == {"dup": "last", "body_dup": "last", "res_dup": "last"}


def test_a_last_duplicate_without_a_value_reads_as_no_value() -> None:
    record = log_record()
    record.attributes.extend(with_duplicates(text("first"), AnyValue()))
    record.body.kvlist_value.values.extend(with_duplicates(text("first"), AnyValue()))
    assert data_of(READ_DUP, record) == {"dup": "none", "body_dup": "none", "res_dup": "none"}


def test_missing_attributes_and_a_body_that_is_no_map_read_as_no_value() -> None:
    assert data_of(READ_DUP, log_record({"unrelated": 1}, body="text")) == {
        "dup": "none",
        "body_dup": "none",
        "res_dup": "none",
    }


@pytest.mark.parametrize(
    "value",
    [7, -(2**63), 2**63 - 1, 2.5, True, False, "", "é€😀", b"\x00\xff", [1, "a", None], {"k": {"n": [True]}}],
)
def test_every_kind_of_value_reads_as_the_protobuf_api_converts_it(value: Any) -> None:
    r = rule(
        event={"data": {"v": {"path": "attributes.v", "default": "none"}, "b": {"path": "record.body.v"}}}
    )
    data = data_of(r, log_record({"v": value, "x": "y"}, body={"v": value}))
    expected = "AP8=" if isinstance(value, bytes) else value  # bytes: base64, as OTLP/JSON shows them
    assert data == {"v": expected, "b": expected}


def test_rules_read_only_the_keys_they_name() -> None:
    compiled = compile_rule(
        RuleModel.model_validate(
            rule(
                match={"where": [{"path": ["attributes.a", "record.body.b"], "exists": True}]},
                event={
                    "subject": {"path": ["resource.attributes.r", "scope.attributes.s", "attributes.c"]},
                    "data": {"whole": {"path": "attributes"}},
                },
            )
        )
    )
    assert compiled.wanted == Wanted(
        frozenset({"a", "c"}), frozenset({"r"}), frozenset({"s"}), frozenset({"b"})
    )
    union = Wanted.union([compiled.wanted, Wanted(frozenset({"d"}), frozenset(), frozenset(), frozenset())])
    assert union.record == frozenset({"a", "c", "d"})
    assert Wanted.union([compiled.wanted, EVERY_KEY]).record is None
    assert Wanted.union([]) == NO_KEY


def test_a_whole_attribute_map_still_has_every_attribute() -> None:
    r = rule(event={"data": {"all": {"path": "attributes"}, "a": {"path": "attributes.a"}}})
    record = log_record({"a": 1, "b": "x", "c": None})
    assert data_of(r, record) == {"all": {"a": 1, "b": "x"}, "a": 1}


def test_select_reads_wanted_keys_or_all() -> None:
    kvs = attributes({"a": 1, "b": "x", "c": None})
    assert select(kvs, frozenset({"b", "z"})) == {"b": "x"}
    assert select(kvs, None) == {"a": 1, "b": "x", "c": None}


def test_in_with_only_text_options_matches_text_only() -> None:
    r = rule(match={"where": [{"path": "attributes.m", "in": ["GET", "1", "true"]}]})
    rules = engine(r)
    for value, matched in (
        ("GET", True),
        ("1", True),
        ("PUT", False),
        (1, False),
        (True, False),
        (None, False),
    ):
        result = rules.map_logs(logs_request(log_record({"m": value})), RECEIVED)
        assert len(result.events) == matched, value


# --- data points: attributes read from their bytes --------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.sampled_from(["a", "b", "customer.id", "", "é", "k" * 130])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=6), st.one_of(st.none(), st.frozensets(KEYS)))
def test_point_attributes_read_from_bytes_are_what_select_reads(
    pairs: list[tuple[str, Any]], keys: Any
) -> None:
    point = NumberDataPoint(time_unix_nano=T0, as_int=1)
    for key, value in pairs:
        point.attributes.add(key=key).value.CopyFrom(any_value_of(value))
    serialized = point.SerializeToString(deterministic=True)
    assert read_attributes(point, serialized, keys) == select(point.attributes, keys)
    for kv in point.attributes:
        raw = kv.value.SerializeToString(deterministic=True)
        assert repr(value_of(raw)) == repr(any_value(kv.value))  # repr: -0.0 and 0.0 differ


def any_value_of(value: Any) -> AnyValue:
    [kv] = attributes({"x": value})
    return kv.value


def test_a_key_value_protobuf_sets_aside_is_still_read() -> None:
    unknown = b"\xa8\x06\x07"  # a field this version does not know
    point = NumberDataPoint(time_unix_nano=T0)
    point.attributes.add().MergeFromString(KeyValue(key="a", value=text("x")).SerializeToString() + unknown)
    point.attributes.add(key="b").value.MergeFromString(AnyValue(int_value=3).SerializeToString() + unknown)
    assert read_attributes(point, point.SerializeToString(), None) == {"a": "x", "b": 3}


# --- ids and payloads ------------------------------------------------------------------------------


def test_payload_bytes_are_a_copy_of_what_orjson_writes() -> None:
    payload = orjson.dumps({"a": [1, "é"]})
    copied = kept_bytes(payload)
    assert copied == payload
    assert type(copied) is bytes


def test_points_sharing_a_time_and_points_that_do_not_get_their_own_times() -> None:
    r = rule(signal="metrics", event={"data": {"v": {"path": "point.value"}}})
    points = [{"value": i + 1, "time_unix_nano": T0 + (i // 2) * 1_000_000} for i in range(5)]
    result = engine(r).map_metrics(metrics_request(metric("m", "gauge", *points)), RECEIVED)
    assert [e["time"] for e in events(result)] == [
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.001Z",
        "2024-01-01T00:00:00.001Z",
        "2024-01-01T00:00:00.002Z",
    ]


# --- cumulative streams: keys and delta points -----------------------------------------------------

ODD_ATTRIBUTES = {"z": 1, "é" * 70: "a key of 140 bytes", "": "empty key", "a": {"k": [1, "x"]}}


def test_stream_keys_are_the_documented_hash_and_are_pinned() -> None:
    usage = {
        "name": "usage",
        "match": {"signal": "metrics"},
        "event": {"type": "usage", "subject": "c", "data": {"v": {"path": "point.value"}}},
    }
    point = {"value": 5, "start_time_unix_nano": T0, "time_unix_nano": T0 + 10**9, "attrs": ODD_ATTRIBUTES}
    m = metric("usage", "sum", point, unit="1")
    m.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    request = metrics_request(m, resource={"service.name": "s"})
    rules = engine(usage)
    result = rules.map_metrics(request, T0, rules.stream_states(None, T0 - 1))
    [key] = [k for k in result.state_updates if k != b"delta/first-start"]

    def frame(data: bytes) -> bytes:
        return len(data).to_bytes(8, "little") + data

    resource_metrics = request.resource_metrics[0]
    scope_metrics = resource_metrics.scope_metrics[0]
    digest = hashlib.blake2b(digest_size=16, person=b"otlp-meter.st.v1")
    for part in (
        resource_metrics.resource.SerializeToString(deterministic=True),
        scope_metrics.scope.SerializeToString(deterministic=True),
        b"usage",
        b"1",
        b"sum",
        *(
            kv.SerializeToString(deterministic=True)
            for kv in sorted(scope_metrics.metrics[0].sum.data_points[0].attributes, key=lambda kv: kv.key)
        ),
    ):
        digest.update(frame(part))
    assert key == KEY_PREFIX + digest.digest()
    # Changing this value forgets every stream's state: each would bill its first point again.
    assert key == b'delta/M\x9dy\xc7\xfas\\"\x8e\xe5\xec\xd5\xe8\n\xd5\x80'
    assert [e.id for e in result.events] == ["d9778ff9-d878-8d41-8e67-c23f91f97023"]


def test_stream_keys_do_not_depend_on_attribute_order() -> None:
    forward = NumberDataPoint(attributes=attributes(ODD_ATTRIBUTES))
    backward = NumberDataPoint(attributes=list(reversed(attributes(ODD_ATTRIBUTES))))
    metric_hasher = hashlib.blake2b(b"metric", digest_size=16)
    assert stream_key(metric_hasher, point_attributes(forward)[0]) == stream_key(
        metric_hasher, point_attributes(backward)[0]
    )


@pytest.mark.parametrize("point_type", [NumberDataPoint, HistogramDataPoint])
def test_point_attributes_are_what_the_protobuf_api_gives(point_type: type[Any]) -> None:
    # A KeyValue and an AnyValue with fields this version does not know (a newer producer), and
    # an unknown field on the point itself.
    unknown = b"\xa8\x06\x07"
    point = point_type(time_unix_nano=5, start_time_unix_nano=1)
    point.attributes.add().MergeFromString(KeyValue(key="b", value=text("x")).SerializeToString() + unknown)
    point.attributes.add(key="a").value.MergeFromString(AnyValue(int_value=3).SerializeToString() + unknown)
    point.attributes.extend(attributes(ODD_ATTRIBUTES))
    point.attributes.add(key="a", value=text("duplicate"))
    point = point_type.FromString(point.SerializeToString() + unknown)

    kvs, field = point_attributes(point)
    assert kvs == [kv.SerializeToString(deterministic=True) for kv in point.attributes]
    rebuilt = point_type.FromString(field)
    expected = point_type()
    expected.attributes.extend(point.attributes)
    assert rebuilt.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


# --- start-up ----------------------------------------------------------------------------------


def test_the_cel_library_is_imported_only_for_rules_with_an_expression() -> None:
    script = """
import sys
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
RulesEngine.from_config(RulesConfig())  # every shipped pack: none has an expression
print("cel" in sys.modules)
rule = {"name": "r", "match": {"signal": "logs", "expr": "true"}, "event": {"type": "t", "subject": "s"}}
RulesEngine.from_config(RulesConfig(packs=[], inline=[RuleModel.model_validate(rule)]))
print("cel" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
