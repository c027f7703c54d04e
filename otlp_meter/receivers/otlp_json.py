"""OTLP/JSON codec: request bodies to protobuf messages, responses and statuses to JSON.

Decoding follows the OTLP/JSON encoding (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):
lowerCamelCase keys, ``traceId``/``spanId`` as hex, enums as integers, 64-bit integers as strings or
numbers, unknown fields ignored, ``null`` the same as absent. Like protojson and the Collector's pdata
we also accept the original snake_case field names and enum value names.

The body is parsed with ``orjson`` and walked by hand into the generated messages; ``json_format.Parse``
is 5-8x slower end to end and decodes ids as base64. Every problem with the input raises
:class:`~otlp_meter.errors.DecodeError` whose message starts with the JSON path, e.g.
``resourceLogs[0].scopeLogs[1].logRecords[3].timeUnixNano: expected an integer``.

Performance notes (measured, see ``benchmarks/otlp_json_bench.py``): building the upb messages is about
half the time and ``orjson.loads`` a fifth; each message has one small function that reads its known
camelCase keys with ``dict.get`` (faster than dispatching on every key);
an object with any other key (snake_case, unknown) is first rewritten to camelCase by ``_normalize``,
which keeps the common path free of per-key work. Paths are built only when something fails: an
internal ``_Invalid`` collects path components while it propagates (``try`` is free in 3.11+).
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import descriptor, json_format
from google.protobuf.message import Error as ProtobufError
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  (error_details: RetryInfo & co. resolve)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from otlp_meter.errors import DecodeError

__all__ = [
    "MAX_VALUE_DEPTH",
    "decode_logs_request",
    "decode_metrics_request",
    "decode_traces_request",
    "encode_response",
    "encode_status",
]

#: Deepest nesting of ``arrayValue``/``kvlistValue`` accepted (an attribute value or body is level 1).
#: It keeps the deepest message we can build (a kvlist inside an exemplar's attribute) below the
#: 100-level limit of the protobuf binary parser, so whatever we accept can be re-read from protobuf.
MAX_VALUE_DEPTH = 24

Json = Any  # what orjson.loads returns; narrowed with ``type(v) is ...`` checks


class _Invalid(Exception):
    """Internal: the input is wrong. ``parts`` is the JSON path, innermost component first."""

    def __init__(self, reason: str, *parts: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts = list(parts)

    def to_decode_error(self) -> DecodeError:
        path = ".".join(reversed(self.parts)) or "<root>"
        return DecodeError(f"{path}: {self.reason}")


def _load(body: bytes) -> dict[str, Json]:
    try:
        root = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    if type(root) is not dict:
        raise DecodeError("<root>: expected a JSON object")
    return root


def _decode(body: bytes, message: Message, fill: Callable[[Any, dict[str, Json]], None]) -> None:
    root = _load(body)
    try:
        fill(message, root)
    except _Invalid as exc:
        raise exc.to_decode_error() from None
    except (ValueError, TypeError, OverflowError) as exc:  # a protobuf setter refused a value we let through
        raise DecodeError(f"invalid OTLP/JSON (unexpected {type(exc).__name__}: {exc})") from None


def decode_logs_request(body: bytes) -> ExportLogsServiceRequest:
    """Decode an OTLP/JSON ``ExportLogsServiceRequest``; raise DecodeError naming the JSON path."""
    request = ExportLogsServiceRequest()
    _decode(body, request, _fill_logs_request)
    return request


def decode_metrics_request(body: bytes) -> ExportMetricsServiceRequest:
    """Decode an OTLP/JSON ``ExportMetricsServiceRequest``; raise DecodeError naming the JSON path."""
    # Deferred: otlp_json_metrics builds on the helpers below.
    from otlp_meter.receivers.otlp_json_metrics import fill_metrics_request

    request = ExportMetricsServiceRequest()
    _decode(body, request, fill_metrics_request)
    return request


def decode_traces_request(body: bytes) -> None:
    """Check that a traces body is a JSON object; traces are accepted and discarded."""
    _load(body)


# --- responses and statuses --------------------------------------------------------------------

_HEX_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_INT64_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
        descriptor.FieldDescriptor.TYPE_SINT64,
    }
)


def encode_response(message: Message) -> bytes:
    """Encode an ``Export*ServiceResponse`` (or any OTLP message) as OTLP/JSON, defaults omitted."""
    return orjson.dumps(_message_to_json(message))


def _message_to_json(message: Message) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for field, value in message.ListFields():
        if field.is_repeated:
            out[field.json_name] = [_value_to_json(field, item) for item in value]
        else:
            out[field.json_name] = _value_to_json(field, value)
    return out


def _value_to_json(field: descriptor.FieldDescriptor, value: Any) -> Json:
    kind = field.type
    if kind == descriptor.FieldDescriptor.TYPE_MESSAGE:
        return _message_to_json(value)
    if kind in _INT64_TYPES:
        return str(value)
    if kind == descriptor.FieldDescriptor.TYPE_BYTES:
        if field.name in _HEX_ID_FIELDS:
            return bytes(value).hex()
        return binascii.b2a_base64(value, newline=False).decode("ascii")
    if type(value) is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value  # bool, str, 32-bit integers, finite doubles, enums (as integers)


def encode_status(status: status_pb2.Status) -> bytes:
    """Encode a ``google.rpc.Status`` (an HTTP error body) as JSON, ``details`` as typed ``Any``."""
    out: dict[str, Json] = {}
    if status.code:
        out["code"] = status.code
    if status.message:
        out["message"] = status.message
    if status.details:
        out["details"] = [_detail_to_json(detail) for detail in status.details]
    return orjson.dumps(out)


def _detail_to_json(detail: Any) -> Json:
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, ValueError, KeyError, json_format.Error, ProtobufError):
        # A type this process cannot resolve: still say what it was rather than fail the error path.
        value = binascii.b2a_base64(detail.value, newline=False).decode("ascii")
        return {"@type": detail.type_url, "value": value}


# --- scalars ------------------------------------------------------------------------------------

_U32_MAX = (1 << 32) - 1
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_U64_MAX = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_RANGE_NAMES = {
    (0, _U32_MAX): "uint32",
    (_I32_MIN, _I32_MAX): "int32",
    (0, _U64_MAX): "uint64",
    (_I64_MIN, _I64_MAX): "int64",
}
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _u64(v: Json, name: str) -> int:
    """fixed64/uint64: a decimal string (the canonical form) or a JSON number."""
    if type(v) is str and v.isdecimal() and v.isascii() and len(v) <= 20:
        n = int(v)
        if n <= _U64_MAX:
            return n
    elif type(v) is int and 0 <= v <= _U64_MAX:
        return v
    return _int_slow(v, 0, _U64_MAX, name)


def _i64(v: Json, name: str) -> int:
    if type(v) is int and _I64_MIN <= v <= _I64_MAX:
        return v
    if type(v) is str and v.isdecimal() and v.isascii() and len(v) <= 18:
        return int(v)
    return _int_slow(v, _I64_MIN, _I64_MAX, name)


def _u32(v: Json, name: str) -> int:
    if type(v) is int and 0 <= v <= _U32_MAX:
        return v
    return _int_slow(v, 0, _U32_MAX, name)


def _i32(v: Json, name: str) -> int:
    if type(v) is int and _I32_MIN <= v <= _I32_MAX:
        return v
    return _int_slow(v, _I32_MIN, _I32_MAX, name)


def _int_slow(v: Json, lo: int, hi: int, name: str) -> int:
    if type(v) is int:
        n = v
    elif type(v) is str:
        digits = v[1:] if v.startswith("-") else v
        if not (digits.isdecimal() and digits.isascii() and len(digits) <= 40):
            raise _Invalid(f"expected an integer, got {_preview(v)}", name)
        n = int(v)
    elif type(v) is float:
        # orjson turns integers beyond 64 bits into floats; -2**63 as a float may be such a rounding.
        if not (v.is_integer() and -(2.0**63) < v < 2.0**64):
            raise _Invalid(f"expected an integer, got {_preview(v)}", name)
        n = int(v)
    else:
        raise _Invalid(f"expected an integer, got {_kind(v)}", name)
    if lo <= n <= hi:
        return n
    raise _Invalid(f"{n} is out of range for {_RANGE_NAMES[lo, hi]}", name)


def _double(v: Json, name: str) -> float:
    if type(v) is float:
        return v
    if type(v) is int:
        return float(v)
    if type(v) is str:
        special = _SPECIAL_DOUBLES.get(v)
        if special is not None:
            return special
        if _JSON_NUMBER.fullmatch(v):
            number = float(v)
            if math.isfinite(number):
                return number
    raise _Invalid(f"expected a number, got {_preview(v)}", name)


def _str(v: Json, name: str) -> str:
    if type(v) is str:
        return v
    raise _Invalid(f"expected a string, got {_kind(v)}", name)


def _bool(v: Json, name: str) -> bool:
    if v is True or v is False:
        return v
    raise _Invalid(f"expected true or false, got {_kind(v)}", name)


def _hex_id(v: Json, size: int, name: str) -> bytes:
    """traceId (16 bytes) / spanId (8 bytes): hex, case-insensitive; "" means unset."""
    if type(v) is str and len(v) == 2 * size:
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            pass
        else:
            if len(raw) == size:  # fromhex skips whitespace; "00 11 ..." must not pass
                return raw
    elif v == "":
        return b""
    raise _Invalid(f"expected {2 * size} hex digits, got {_preview(v)}", name)


_URLSAFE_TO_STD = str.maketrans("-_", "+/")


def _b64(v: Json, name: str) -> bytes:
    """bytes: standard or URL-safe base64, padding optional (as protojson accepts)."""
    if type(v) is str and v.isascii():
        s = v.translate(_URLSAFE_TO_STD)
        s += "=" * (-len(s) % 4)
        try:
            return binascii.a2b_base64(s, strict_mode=True)
        except binascii.Error:
            pass
    raise _Invalid(f"expected base64, got {_preview(v)}", name)


def _enum(v: Json, names: dict[str, int], name: str) -> Any:  # Any: the stubs type enums as NewTypes
    if type(v) is int and _I32_MIN <= v <= _I32_MAX:
        return v
    if type(v) is str:
        number = names.get(v)
        if number is None:
            raise _Invalid(f"unknown enum value {_preview(v)}", name)
        return number
    return _int_slow(v, _I32_MIN, _I32_MAX, name)


def _enum_names(enum: Any) -> dict[str, int]:
    """Name → number for a generated enum wrapper (for ``_enum``)."""
    return {value.name: value.number for value in enum.DESCRIPTOR.values}


def _kind(v: Json) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(v), "a number")


def _preview(v: Json) -> str:
    if type(v) in (dict, list):
        return _kind(v)
    text = orjson.dumps(v).decode()
    return text if len(text) <= 40 else text[:37] + "..."


# --- objects -----------------------------------------------------------------------------------


def _keys(message: type[Message]) -> tuple[frozenset[str], dict[str, str]]:
    """The camelCase keys of a message, and snake_case → camelCase for the names that differ."""
    fields = message.DESCRIPTOR.fields
    snake = {f.name: f.json_name for f in fields if f.name != f.json_name}
    return frozenset(f.json_name for f in fields), snake


def _normalize(d: dict[str, Json], snake: dict[str, str]) -> dict[str, Json]:
    """Slow path for objects with keys other than the camelCase ones: rename snake_case, drop nulls."""
    out: dict[str, Json] = {}
    for key, value in d.items():
        if value is None:
            continue
        camel = snake.get(key, key)
        if camel in out:
            raise _Invalid(f"given twice (as {camel!r} and {key!r})", camel)
        out[camel] = value
    return out


def _expect_object(d: Json, keys: frozenset[str], snake: dict[str, str]) -> dict[str, Json]:
    """``d`` as a dict whose known keys are camelCase (raise if it is not an object)."""
    if type(d) is not dict:
        raise _Invalid(f"expected an object, got {_kind(d)}")
    if d.keys() <= keys:
        return d
    return _normalize(d, snake)


def _fill_each(repeated: Any, items: Json, fill: Callable[[Any, Json], None], name: str) -> None:
    """Fill one new element of ``repeated`` per item of the JSON array ``items``."""
    if type(items) is not list:
        raise _Invalid(f"expected an array, got {_kind(items)}", name)
    add = repeated.add
    i = 0
    try:
        for i, item in enumerate(items):  # noqa: B007  (i names the failing element)
            fill(add(), item)
    except _Invalid as exc:
        exc.parts.append(f"{name}[{i}]")
        raise


def _fill_field(fill: Callable[[Any, Json], None], message: Any, d: Json, name: str) -> None:
    """Fill a singular message field, naming it in the path if that fails."""
    try:
        fill(message, d)
    except _Invalid as exc:
        exc.parts.append(name)
        raise


def _scalars(items: Json, convert: Callable[[Json, str], Any], name: str) -> list[Any]:
    """A JSON array of scalars (bucketCounts, explicitBounds, ...) converted one by one."""
    if type(items) is not list:
        raise _Invalid(f"expected an array, got {_kind(items)}", name)
    out: list[Any] = []
    append = out.append
    i = 0
    try:
        for i, item in enumerate(items):  # noqa: B007  (i names the failing element)
            append(convert(item, name))
    except _Invalid as exc:
        exc.parts[0] = f"{name}[{i}]"
        raise
    return out


def _u64s(items: Json, name: str) -> list[int]:
    """bucketCounts: the usual decimal strings are converted inline (a call per bucket cost ~10%)."""
    if type(items) is list:
        try:
            return [
                int(x) if type(x) is str and len(x) < 20 and x.isdecimal() and x.isascii() else _u64(x, name)
                for x in items
            ]
        except _Invalid:
            pass  # _scalars below finds the bad element again and names its index
    return _scalars(items, _u64, name)


def _doubles(items: Json, name: str) -> list[float]:
    """explicitBounds: floats pass through, anything else goes through ``_double``."""
    if type(items) is list:
        try:
            return [x if type(x) is float else _double(x, name) for x in items]
        except _Invalid:
            pass  # as in _u64s
    return _scalars(items, _double, name)


# --- AnyValue and attributes -------------------------------------------------------------------

_ANY_KEYS, _ANY_SNAKE = _keys(common_pb2.AnyValue)
_ARRAY_KEYS, _ARRAY_SNAKE = _keys(common_pb2.ArrayValue)
_KEY_VALUE_KEYS, _KEY_VALUE_SNAKE = _keys(common_pb2.KeyValue)


def _fill_any(av: Any, d: Json, depth: int) -> None:
    """An AnyValue: exactly one of its oneof keys (an object with none is an empty value)."""
    if type(d) is dict and len(d) == 1:
        for key, v in d.items():  # the one member; the common cases first, inlined
            if key == "stringValue" and type(v) is str:
                av.string_value = v
            elif key == "intValue" and v is not None:
                av.int_value = _i64(v, key)
            elif key == "doubleValue" and type(v) is float:
                av.double_value = v
            elif key == "boolValue" and (v is True or v is False):
                av.bool_value = v
            elif not _set_any(av, _ANY_SNAKE.get(key) or key, v, depth):
                av.SetInParent()
        return
    if type(d) is not dict:
        raise _Invalid(f"expected an object, got {_kind(d)}")
    d = _normalize(d, _ANY_SNAKE)
    present = [key for key in d if key in _ANY_KEYS]
    if len(present) > 1:
        raise _Invalid(f"only one value may be set, got {', '.join(present)}")
    if not (present and _set_any(av, present[0], d[present[0]], depth)):
        av.SetInParent()


def _set_any(av: Any, key: str, v: Json, depth: int) -> bool:
    """Set the AnyValue member ``key``; False if nothing was set (unknown key or null)."""
    if v is None:
        return False
    if key == "stringValue":
        av.string_value = _str(v, key)
    elif key == "intValue":
        av.int_value = _i64(v, key)
    elif key == "doubleValue":
        av.double_value = _double(v, key)
    elif key == "boolValue":
        av.bool_value = _bool(v, key)
    elif key == "arrayValue" or key == "kvlistValue":
        if depth >= MAX_VALUE_DEPTH:
            raise _Invalid(f"values nested deeper than {MAX_VALUE_DEPTH} levels", key)
        try:
            if key == "arrayValue":
                _fill_array(av.array_value, v, depth + 1)
            else:
                _fill_kvlist(av.kvlist_value, v, depth + 1)
        except _Invalid as exc:
            exc.parts.append(key)
            raise
    elif key == "bytesValue":
        av.bytes_value = _b64(v, key)
    elif key == "stringValueStrindex":
        av.string_value_strindex = _i32(v, key)
    else:
        return False
    return True


def _fill_array(array: Any, d: Json, depth: int) -> None:
    d = _expect_object(d, _ARRAY_KEYS, _ARRAY_SNAKE)
    array.SetInParent()
    values = d.get("values")
    if values is not None:
        _fill_each(array.values, values, lambda av, item: _fill_any(av, item, depth), "values")


def _fill_kvlist(kvlist: Any, d: Json, depth: int) -> None:
    d = _expect_object(d, _ARRAY_KEYS, _ARRAY_SNAKE)  # KeyValueList has the same single key, "values"
    kvlist.SetInParent()
    values = d.get("values")
    if values is not None:
        _fill_attributes(kvlist.values, values, "values", depth)


def _fill_attributes(repeated: Any, items: Json, name: str, depth: int = 1) -> None:
    """A JSON array of KeyValue into ``repeated`` (attributes, metadata, kvlistValue.values)."""
    if type(items) is not list:
        raise _Invalid(f"expected an array, got {_kind(items)}", name)
    add = repeated.add
    i = 0
    try:
        for i, kv in enumerate(items):  # noqa: B007  (i names the failing element)
            m = add()
            if type(kv) is dict and len(kv) == 2:
                key = kv.get("key")
                value = kv.get("value")
                if type(key) is str and type(value) is dict:
                    m.key = key
                    if len(value) == 1:  # the common case, inlined: a string value
                        s = value.get("stringValue")
                        if type(s) is str:
                            m.value.string_value = s
                            continue
                    try:
                        _fill_any(m.value, value, depth)
                    except _Invalid as exc:
                        exc.parts.append("value")
                        raise
                    continue
            _fill_key_value(m, kv, depth)
    except _Invalid as exc:
        exc.parts.append(f"{name}[{i}]")
        raise


def _fill_key_value(m: Any, d: Json, depth: int) -> None:
    d = _expect_object(d, _KEY_VALUE_KEYS, _KEY_VALUE_SNAKE)
    g = d.get
    if (v := g("key")) is not None:
        m.key = _str(v, "key")
    if (v := g("value")) is not None:
        _fill_field(lambda av, item: _fill_any(av, item, depth), m.value, v, "value")
    if (v := g("keyStrindex")) is not None:
        m.key_strindex = _i32(v, "keyStrindex")


# --- resource and scope ------------------------------------------------------------------------

_RESOURCE_KEYS, _RESOURCE_SNAKE = _keys(resource_pb2.Resource)
_ENTITY_REF_KEYS, _ENTITY_REF_SNAKE = _keys(common_pb2.EntityRef)
_SCOPE_KEYS, _SCOPE_SNAKE = _keys(common_pb2.InstrumentationScope)


def _fill_resource(resource: Any, d: Json) -> None:
    d = _expect_object(d, _RESOURCE_KEYS, _RESOURCE_SNAKE)
    resource.SetInParent()
    g = d.get
    if (v := g("attributes")) is not None:
        _fill_attributes(resource.attributes, v, "attributes")
    if (v := g("droppedAttributesCount")) is not None:
        resource.dropped_attributes_count = _u32(v, "droppedAttributesCount")
    if (v := g("entityRefs")) is not None:
        _fill_each(resource.entity_refs, v, _fill_entity_ref, "entityRefs")


def _fill_entity_ref(ref: Any, d: Json) -> None:
    d = _expect_object(d, _ENTITY_REF_KEYS, _ENTITY_REF_SNAKE)
    g = d.get
    if (v := g("schemaUrl")) is not None:
        ref.schema_url = _str(v, "schemaUrl")
    if (v := g("type")) is not None:
        ref.type = _str(v, "type")
    if (v := g("idKeys")) is not None:
        ref.id_keys.extend(_scalars(v, _str, "idKeys"))
    if (v := g("descriptionKeys")) is not None:
        ref.description_keys.extend(_scalars(v, _str, "descriptionKeys"))


def _fill_scope(scope: Any, d: Json) -> None:
    d = _expect_object(d, _SCOPE_KEYS, _SCOPE_SNAKE)
    scope.SetInParent()
    g = d.get
    if (v := g("name")) is not None:
        scope.name = _str(v, "name")
    if (v := g("version")) is not None:
        scope.version = _str(v, "version")
    if (v := g("attributes")) is not None:
        _fill_attributes(scope.attributes, v, "attributes")
    if (v := g("droppedAttributesCount")) is not None:
        scope.dropped_attributes_count = _u32(v, "droppedAttributesCount")


# --- logs --------------------------------------------------------------------------------------

_LOGS_REQUEST_KEYS, _LOGS_REQUEST_SNAKE = _keys(ExportLogsServiceRequest)
_RESOURCE_LOGS_KEYS, _RESOURCE_LOGS_SNAKE = _keys(logs_pb2.ResourceLogs)
_SCOPE_LOGS_KEYS, _SCOPE_LOGS_SNAKE = _keys(logs_pb2.ScopeLogs)
_LOG_RECORD_KEYS, _LOG_RECORD_SNAKE = _keys(logs_pb2.LogRecord)
_SEVERITY_NUMBERS = _enum_names(logs_pb2.SeverityNumber)


def _fill_logs_request(request: Any, d: Json) -> None:
    d = _expect_object(d, _LOGS_REQUEST_KEYS, _LOGS_REQUEST_SNAKE)
    if (v := d.get("resourceLogs")) is not None:
        _fill_each(request.resource_logs, v, _fill_resource_logs, "resourceLogs")


def _fill_resource_logs(m: Any, d: Json) -> None:
    d = _expect_object(d, _RESOURCE_LOGS_KEYS, _RESOURCE_LOGS_SNAKE)
    g = d.get
    if (v := g("resource")) is not None:
        _fill_field(_fill_resource, m.resource, v, "resource")
    if (v := g("scopeLogs")) is not None:
        _fill_each(m.scope_logs, v, _fill_scope_logs, "scopeLogs")
    if (v := g("schemaUrl")) is not None:
        m.schema_url = _str(v, "schemaUrl")


def _fill_scope_logs(m: Any, d: Json) -> None:
    d = _expect_object(d, _SCOPE_LOGS_KEYS, _SCOPE_LOGS_SNAKE)
    g = d.get
    if (v := g("scope")) is not None:
        _fill_field(_fill_scope, m.scope, v, "scope")
    if (v := g("logRecords")) is not None:
        _fill_each(m.log_records, v, _fill_log_record, "logRecords")
    if (v := g("schemaUrl")) is not None:
        m.schema_url = _str(v, "schemaUrl")


def _fill_log_record(rec: Any, d: Json) -> None:
    if type(d) is not dict or not d.keys() <= _LOG_RECORD_KEYS:
        d = _expect_object(d, _LOG_RECORD_KEYS, _LOG_RECORD_SNAKE)
    g = d.get
    if (v := g("timeUnixNano")) is not None:
        rec.time_unix_nano = _u64(v, "timeUnixNano")
    if (v := g("observedTimeUnixNano")) is not None:
        rec.observed_time_unix_nano = _u64(v, "observedTimeUnixNano")
    if (v := g("severityNumber")) is not None:
        rec.severity_number = _enum(v, _SEVERITY_NUMBERS, "severityNumber")
    if (v := g("severityText")) is not None:
        rec.severity_text = _str(v, "severityText")
    if (v := g("body")) is not None:
        try:
            _fill_any(rec.body, v, 1)
        except _Invalid as exc:
            exc.parts.append("body")
            raise
    if (v := g("attributes")) is not None:
        _fill_attributes(rec.attributes, v, "attributes")
    if (v := g("droppedAttributesCount")) is not None:
        rec.dropped_attributes_count = _u32(v, "droppedAttributesCount")
    if (v := g("flags")) is not None:
        rec.flags = _u32(v, "flags")
    if (v := g("traceId")) is not None:
        rec.trace_id = _hex_id(v, 16, "traceId")
    if (v := g("spanId")) is not None:
        rec.span_id = _hex_id(v, 8, "spanId")
    if (v := g("eventName")) is not None:
        rec.event_name = _str(v, "eventName")
