"""Event ids are deterministic; event times are RFC 3339 UTC."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson
import pytest

from otlp_meter.events import format_time
from otlp_meter.rules.values import parse_rfc3339
from tests.unit.rules.otlp import (
    RECEIVED,
    T0,
    engine,
    events,
    log_record,
    logs_request,
    map_one,
    metric,
    metrics_request,
    reasons,
    rule,
)

TWO_RULES = engine(rule("first", continue_=True), rule("second"))


def ids_of(request: Any, rules: Any = TWO_RULES, received: int = RECEIVED) -> list[str]:
    return [event["id"] for event in events(rules.map_logs(request, received))]


# --- ids -----------------------------------------------------------------------------------------


def test_ids_are_version_8_uuids() -> None:
    for event_id in ids_of(logs_request(log_record({"a": 1}))):
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (8, uuid.RFC_4122, event_id)


def test_same_request_twice_gives_the_same_ids() -> None:
    def request() -> Any:
        return logs_request(log_record({"a": 1}), log_record({"a": 2}), resource={"service.name": "s"})

    assert ids_of(request()) == ids_of(request())
    assert ids_of(request(), received=RECEIVED) == ids_of(request(), received=RECEIVED + 10**9)


def test_id_is_the_documented_hash_and_is_pinned() -> None:
    request = logs_request(log_record({"a": 1}), resource={"service.name": "s"})
    [first, _] = ids_of(request)

    def frame(data: bytes) -> bytes:
        return len(data).to_bytes(8, "little") + data

    resource_logs = request.resource_logs[0]
    scope_logs = resource_logs.scope_logs[0]
    digest = hashlib.blake2b(digest_size=16, person=b"otlp-meter.id.v1")
    for part in (
        resource_logs.resource.SerializeToString(deterministic=True),
        scope_logs.scope.SerializeToString(deterministic=True),
        b"logs",
        scope_logs.log_records[0].SerializeToString(deterministic=True),
        b"first",
    ):
        digest.update(frame(part))
    raw = bytearray(digest.digest())
    raw[6], raw[8] = (raw[6] & 0x0F) | 0x80, (raw[8] & 0x3F) | 0x80
    assert first == str(uuid.UUID(bytes=bytes(raw)))
    # Changing this value changes every id: OpenMeter would count re-sent usage again.
    assert first == "3584717b-bf2b-8cb8-b97f-315a126433cb"


def test_two_rules_on_one_record_give_different_ids() -> None:
    first, second = ids_of(logs_request(log_record({"a": 1})))
    assert first != second


def test_different_records_give_different_ids() -> None:
    variants = [
        logs_request(log_record({"a": 1})),
        logs_request(log_record({"a": 2})),
        logs_request(log_record({"a": 1}, time=T0 + 1)),
        logs_request(log_record({"a": 1}, body="x")),
        logs_request(log_record({"a": 1}), resource={"host": "b"}),
        logs_request(log_record({"a": 1}), scope=("other", "1.0.0")),
        logs_request(log_record({"a": 1}), scope_attrs={"k": 1}),
    ]
    all_ids = [event_id for request in variants for event_id in ids_of(request)]
    assert len(set(all_ids)) == len(all_ids)


def test_identical_records_are_one_event_by_design() -> None:
    # Byte-identical records under the same resource and scope are what a retried export looks like.
    first, _, again, _ = ids_of(logs_request(log_record({"a": 1}), log_record({"a": 1})))
    assert first == again


def test_position_in_the_batch_does_not_change_the_id() -> None:
    a, b = log_record({"a": 1}), log_record({"a": 2})
    assert set(ids_of(logs_request(a, b))) == set(ids_of(logs_request(b, a)))
    assert set(ids_of(logs_request(a))) <= set(ids_of(logs_request(b, a)))


def test_metric_point_ids_depend_on_metric_and_point() -> None:
    def point_ids(*metrics: Any) -> list[str]:
        result = engine(rule(signal="metrics")).map_metrics(metrics_request(*metrics), RECEIVED)
        return [event["id"] for event in events(result)]

    one = point_ids(metric("m", "sum", {"value": 1}))
    assert one == point_ids(metric("m", "sum", {"value": 1}))
    others = [
        *point_ids(metric("m", "sum", {"value": 2})),
        *point_ids(metric("n", "sum", {"value": 1})),
        *point_ids(metric("m", "gauge", {"value": 1})),
        *point_ids(metric("m", "sum", {"value": 1, "attrs": {"k": "v"}})),
    ]
    assert len({*one, *others}) == 5


def test_id_from_a_path_overrides_the_hash() -> None:
    event_rule = rule(event={"id": {"path": "attributes.event.id"}})
    result = map_one(event_rule, log_record({"event.id": "order-17"}))
    assert [e["id"] for e in events(result)] == ["order-17"]


# --- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (T0, "2024-01-01T00:00:00Z"),
        (T0 + 120_000_000, "2024-01-01T00:00:00.120Z"),
        (T0 + 123_456_000, "2024-01-01T00:00:00.123456Z"),
        (T0 + 123_456_789, "2024-01-01T00:00:00.123456789Z"),
        (T0 + 1, "2024-01-01T00:00:00.000000001Z"),
        (0, "1970-01-01T00:00:00Z"),
        (2**63 - 1, "2262-04-11T23:47:16.854775807Z"),
    ],
)
def test_format_time(ns: int, text: str) -> None:
    assert format_time(ns) == text
    assert parse_rfc3339(text) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2024-01-01T01:00:00+01:00", T0),
        ("2023-12-31T19:00:00.5-05:00", T0 + 500_000_000),
        ("2024-01-01t00:00:00.1234567891z", T0 + 123_456_789),
    ],
)
def test_parse_rfc3339_with_offsets_and_long_fractions(text: str, ns: int) -> None:
    assert parse_rfc3339(text) == ns


def event_time(record: Any, event: dict[str, Any] | None = None) -> str:
    [out] = events(map_one(rule(event=event or {}), record))
    return str(out["time"])


def test_default_time_is_the_record_time_then_observed_time_then_receive_time() -> None:
    assert event_time(log_record(time=T0 + 1_000_000, observed=T0 + 9)) == "2024-01-01T00:00:00.001Z"
    assert event_time(log_record(time=0, observed=T0 + 9)) == "2024-01-01T00:00:00.000000009Z"
    assert event_time(log_record(time=0)) == "2024-06-01T00:00:00Z"


def test_default_time_of_a_metric_point_is_its_time() -> None:
    request = metrics_request(
        metric("m", "gauge", {"value": 1, "time_unix_nano": T0 + 7_000}, {"value": 2, "time_unix_nano": 0})
    )
    result = engine(rule(signal="metrics")).map_metrics(request, RECEIVED)
    assert [e["time"] for e in events(result)] == ["2024-01-01T00:00:00.000007Z", "2024-06-01T00:00:00Z"]


def test_time_from_a_path_takes_nanoseconds_or_rfc3339_text() -> None:
    at = {"time": {"path": "attributes.at"}}
    assert event_time(log_record({"at": T0 + 5_000_000}), at) == "2024-01-01T00:00:05Z"[:-2] + "0.005Z"
    assert event_time(log_record({"at": "2024-01-01T02:00:00+02:00"}), at) == "2024-01-01T00:00:00Z"
    assert (
        event_time(log_record(observed=T0), {"time": {"path": "record.observed_time"}})
        == "2024-01-01T00:00:00Z"
    )
    assert event_time(log_record(), {"time": "2025-05-05T05:05:05.5Z"}) == "2025-05-05T05:05:05.500Z"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("yesterday", "time: not an RFC 3339 time: 'yesterday'"),
        (
            "2024-02-30T00:00:00Z",
            "time: not an RFC 3339 time: '2024-02-30T00:00:00Z' (day is out of range for month)",
        ),
        (-1, "time: time -1 ns is outside 1970..9999"),
        ("1969-12-31T23:59:59Z", "time: time -1000000000 ns is outside 1970..9999"),
        (True, "time: must be a Unix timestamp or RFC 3339 text, got True"),
    ],
)
def test_bad_time_rejects(value: Any, reason: str) -> None:
    result = map_one(rule(event={"time": {"path": "attributes.at"}}), log_record({"at": value}))
    assert reasons(result) == [reason]


# --- time_ms (the queue's dedupe keys are ordered by it) ----------------------------------------


def times_ms(result: Any) -> list[tuple[int, int]]:
    """(time_ms, the payload's time in ms) of each event: they must agree."""
    return [(e.time_ms, parse_rfc3339(orjson.loads(e.payload)["time"]) // 1_000_000) for e in result.events]


def test_every_event_carries_its_time_in_milliseconds() -> None:
    request = logs_request(
        log_record({"at": T0 + 5_123_456_789}, time=T0 + 1_999_999),
        log_record({"at": "2024-01-01T02:00:00.25+02:00"}, time=0, observed=0),
    )
    for event in (
        {},  # the default time: record time, then receive time
        {"time": {"path": "attributes.at"}},
        {"time": "2025-05-05T05:05:05.5+01:00"},
        {"time": {"path": "attributes.missing", "default": "2025-05-05T05:05:05Z"}},
        {"time": {"path": "attributes.missing", "optional": True}},  # falls back to the default time
    ):
        pairs = times_ms(engine(rule(event=event)).map_logs(request, RECEIVED))
        assert len(pairs) == 2
        assert all(a == b > 0 for a, b in pairs), (event, pairs)
    default = times_ms(engine(rule()).map_logs(request, RECEIVED))
    assert [ms for ms, _ in default] == [T0 // 10**6 + 1, RECEIVED // 10**6]


def test_metric_points_sharing_a_time_carry_it_in_milliseconds() -> None:
    request = metrics_request(
        metric(
            "m",
            "gauge",
            {"value": 1, "time_unix_nano": T0 + 7_000_000},
            {"value": 2, "time_unix_nano": T0 + 7_000_000},
            {"value": 3, "time_unix_nano": 0},
        )
    )
    result = engine(rule(signal="metrics")).map_metrics(request, RECEIVED)
    assert [e.time_ms for e in result.events] == [T0 // 10**6 + 7, T0 // 10**6 + 7, RECEIVED // 10**6]
