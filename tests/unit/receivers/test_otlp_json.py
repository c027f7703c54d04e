"""OTLP/JSON: what the receivers accept, how they refuse, and what they answer.

The reference for decoding is protojson (``json_format``) with the OTLP deviations: traceId/spanId
are hex, not base64. Everything ``json_format`` writes for a request, with the ids in hex, decodes to
the same message; malformed input raises DecodeError whose message starts with the JSON path.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from otlp_meter.errors import DecodeError
from otlp_meter.receivers.otlp_json import (
    MAX_VALUE_DEPTH,
    decode_logs_request,
    decode_metrics_request,
    decode_traces_request,
    encode_response,
    encode_status,
)

LogsRequest = logs_service_pb2.ExportLogsServiceRequest
MetricsRequest = metrics_service_pb2.ExportMetricsServiceRequest
AnyValue = common_pb2.AnyValue
KeyValue = common_pb2.KeyValue

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
U32_MAX = 2**32 - 1
SAFETY_NET = "invalid OTLP/JSON (unexpected"  # the message of errors the walk did not anticipate


def _field_names(message: Any, seen: set[str]) -> Iterator[str]:
    if message.full_name in seen:
        return
    seen.add(message.full_name)
    for field in message.fields:
        yield field.name
        yield field.json_name
        if field.message_type is not None:
            yield from _field_names(field.message_type, seen)


#: Every key of every object in a logs or metrics request, camelCase and snake_case.
KNOWN_KEYS = sorted(
    {
        *_field_names(LogsRequest.DESCRIPTOR, set()),
        *_field_names(MetricsRequest.DESCRIPTOR, set()),
    }
)


# --- encoding requests the way the spec says: protojson, with hex ids ----------------------------


def _hex_ids(node: Any) -> Any:
    """json_format writes bytes as base64; OTLP/JSON wants traceId/spanId in hex."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("traceId", "spanId", "trace_id", "span_id") and isinstance(value, str):
                out[key] = base64.b64decode(value).hex()
            else:
                out[key] = _hex_ids(value)
        return out
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


def to_dict(message: Message, *, snake_case: bool = False, enum_names: bool = False) -> Any:
    """The OTLP/JSON form of ``message``; ``snake_case``/``enum_names`` give the protojson variants."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=snake_case, use_integers_for_enums=not enum_names
    )
    return _hex_ids(document)


def to_otlp_json(message: Message, *, snake_case: bool = False, enum_names: bool = False) -> bytes:
    return orjson.dumps(to_dict(message, snake_case=snake_case, enum_names=enum_names))


def dumps(document: Any) -> bytes:
    return orjson.dumps(document)


# --- a request with every field -----------------------------------------------------------------


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def every_kind_of_value() -> list[KeyValue]:
    nested = AnyValue(
        kvlist_value=common_pb2.KeyValueList(
            values=[
                kv("inner", AnyValue(array_value=common_pb2.ArrayValue(values=[AnyValue(int_value=-1)]))),
                kv("empty", AnyValue()),
            ]
        )
    )
    return [
        kv("string", AnyValue(string_value='héllo \u2603 "quoted"')),
        kv("empty.string", AnyValue(string_value="")),
        kv("true", AnyValue(bool_value=True)),
        kv("false", AnyValue(bool_value=False)),
        kv("int.max", AnyValue(int_value=I64_MAX)),
        kv("int.min", AnyValue(int_value=I64_MIN)),
        kv("int.zero", AnyValue(int_value=0)),
        kv("double", AnyValue(double_value=-1.25e-300)),
        kv("double.zero", AnyValue(double_value=0.0)),
        kv("double.inf", AnyValue(double_value=math.inf)),
        kv("double.-inf", AnyValue(double_value=-math.inf)),
        kv("bytes", AnyValue(bytes_value=b"\x00\xff\xfe binary")),
        kv("array", AnyValue(array_value=common_pb2.ArrayValue(values=[AnyValue(string_value="a"), nested]))),
        kv("array.empty", AnyValue(array_value=common_pb2.ArrayValue())),
        kv("kvlist", nested),
        kv("kvlist.empty", AnyValue(kvlist_value=common_pb2.KeyValueList())),
        kv("unset", AnyValue()),
        KeyValue(key="no.value"),
    ]


def fill_resource_and_scope(resource: Any, scope: Any) -> None:
    resource.attributes.extend(
        [kv("service.name", AnyValue(string_value="checkout")), *every_kind_of_value()]
    )
    resource.dropped_attributes_count = 3
    resource.entity_refs.add(
        schema_url="https://opentelemetry.io/schemas/1.30.0",
        type="service",
        id_keys=["service.name", "service.namespace"],
        description_keys=["service.version"],
    )
    scope.name = "io.opentelemetry.usage"
    scope.version = "1.2.3"
    scope.attributes.extend(every_kind_of_value()[:3])
    scope.dropped_attributes_count = 1


def rich_logs_request() -> LogsRequest:
    request = LogsRequest()
    resource_logs = request.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
    scope_logs = resource_logs.scope_logs.add(schema_url="https://example.com/scope-schema")
    fill_resource_and_scope(resource_logs.resource, scope_logs.scope)
    scope_logs.log_records.add(
        time_unix_nano=U64_MAX,
        observed_time_unix_nano=1_700_000_000_123_456_789,
        severity_number=logs_pb2.SEVERITY_NUMBER_WARN2,
        severity_text="WARN",
        body=AnyValue(kvlist_value=common_pb2.KeyValueList(values=every_kind_of_value())),
        attributes=every_kind_of_value(),
        dropped_attributes_count=U32_MAX,
        flags=0x01,
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        event_name="usage.recorded",
    )
    scope_logs.log_records.add(body=AnyValue(string_value="just a body"))
    scope_logs.log_records.add(body=AnyValue())  # a body that is present but empty
    scope_logs.log_records.add(severity_number=99)  # an enum value this proto version does not name
    resource_logs.scope_logs.add()  # an empty scope: allowed, just useless
    request.resource_logs.add()
    return request


def exemplars() -> list[metrics_pb2.Exemplar]:
    return [
        metrics_pb2.Exemplar(
            filtered_attributes=every_kind_of_value()[:4],
            time_unix_nano=1_700_000_000_000_000_001,
            as_double=0.5,
            span_id=SPAN_ID,
            trace_id=TRACE_ID,
        ),
        metrics_pb2.Exemplar(time_unix_nano=1, as_int=-7),
    ]


def rich_metrics_request() -> MetricsRequest:
    request = MetricsRequest()
    resource_metrics = request.resource_metrics.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
    scope_metrics = resource_metrics.scope_metrics.add(schema_url="https://example.com/scope-schema")
    fill_resource_and_scope(resource_metrics.resource, scope_metrics.scope)
    t0, t1 = 1_700_000_000_000_000_000, 1_700_000_060_000_000_000
    attrs = [kv("customer.id", AnyValue(string_value="c-1")), kv("tier", AnyValue(int_value=2))]

    gauge = scope_metrics.metrics.add(name="cpu.utilization", description="CPU", unit="1")
    gauge.metadata.extend([kv("meta", AnyValue(string_value="data"))])
    gauge.gauge.data_points.add(attributes=attrs, time_unix_nano=t1, as_double=0.25, exemplars=exemplars())
    gauge.gauge.data_points.add(time_unix_nano=t1, as_double=math.inf)
    gauge.gauge.data_points.add(time_unix_nano=t1, as_double=0.0)  # oneof set to a default

    total = scope_metrics.metrics.add(name="api.calls", unit="{call}")
    total.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    total.sum.is_monotonic = True
    total.sum.data_points.add(
        attributes=attrs, start_time_unix_nano=t0, time_unix_nano=t1, as_int=I64_MAX, flags=1
    )
    total.sum.data_points.add(start_time_unix_nano=t0, time_unix_nano=t1, as_int=I64_MIN)
    total.sum.data_points.add(start_time_unix_nano=t0, time_unix_nano=t1, as_int=0)

    histogram = scope_metrics.metrics.add(name="latency", unit="ms")
    histogram.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    histogram.histogram.data_points.add(
        attributes=attrs,
        start_time_unix_nano=t0,
        time_unix_nano=t1,
        count=U64_MAX,
        sum=1234.5,
        bucket_counts=[0, 1, U64_MAX],
        explicit_bounds=[-math.inf, 10.0, 100.0],
        exemplars=exemplars(),
        flags=1,
        min=0.0,  # optional: present even though it is the default
        max=900.0,
    )
    histogram.histogram.data_points.add(time_unix_nano=t1, count=0)  # no sum/min/max at all

    exponential = scope_metrics.metrics.add(name="latency.exp", unit="s")
    exponential.exponential_histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    exponential.exponential_histogram.data_points.add(
        attributes=attrs,
        start_time_unix_nano=t0,
        time_unix_nano=t1,
        count=10,
        sum=-0.5,
        scale=-3,
        zero_count=2,
        positive=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=-2, bucket_counts=[1, 2, U64_MAX]),
        negative=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=5, bucket_counts=[4]),
        flags=1,
        exemplars=exemplars(),
        min=-1.0,
        max=2.0,
        zero_threshold=1e-9,
    )
    point = exponential.exponential_histogram.data_points.add(time_unix_nano=t1)
    point.positive.SetInParent()  # present, empty buckets

    summary = scope_metrics.metrics.add(name="rpc.duration", unit="ms")
    summary.summary.data_points.add(
        attributes=attrs,
        start_time_unix_nano=t0,
        time_unix_nano=t1,
        count=3,
        sum=12.5,
        quantile_values=[
            metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=0.0, value=1.0),
            metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=math.inf),
        ],
        flags=1,
    )

    empty_data = scope_metrics.metrics.add(name="empty.gauge")
    empty_data.gauge.SetInParent()
    scope_metrics.metrics.add(name="no.data")
    return request


# --- round trips --------------------------------------------------------------------------------


def test_every_log_field_round_trips_through_protojson_with_hex_ids() -> None:
    request = rich_logs_request()
    assert decode_logs_request(to_otlp_json(request)) == request


def test_every_metric_field_round_trips_through_protojson_with_hex_ids() -> None:
    request = rich_metrics_request()
    assert decode_metrics_request(to_otlp_json(request)) == request


def test_protojson_enum_names_are_accepted_too() -> None:
    """The spec says integers; protojson and the Collector also read names, and so do we."""
    logs, metrics = rich_logs_request(), rich_metrics_request()
    assert b'"SEVERITY_NUMBER_WARN2"' in to_otlp_json(logs, enum_names=True)
    assert decode_logs_request(to_otlp_json(logs, enum_names=True)) == logs
    assert decode_metrics_request(to_otlp_json(metrics, enum_names=True)) == metrics


def test_trace_and_span_ids_are_hex_in_any_case() -> None:
    record = {"traceId": "5B8EFFF798038103d269b633813fc60c", "spanId": "EEE19B7EC3C1B174"}
    body = dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]})
    decoded = decode_logs_request(body).resource_logs[0].scope_logs[0].log_records[0]
    assert decoded.trace_id == TRACE_ID
    assert decoded.span_id == SPAN_ID


def test_exemplar_ids_are_hex() -> None:
    exemplar = {"traceId": TRACE_ID.hex(), "spanId": SPAN_ID.hex(), "asInt": "1"}
    metric = {"gauge": {"dataPoints": [{"exemplars": [exemplar]}]}}
    body = dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})
    decoded = decode_metrics_request(body).resource_metrics[0].scope_metrics[0].metrics[0]
    assert decoded.gauge.data_points[0].exemplars[0].trace_id == TRACE_ID
    assert decoded.gauge.data_points[0].exemplars[0].span_id == SPAN_ID


def test_empty_id_means_unset() -> None:
    body = dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "", "spanId": ""}]}]}]})
    assert decode_logs_request(body) == LogsRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord()])])
        ]
    )


@pytest.mark.parametrize("body", [b"{}", b'{"resourceLogs": []}', b'{"resourceLogs": null}', b" {} \n"])
def test_an_empty_request_is_valid(body: bytes) -> None:
    assert decode_logs_request(body) == LogsRequest()
    assert decode_metrics_request(body.replace(b"Logs", b"Metrics")) == MetricsRequest()


def test_whatever_is_accepted_can_be_read_back_from_protobuf_binary() -> None:
    for request in (rich_logs_request(), rich_metrics_request()):
        decoded = (decode_logs_request if isinstance(request, LogsRequest) else decode_metrics_request)(
            to_otlp_json(request)
        )
        assert type(decoded).FromString(decoded.SerializeToString()) == request


# --- what protojson also accepts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_factory", "decode"),
    [(rich_logs_request, decode_logs_request), (rich_metrics_request, decode_metrics_request)],
)
def test_original_snake_case_field_names_are_accepted(
    request_factory: Callable[[], Message], decode: Callable[[bytes], Message]
) -> None:
    request = request_factory()
    body = to_otlp_json(request, snake_case=True)
    assert b"time_unix_nano" in body
    assert decode(body) == request


def test_the_same_field_under_both_names_is_refused() -> None:
    record = {"timeUnixNano": "1", "time_unix_nano": "2"}
    body = dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]})
    with pytest.raises(DecodeError) as caught:
        decode_logs_request(body)
    assert str(caught.value) == (
        "resourceLogs[0].scopeLogs[0].logRecords[0].timeUnixNano: "
        "given twice (as 'timeUnixNano' and 'time_unix_nano')"
    )


def log_record(**fields: Any) -> bytes:
    return dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [fields]}]}]})


def first_record(body: bytes) -> logs_pb2.LogRecord:
    return decode_logs_request(body).resource_logs[0].scope_logs[0].log_records[0]


def number_point(**fields: Any) -> bytes:
    metric = {"name": "m", "sum": {"dataPoints": [fields]}}
    return dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})


def first_point(body: bytes) -> metrics_pb2.NumberDataPoint:
    return decode_metrics_request(body).resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1700000000000000000", 1_700_000_000_000_000_000),
        (1_700_000_000_000_000_000, 1_700_000_000_000_000_000),
        (str(U64_MAX), U64_MAX),
        (U64_MAX, U64_MAX),
        ("0", 0),
        ("00042", 42),
        (1e18, 10**18),  # an integral JSON number in exponent form
    ],
)
def test_uint64_fields_take_strings_and_numbers(written: Any, expected: int) -> None:
    assert first_record(log_record(timeUnixNano=written)).time_unix_nano == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [("-5", -5), (-5, -5), (str(I64_MIN), I64_MIN), (I64_MAX, I64_MAX), ("12", 12), (3.0, 3)],
)
def test_int64_fields_take_strings_and_numbers(written: Any, expected: int) -> None:
    assert first_point(number_point(asInt=written)).as_int == expected
    attribute = {"key": "k", "value": {"intValue": written}}
    assert first_record(log_record(attributes=[attribute])).attributes[0].value.int_value == expected


def test_32_bit_integers_also_take_strings() -> None:
    record = first_record(log_record(flags="1", droppedAttributesCount=str(U32_MAX)))
    assert (record.flags, record.dropped_attributes_count) == (1, U32_MAX)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("SEVERITY_NUMBER_WARN", logs_pb2.SEVERITY_NUMBER_WARN),
        (13, logs_pb2.SEVERITY_NUMBER_WARN),
        (99, 99),  # proto3 enums are open: a newer sender's value is kept
        (-1, -1),
    ],
)
def test_enums_take_integers_and_names(written: Any, expected: int) -> None:
    assert first_record(log_record(severityNumber=written)).severity_number == expected


def test_aggregation_temporality_by_name() -> None:
    metric = {"histogram": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA"}}
    body = dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})
    decoded = decode_metrics_request(body).resource_metrics[0].scope_metrics[0].metrics[0]
    assert decoded.histogram.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


@pytest.mark.parametrize(
    ("written", "check"),
    [
        ("NaN", math.isnan),
        ("Infinity", lambda x: x == math.inf),
        ("-Infinity", lambda x: x == -math.inf),
        ("1.5", lambda x: x == 1.5),
        ("-2e-3", lambda x: x == -0.002),
        (7, lambda x: x == 7.0 and isinstance(x, float)),
        (-0.0, lambda x: x == 0 and math.copysign(1, x) < 0),
    ],
)
def test_doubles_take_numbers_and_the_special_strings(written: Any, check: Callable[[float], bool]) -> None:
    assert check(first_point(number_point(asDouble=written)).as_double)
    attribute = {"key": "k", "value": {"doubleValue": written}}
    assert check(first_record(log_record(attributes=[attribute])).attributes[0].value.double_value)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("AP8gYWJj", b"\x00\xff abc"),
        ("AP8gYWI=", b"\x00\xff ab"),
        ("AP8gYWI", b"\x00\xff ab"),
        ("AP8gYQ==", b"\x00\xff a"),
        ("AP8gYQ", b"\x00\xff a"),
        ("/+8=", b"\xff\xef"),
        ("_-8", b"\xff\xef"),
        ("", b""),
    ],
)
def test_bytes_values_are_base64_standard_or_url_safe_padding_optional(written: str, expected: bytes) -> None:
    body = first_record(log_record(body={"bytesValue": written})).body
    assert body.WhichOneof("value") == "bytes_value"
    assert body.bytes_value == expected


def walk_objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_objects(item)


@pytest.mark.parametrize(
    ("request_factory", "decode"),
    [(rich_logs_request, decode_logs_request), (rich_metrics_request, decode_metrics_request)],
)
def test_unknown_fields_are_ignored_everywhere(
    request_factory: Callable[[], Message], decode: Callable[[bytes], Message]
) -> None:
    request = request_factory()
    document = to_dict(request)
    for obj in list(walk_objects(document)):
        obj["futureField"] = {"nested": [1, "two", {"stringValue": 3}]}
        obj["another_future_field"] = "x"
    assert decode(dumps(document)) == request


@pytest.mark.parametrize(
    ("request_factory", "decode"),
    [(rich_logs_request, decode_logs_request), (rich_metrics_request, decode_metrics_request)],
)
def test_null_is_the_same_as_absent(
    request_factory: Callable[[], Message], decode: Callable[[bytes], Message]
) -> None:
    request = request_factory()
    document = to_dict(request)
    for obj in list(walk_objects(document)):
        for key in KNOWN_KEYS:  # every field name any OTLP object has, camelCase and snake_case
            obj.setdefault(key, None)
    assert decode(dumps(document)) == request


def test_null_members_and_fields_leave_things_unset() -> None:
    record = first_record(
        log_record(
            timeUnixNano=None,
            body={"stringValue": None},
            attributes=[{"key": "k", "value": None}, {"key": None, "value": {"intValue": None}}],
            traceId=None,
        )
    )
    assert record == logs_pb2.LogRecord(
        body=AnyValue(), attributes=[KeyValue(key="k"), KeyValue(value=AnyValue())]
    )


def test_empty_objects_keep_their_presence() -> None:
    record = first_record(log_record(body={"arrayValue": {}}, attributes=[{"key": "a", "value": {}}]))
    assert record.body.WhichOneof("value") == "array_value"
    assert record.attributes[0].HasField("value")
    assert record.attributes[0].value.WhichOneof("value") is None


def test_a_value_nested_to_the_limit_is_accepted_and_survives_protobuf_binary() -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(MAX_VALUE_DEPTH - 1):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    exemplar = {"filteredAttributes": [{"key": "deep", "value": value}]}  # the deepest place a value lives
    metric = {"sum": {"dataPoints": [{"exemplars": [exemplar]}]}}
    request = decode_metrics_request(dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]}))
    assert MetricsRequest.FromString(request.SerializeToString()) == request


# --- what is refused, and how -------------------------------------------------------------------


def refusal(decode: Callable[[bytes], object], body: bytes) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(body)
    return str(caught.value)


RECORD = "resourceLogs[0].scopeLogs[0].logRecords[0]"
POINT = "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0]"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "invalid JSON: "),
        (b"not json", "invalid JSON: "),
        (b'{"resourceLogs": [}', "invalid JSON: "),
        (b'{"a": "\xff"}', "invalid JSON: "),  # not UTF-8
        (b'{"a": NaN}', "invalid JSON: "),
        (b"[" * 2000 + b"]" * 2000, "invalid JSON: "),  # a depth bomb stops in the parser
        (b"[]", "<root>: expected a JSON object"),
        (b"null", "<root>: expected a JSON object"),
        (b'"resourceLogs"', "<root>: expected a JSON object"),
    ],
)
def test_bodies_that_are_not_a_json_object(body: bytes, message: str) -> None:
    for decode in (decode_logs_request, decode_metrics_request, decode_traces_request):
        assert refusal(decode, body).startswith(message)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"resourceLogs": {}}, "resourceLogs: expected an array, got an object"),
        ({"resourceLogs": [None]}, "resourceLogs[0]: expected an object, got null"),
        ({"resourceLogs": [{"resource": []}]}, "resourceLogs[0].resource: expected an object, got an array"),
        ({"resourceLogs": [{"schemaUrl": 1}]}, "resourceLogs[0].schemaUrl: expected a string, got a number"),
        (
            {"resourceLogs": [{"scopeLogs": [{}, {"logRecords": [{}, {}, {}, {"timeUnixNano": "x"}]}]}]},
            'resourceLogs[0].scopeLogs[1].logRecords[3].timeUnixNano: expected an integer, got "x"',
        ),
        (
            {"resourceLogs": [{"scopeLogs": [{"scope": {"name": ["x"]}}]}]},
            "resourceLogs[0].scopeLogs[0].scope.name: expected a string, got an array",
        ),
        (
            {"resourceLogs": [{"resource": {"attributes": [{"key": "a", "value": {"intValue": "1.5"}}]}}]},
            'resourceLogs[0].resource.attributes[0].value.intValue: expected an integer, got "1.5"',
        ),
        (
            {"resourceLogs": [{"resource": {"droppedAttributesCount": -1}}]},
            "resourceLogs[0].resource.droppedAttributesCount: -1 is out of range for uint32",
        ),
        (
            {"resourceLogs": [{"resource": {"entityRefs": [{"idKeys": ["a", 1]}]}}]},
            "resourceLogs[0].resource.entityRefs[0].idKeys[1]: expected a string, got a number",
        ),
    ],
)
def test_structure_errors_name_the_path(document: Any, message: str) -> None:
    assert refusal(decode_logs_request, dumps(document)) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timeUnixNano": "abc"}, 'timeUnixNano: expected an integer, got "abc"'),
        ({"timeUnixNano": "1.5"}, 'timeUnixNano: expected an integer, got "1.5"'),
        ({"timeUnixNano": 1.5}, "timeUnixNano: expected an integer, got 1.5"),
        ({"timeUnixNano": "1e3"}, 'timeUnixNano: expected an integer, got "1e3"'),
        ({"timeUnixNano": "+5"}, 'timeUnixNano: expected an integer, got "+5"'),
        ({"timeUnixNano": " 5"}, 'timeUnixNano: expected an integer, got " 5"'),
        ({"timeUnixNano": "1_000"}, 'timeUnixNano: expected an integer, got "1_000"'),
        ({"timeUnixNano": "\uff15"}, 'timeUnixNano: expected an integer, got "\uff15"'),  # a fullwidth 5
        ({"timeUnixNano": ""}, 'timeUnixNano: expected an integer, got ""'),
        ({"timeUnixNano": True}, "timeUnixNano: expected an integer, got a boolean"),
        ({"timeUnixNano": -1}, "timeUnixNano: -1 is out of range for uint64"),
        ({"timeUnixNano": "-1"}, "timeUnixNano: -1 is out of range for uint64"),
        ({"timeUnixNano": str(2**64)}, f"timeUnixNano: {2**64} is out of range for uint64"),
        ({"timeUnixNano": "9" * 5000}, f'timeUnixNano: expected an integer, got "{"9" * 36}...'),
        ({"timeUnixNano": 1e30}, "timeUnixNano: expected an integer, got 1e+30"),
        ({"observedTimeUnixNano": {}}, "observedTimeUnixNano: expected an integer, got an object"),
        (
            {"severityNumber": "SEVERITY_NUMBER_LOUD"},
            'severityNumber: unknown enum value "SEVERITY_NUMBER_LOUD"',
        ),
        ({"severityNumber": 2**31}, "severityNumber: 2147483648 is out of range for int32"),
        ({"severityText": 5}, "severityText: expected a string, got a number"),
        ({"flags": 2**32}, "flags: 4294967296 is out of range for uint32"),
        ({"traceId": "xyz"}, 'traceId: expected 32 hex digits, got "xyz"'),
        (
            {"traceId": "5b8efff798038103d269b633813fc60"},
            'traceId: expected 32 hex digits, got "5b8efff798038103d269b633813fc60"',
        ),
        (
            {"traceId": "W47/95gDgQPSabYzgT/GDA=="},
            'traceId: expected 32 hex digits, got "W47/95gDgQPSabYzgT/GDA=="',
        ),  # base64
        (
            {"traceId": "5b 8e ff f7 98 03 81 03 d2 69 b6"},
            'traceId: expected 32 hex digits, got "5b 8e ff f7 98 03 81 03 d2 69 b6"',
        ),
        (
            {"traceId": "5b8efff798038103d269b633813fc6zz"},
            'traceId: expected 32 hex digits, got "5b8efff798038103d269b633813fc6zz"',
        ),
        ({"spanId": TRACE_ID.hex()}, f'spanId: expected 16 hex digits, got "{TRACE_ID.hex()}"'),
        ({"spanId": 12}, "spanId: expected 16 hex digits, got 12"),
        ({"body": "text"}, "body: expected an object, got a string"),
        ({"body": {"stringValue": 1}}, "body.stringValue: expected a string, got a number"),
        ({"body": {"boolValue": "true"}}, "body.boolValue: expected true or false, got a string"),
        ({"body": {"doubleValue": "fast"}}, 'body.doubleValue: expected a number, got "fast"'),
        ({"body": {"doubleValue": "1e999"}}, 'body.doubleValue: expected a number, got "1e999"'),
        ({"body": {"doubleValue": "nan"}}, 'body.doubleValue: expected a number, got "nan"'),
        ({"body": {"bytesValue": "!!!!"}}, 'body.bytesValue: expected base64, got "!!!!"'),
        ({"body": {"bytesValue": "a"}}, 'body.bytesValue: expected base64, got "a"'),
        (
            {"body": {"stringValue": "a", "intValue": 1}},
            "body: only one value may be set, got stringValue, intValue",
        ),
        ({"body": {"arrayValue": []}}, "body.arrayValue: expected an object, got an array"),
        (
            {"body": {"arrayValue": {"values": {}}}},
            "body.arrayValue.values: expected an array, got an object",
        ),
        (
            {"body": {"arrayValue": {"values": [{}, 1]}}},
            "body.arrayValue.values[1]: expected an object, got a number",
        ),
        (
            {"body": {"kvlistValue": {"values": [{"key": 1}]}}},
            "body.kvlistValue.values[0].key: expected a string, got a number",
        ),
        ({"attributes": {}}, "attributes: expected an array, got an object"),
        ({"attributes": ["k"]}, "attributes[0]: expected an object, got a string"),
        (
            {"attributes": [{"key": "k", "value": "v"}]},
            "attributes[0].value: expected an object, got a string",
        ),
        (
            {"attributes": [{"key": "k", "value": {"intValue": "x"}}]},
            'attributes[0].value.intValue: expected an integer, got "x"',
        ),
        ({"eventName": False}, "eventName: expected a string, got a boolean"),
    ],
)
def test_log_record_field_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    assert refusal(decode_logs_request, log_record(**fields)) == f"{RECORD}.{message}"


def test_values_nested_past_the_limit_are_refused() -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(MAX_VALUE_DEPTH):
        value = {"arrayValue": {"values": [value]}}
    message = refusal(decode_logs_request, log_record(body=value))
    inner = ".arrayValue.values[0]" * (MAX_VALUE_DEPTH - 1)
    assert message == f"{RECORD}.body{inner}.arrayValue: values nested deeper than {MAX_VALUE_DEPTH} levels"


def metric(**fields: Any) -> bytes:
    return dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "m", **fields}]}]}]})


METRIC = "resourceMetrics[0].scopeMetrics[0].metrics[0]"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            dumps({"resourceMetrics": [{"scopeMetrics": {}}]}),
            "resourceMetrics[0].scopeMetrics: expected an array, got an object",
        ),
        (metric(gauge={}, sum={}), f"{METRIC}: a metric has one kind of data, got both sum and gauge"),
        (metric(unit=1), f"{METRIC}.unit: expected a string, got a number"),
        (metric(metadata=[{"key": 1}]), f"{METRIC}.metadata[0].key: expected a string, got a number"),
        (metric(sum={"isMonotonic": 1}), f"{METRIC}.sum.isMonotonic: expected true or false, got a number"),
        (
            metric(sum={"aggregationTemporality": "SOMETIMES"}),
            f'{METRIC}.sum.aggregationTemporality: unknown enum value "SOMETIMES"',
        ),
        (number_point(asDouble=1.0, asInt="1"), f"{POINT}: a value is asDouble or asInt, not both"),
        (number_point(asInt=str(2**63)), f"{POINT}.asInt: {2**63} is out of range for int64"),
        (number_point(asInt="\uff11\uff12"), f'{POINT}.asInt: expected an integer, got "\uff11\uff12"'),
        (number_point(asInt="--1"), f'{POINT}.asInt: expected an integer, got "--1"'),
        (number_point(asInt=-(2.0**63)), f"{POINT}.asInt: expected an integer, got -9.223372036854776e+18"),
        (
            number_point(startTimeUnixNano="yesterday"),
            f'{POINT}.startTimeUnixNano: expected an integer, got "yesterday"',
        ),
        (
            number_point(attributes=[{"key": "a", "value": {"boolValue": 0}}]),
            f"{POINT}.attributes[0].value.boolValue: expected true or false, got a number",
        ),
        (
            number_point(exemplars=[{}, {"spanId": "zz"}]),
            f'{POINT}.exemplars[1].spanId: expected 16 hex digits, got "zz"',
        ),
        (
            number_point(exemplars=[{"filteredAttributes": [1]}]),
            f"{POINT}.exemplars[0].filteredAttributes[0]: expected an object, got a number",
        ),
        (
            metric(histogram={"dataPoints": [{"bucketCounts": ["1", "x"]}]}),
            f'{METRIC}.histogram.dataPoints[0].bucketCounts[1]: expected an integer, got "x"',
        ),
        (
            metric(histogram={"dataPoints": [{"bucketCounts": "1"}]}),
            f"{METRIC}.histogram.dataPoints[0].bucketCounts: expected an array, got a string",
        ),
        (
            metric(histogram={"dataPoints": [{"explicitBounds": [1, None]}]}),
            f"{METRIC}.histogram.dataPoints[0].explicitBounds[1]: expected a number, got null",
        ),
        (
            metric(histogram={"dataPoints": [{"min": "low"}]}),
            f'{METRIC}.histogram.dataPoints[0].min: expected a number, got "low"',
        ),
        (
            metric(exponentialHistogram={"dataPoints": [{"scale": 2**31}]}),
            f"{METRIC}.exponentialHistogram.dataPoints[0].scale: 2147483648 is out of range for int32",
        ),
        (
            metric(exponentialHistogram={"dataPoints": [{"positive": []}]}),
            f"{METRIC}.exponentialHistogram.dataPoints[0].positive: expected an object, got an array",
        ),
        (
            metric(exponentialHistogram={"dataPoints": [{"negative": {"bucketCounts": [-1]}}]}),
            f"{METRIC}.exponentialHistogram.dataPoints[0].negative.bucketCounts[0]: "
            "-1 is out of range for uint64",
        ),
        (
            metric(exponentialHistogram={"dataPoints": [{"zeroThreshold": True}]}),
            f"{METRIC}.exponentialHistogram.dataPoints[0].zeroThreshold: expected a number, got true",
        ),
        (
            metric(summary={"dataPoints": [{"quantileValues": [{"quantile": "p99"}]}]}),
            f'{METRIC}.summary.dataPoints[0].quantileValues[0].quantile: expected a number, got "p99"',
        ),
        (
            metric(summary={"dataPoints": [{"count": 1.5}]}),
            f"{METRIC}.summary.dataPoints[0].count: expected an integer, got 1.5",
        ),
    ],
)
def test_metric_errors_name_the_path(body: bytes, message: str) -> None:
    assert refusal(decode_metrics_request, body) == message


def test_decode_error_is_a_permanent_error() -> None:
    from otlp_meter.errors import PermanentError

    with pytest.raises(PermanentError):
        decode_logs_request(b"[")


# --- traces are accepted and dropped ------------------------------------------------------------


def test_traces_only_need_to_be_a_json_object() -> None:
    decode_traces_request(b'{"resourceSpans": [{"anything": "goes"}]}')  # no exception: accepted
    decode_traces_request(b"{}")


# --- responses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (logs_service_pb2.ExportLogsServiceResponse(), b"{}"),
        (metrics_service_pb2.ExportMetricsServiceResponse(), b"{}"),
        (trace_service_pb2.ExportTraceServiceResponse(), b"{}"),
        (
            logs_service_pb2.ExportLogsServiceResponse(
                partial_success=logs_service_pb2.ExportLogsPartialSuccess(
                    rejected_log_records=3, error_message="3 records matched no usable rule"
                )
            ),
            b'{"partialSuccess":{"rejectedLogRecords":"3",'
            b'"errorMessage":"3 records matched no usable rule"}}',
        ),
        (
            metrics_service_pb2.ExportMetricsServiceResponse(
                partial_success=metrics_service_pb2.ExportMetricsPartialSuccess(
                    rejected_data_points=2**62, error_message='ünïcode "quoted"'
                )
            ),
            b'{"partialSuccess":{"rejectedDataPoints":"4611686018427387904",'
            b'"errorMessage":"\xc3\xbcn\xc3\xafcode \\"quoted\\""}}',
        ),
        (
            logs_service_pb2.ExportLogsServiceResponse(
                partial_success=logs_service_pb2.ExportLogsPartialSuccess(error_message="a warning")
            ),
            b'{"partialSuccess":{"errorMessage":"a warning"}}',
        ),
        (
            logs_service_pb2.ExportLogsServiceResponse(
                partial_success=logs_service_pb2.ExportLogsPartialSuccess()
            ),
            b'{"partialSuccess":{}}',
        ),
    ],
)
def test_responses_are_otlp_json(response: Message, expected: bytes) -> None:
    assert encode_response(response) == expected
    assert orjson.loads(expected) == json_format.MessageToDict(response)


def test_the_response_encoder_writes_requests_as_the_spec_says() -> None:
    request = rich_logs_request()
    body = encode_response(request)
    assert orjson.loads(body) == to_dict(
        request
    )  # hex ids, int64 strings, NaN/Infinity strings, base64 bytes
    assert decode_logs_request(body) == request


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (status_pb2.Status(), b"{}"),
        (
            status_pb2.Status(code=3, message="resourceLogs[0]: expected an object, got null"),
            b'{"code":3,"message":"resourceLogs[0]: expected an object, got null"}',
        ),
        (status_pb2.Status(message="no code"), b'{"message":"no code"}'),
    ],
)
def test_statuses_are_json(status: status_pb2.Status, expected: bytes) -> None:
    assert encode_status(status) == expected


def test_status_details_carry_their_type() -> None:
    status = status_pb2.Status(code=14, message="queue full")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=5)))
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="a.b", description="bad")]
        )
    )
    assert encode_status(status) == (
        b'{"code":14,"message":"queue full","details":['
        b'{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"5s"},'
        b'{"@type":"type.googleapis.com/google.rpc.BadRequest",'
        b'"fieldViolations":[{"field":"a.b","description":"bad"}]}]}'
    )


def test_a_status_detail_of_an_unknown_type_still_encodes() -> None:
    status = status_pb2.Status(code=13)
    status.details.add(type_url="type.googleapis.com/vendor.Mystery", value=b"\x01\x02")
    status.details.add(type_url="type.googleapis.com/google.rpc.RetryInfo", value=b"\xff\xff")  # corrupt
    assert encode_status(status) == (
        b'{"code":13,"details":['
        b'{"@type":"type.googleapis.com/vendor.Mystery","value":"AQI="},'
        b'{"@type":"type.googleapis.com/google.rpc.RetryInfo","value":"//8="}]}'
    )


# --- properties ---------------------------------------------------------------------------------

_texts = st.text(max_size=12)
_any_values = st.recursive(
    st.one_of(
        _texts.map(lambda s: AnyValue(string_value=s)),
        st.booleans().map(lambda b: AnyValue(bool_value=b)),
        st.integers(I64_MIN, I64_MAX).map(lambda i: AnyValue(int_value=i)),
        st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
        st.binary(max_size=12).map(lambda b: AnyValue(bytes_value=b)),
        st.just(AnyValue()),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda vs: AnyValue(array_value=common_pb2.ArrayValue(values=vs))),
        st.lists(st.builds(KeyValue, key=_texts, value=children), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value=common_pb2.KeyValueList(values=kvs))
        ),
    ),
    max_leaves=8,
)
_attributes = st.lists(st.builds(KeyValue, key=_texts, value=_any_values), max_size=4)
_log_records = st.builds(
    logs_pb2.LogRecord,
    time_unix_nano=st.integers(0, U64_MAX),
    observed_time_unix_nano=st.integers(0, U64_MAX),
    severity_number=st.integers(I32_MIN, I32_MAX),
    severity_text=_texts,
    body=st.none() | _any_values,
    attributes=_attributes,
    dropped_attributes_count=st.integers(0, U32_MAX),
    flags=st.integers(0, U32_MAX),
    trace_id=st.just(b"") | st.binary(min_size=16, max_size=16),
    span_id=st.just(b"") | st.binary(min_size=8, max_size=8),
    event_name=_texts,
)
_logs_requests = st.builds(
    LogsRequest,
    resource_logs=st.lists(
        st.builds(
            logs_pb2.ResourceLogs,
            resource=st.none()
            | st.builds(
                resource_pb2.Resource, attributes=_attributes, dropped_attributes_count=st.integers(0, 9)
            ),
            scope_logs=st.lists(
                st.builds(
                    logs_pb2.ScopeLogs,
                    scope=st.none() | st.builds(common_pb2.InstrumentationScope, name=_texts, version=_texts),
                    log_records=st.lists(_log_records, max_size=3),
                    schema_url=_texts,
                ),
                max_size=2,
            ),
            schema_url=_texts,
        ),
        max_size=2,
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_logs_requests, snake_case=st.booleans(), enum_names=st.booleans())
def test_property_any_log_request_round_trips(
    request: LogsRequest, snake_case: bool, enum_names: bool
) -> None:
    assert decode_logs_request(to_otlp_json(request, snake_case=snake_case, enum_names=enum_names)) == request
    assert decode_logs_request(encode_response(request)) == request


_u64s = st.integers(0, U64_MAX)
_doubles = st.floats(allow_nan=False)
_exemplars = st.lists(
    st.builds(
        metrics_pb2.Exemplar,
        filtered_attributes=_attributes,
        time_unix_nano=_u64s,
        span_id=st.just(b"") | st.binary(min_size=8, max_size=8),
        trace_id=st.just(b"") | st.binary(min_size=16, max_size=16),
    )
    | st.builds(metrics_pb2.Exemplar, as_int=st.integers(I64_MIN, I64_MAX))
    | st.builds(metrics_pb2.Exemplar, as_double=_doubles),
    max_size=2,
)
_number_points = st.lists(
    st.builds(
        metrics_pb2.NumberDataPoint,
        attributes=_attributes,
        start_time_unix_nano=_u64s,
        time_unix_nano=_u64s,
        exemplars=_exemplars,
        flags=st.integers(0, U32_MAX),
    )
    | st.builds(metrics_pb2.NumberDataPoint, as_int=st.integers(I64_MIN, I64_MAX))
    | st.builds(metrics_pb2.NumberDataPoint, as_double=_doubles),
    max_size=3,
)
_histogram_points = st.lists(
    st.builds(
        metrics_pb2.HistogramDataPoint,
        count=_u64s,
        sum=st.none() | _doubles,
        bucket_counts=st.lists(_u64s, max_size=4),
        explicit_bounds=st.lists(_doubles, max_size=3),
        min=st.none() | _doubles,
        max=st.none() | _doubles,
        exemplars=_exemplars,
    ),
    max_size=2,
)
_buckets = st.builds(
    metrics_pb2.ExponentialHistogramDataPoint.Buckets,
    offset=st.integers(I32_MIN, I32_MAX),
    bucket_counts=st.lists(_u64s, max_size=3),
)
_temporality = st.integers(0, 2)
_metrics = st.one_of(
    st.builds(
        metrics_pb2.Metric, name=_texts, gauge=st.builds(metrics_pb2.Gauge, data_points=_number_points)
    ),
    st.builds(
        metrics_pb2.Metric,
        name=_texts,
        unit=_texts,
        metadata=_attributes,
        sum=st.builds(
            metrics_pb2.Sum,
            data_points=_number_points,
            aggregation_temporality=_temporality,
            is_monotonic=st.booleans(),
        ),
    ),
    st.builds(
        metrics_pb2.Metric,
        description=_texts,
        histogram=st.builds(
            metrics_pb2.Histogram, data_points=_histogram_points, aggregation_temporality=_temporality
        ),
    ),
    st.builds(
        metrics_pb2.Metric,
        exponential_histogram=st.builds(
            metrics_pb2.ExponentialHistogram,
            data_points=st.lists(
                st.builds(
                    metrics_pb2.ExponentialHistogramDataPoint,
                    scale=st.integers(I32_MIN, I32_MAX),
                    zero_count=_u64s,
                    positive=st.none() | _buckets,
                    negative=st.none() | _buckets,
                    zero_threshold=_doubles,
                    sum=st.none() | _doubles,
                ),
                max_size=2,
            ),
        ),
    ),
    st.builds(
        metrics_pb2.Metric,
        summary=st.builds(
            metrics_pb2.Summary,
            data_points=st.lists(
                st.builds(
                    metrics_pb2.SummaryDataPoint,
                    count=_u64s,
                    sum=_doubles,
                    quantile_values=st.lists(
                        st.builds(
                            metrics_pb2.SummaryDataPoint.ValueAtQuantile, quantile=_doubles, value=_doubles
                        ),
                        max_size=2,
                    ),
                ),
                max_size=2,
            ),
        ),
    ),
    st.builds(metrics_pb2.Metric, name=_texts),
)
_metrics_requests = st.builds(
    MetricsRequest,
    resource_metrics=st.lists(
        st.builds(
            metrics_pb2.ResourceMetrics,
            scope_metrics=st.lists(
                st.builds(metrics_pb2.ScopeMetrics, metrics=st.lists(_metrics, max_size=3)), max_size=2
            ),
        ),
        max_size=2,
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_metrics_requests, snake_case=st.booleans(), enum_names=st.booleans())
def test_property_any_metrics_request_round_trips(
    request: MetricsRequest, snake_case: bool, enum_names: bool
) -> None:
    body = to_otlp_json(request, snake_case=snake_case, enum_names=enum_names)
    assert decode_metrics_request(body) == request
    assert decode_metrics_request(encode_response(request)) == request


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(I64_MIN, U64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        ["", "0", "-1", "1.5", "NaN", "Infinity", "SEVERITY_NUMBER_WARN", TRACE_ID.hex(), "AQI="]
    ),
    st.text(max_size=6),
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=3), children, max_size=6)
    ),
    max_leaves=40,
)


def _never_anything_but_decode_error(body: bytes) -> None:
    """Decoding either succeeds or raises DecodeError, and never through the safety net."""
    for decode in (decode_logs_request, decode_metrics_request, decode_traces_request):
        problem = ""
        try:
            decode(body)
        except DecodeError as exc:
            problem = str(exc)
        assert not problem.startswith(SAFETY_NET), problem


@settings(max_examples=400, deadline=None)
@given(document=st.dictionaries(st.sampled_from(KNOWN_KEYS), _json_values, max_size=4))
def test_property_arbitrary_json_raises_only_decode_error(document: dict[str, Any]) -> None:
    _never_anything_but_decode_error(orjson.dumps(document))


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*path, index))


_valid_documents = [to_dict(rich_logs_request()), to_dict(rich_metrics_request())]


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_property_a_valid_request_with_one_part_replaced_raises_only_decode_error(
    data: st.DataObject,
) -> None:
    document = orjson.loads(orjson.dumps(data.draw(st.sampled_from(_valid_documents))))
    path = data.draw(st.sampled_from(list(_paths(document))[1:]))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = data.draw(_json_values)
    _never_anything_but_decode_error(orjson.dumps(document))


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64))
def test_property_arbitrary_bytes_raise_only_decode_error(body: bytes) -> None:
    _never_anything_but_decode_error(body)
