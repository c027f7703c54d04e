"""Reading OTLP attributes into plain Python values, through the protobuf API or from bytes.

Through the API (:func:`select`) every ``KeyValue``, ``AnyValue`` and string read costs a Python
wrapper, a few hundred nanoseconds each: for a record with a dozen attributes that is most of what
a rule costs. When a record's bytes are at hand anyway (a data point is serialized for its event
id), its attribute field is parsed again, in C, by message types made here at import that declare
the field differently:

* as ``map<string, bytes>`` (:func:`read_attributes`). On the wire a map entry is exactly a
  ``KeyValue`` (key = 1, value = 2), so the list parses into a map whose values stay serialized
  ``AnyValue``\\s until a wanted key is read (:func:`value_of`). When the map has fewer entries than
  the list (duplicate keys, rare), the list is read through the API instead;
* as ``repeated bytes`` (:func:`attribute_list`): each ``KeyValue`` serialized, in order, exactly
  as ``KeyValue.SerializeToString`` gives it (what cumulative stream keys hash).

Either way the values are what :func:`any_value` makes of them: nothing here changes what a record
means, only what reading it costs.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    NumberDataPoint,
    SummaryDataPoint,
)

Keys = frozenset[str] | None  # the keys to read from an attribute list; None: every key
Point = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint | SummaryDataPoint

_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP AnyValue to plain Python; an empty AnyValue is ``None``."""
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    # None, or string_value_strindex (profiles' string table; meaningless without it)
    return None


def select(kvs: Iterable[KeyValue], keys: Keys) -> dict[str, Any]:
    """``key → value`` for the attributes named in ``keys`` (all of them when None).

    One pass over the list; only the values kept are converted. Of duplicate keys the last wins,
    as in a dict built from the list (OTLP forbids duplicates; producers still send them).
    """
    if keys is None:
        found = {kv.key: kv for kv in kvs}
    else:
        found = {}
        for kv in kvs:
            key = kv.key
            if key in keys:
                found[key] = kv
    out = {}
    for key, kv in found.items():
        value = kv.value
        kind = value.WhichOneof("value")  # scalars inline: this runs for every wanted attribute
        out[key] = getattr(value, kind) if kind in _SCALARS else any_value(value)
    return out


# --- from bytes ----------------------------------------------------------------------------------

# AnyValue's fields as tags: string_value (1, length-delimited), bool_value (2, varint),
# int_value (3, varint), double_value (4, 64-bit).
_STRING, _BOOL, _INT, _DOUBLE = 0x0A, 0x10, 0x18, 0x21
_unpack_double = struct.Struct("<d").unpack_from


def value_of(raw: bytes) -> Any:
    """``any_value`` of a serialized AnyValue. A string shorter than 128 bytes, an int, a double or
    a bool that makes up the whole of ``raw`` is decoded here; anything else is parsed."""
    n = len(raw)
    if n == 0:
        return None
    tag = raw[0]
    if tag == _STRING and n > 1 and raw[1] < 0x80 and n == raw[1] + 2:
        return raw[2:].decode()
    if tag == _INT:
        value = shift = 0
        for i in range(1, n):
            byte = raw[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if i == n - 1:  # int64 as a varint: a negative number is its two's complement
                    return value - (1 << 64) if value >= 1 << 63 else value
                break
            shift += 7
    if tag == _DOUBLE and n == 9:
        return _unpack_double(raw, 1)[0]
    if tag == _BOOL and n == 2 and raw[1] < 2:
        return raw[1] == 1
    return any_value(AnyValue.FromString(raw))


_FD = descriptor_pb2.FieldDescriptorProto
_POINT_TYPES: tuple[type[Message], ...] = (
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    SummaryDataPoint,
)


Parse = Callable[[bytes], Any]


def _parsers() -> tuple[dict[type[Message], Parse], dict[type[Message], Parse]]:
    """``FromString`` of the map and of the list message type of each point type's attribute field."""
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(
        name="otlp_meter/rules/attributes.proto", package="otlp_meter.rules.attributes", syntax="proto3"
    )
    numbers = {t: t.DESCRIPTOR.fields_by_name["attributes"].number for t in _POINT_TYPES}
    for number in sorted(set(numbers.values())):
        as_map = file.message_type.add(name=f"Map{number}")
        entry = as_map.nested_type.add(name="Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_FD.TYPE_STRING, label=_FD.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=_FD.TYPE_BYTES, label=_FD.LABEL_OPTIONAL)
        as_map.field.add(
            name="attributes",
            number=number,
            type=_FD.TYPE_MESSAGE,
            label=_FD.LABEL_REPEATED,
            type_name=f".{file.package}.Map{number}.Entry",
        )
        as_list = file.message_type.add(name=f"List{number}")
        as_list.field.add(name="attributes", number=number, type=_FD.TYPE_BYTES, label=_FD.LABEL_REPEATED)
    pool.Add(file)

    def parser(name: str) -> Parse:
        parse: Parse = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{file.package}.{name}")
        ).FromString
        return parse

    return (
        {t: parser(f"Map{number}") for t, number in numbers.items()},
        {t: parser(f"List{number}") for t, number in numbers.items()},
    )


_AS_MAP, _AS_LIST = _parsers()


def read_attributes(point: Point, serialized: bytes, keys: Keys) -> dict[str, Any]:
    """What ``select(point.attributes, keys)`` returns, read from ``serialized``, the point's bytes."""
    found: Mapping[str, bytes] = _AS_MAP[type(point)](serialized).attributes
    if len(found) != len(point.attributes):
        # Duplicate keys, or an entry protobuf set aside (a KeyValue with fields this version does
        # not know is kept as unknown data, not put in the map): read the list itself.
        return select(point.attributes, keys)
    if keys is None:
        return {key: value_of(raw) for key, raw in found.items()}
    out = {}
    if len(found) < len(keys):
        for key in found:
            if key in keys:
                out[key] = value_of(found[key])
    else:
        for key in keys:
            raw = found.get(key)
            if raw is not None:
                out[key] = value_of(raw)
    return out


def attribute_list(point: Point, serialized: bytes) -> tuple[list[bytes], bytes]:
    """The attributes of a point whose bytes are ``serialized``: each ``KeyValue`` serialized, in
    order; and the attribute field alone, serialized (a point parsed from it has those attributes
    and nothing else)."""
    message = _AS_LIST[type(point)](serialized)
    message.DiscardUnknownFields()  # everything but the attributes
    return list(message.attributes), message.SerializeToString()


def key_of(kv: bytes) -> bytes:
    """The key of a serialized ``KeyValue`` as UTF-8, which sorts as the text does."""
    if not kv or kv[0] != 0x0A:  # no key field (tag 1, length-delimited): the empty key
        return b""
    if kv[1] < 0x80:  # a key shorter than 128 bytes: a one-byte length
        return kv[2 : 2 + kv[1]]
    length = shift = 0
    i = 1
    while True:
        byte = kv[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return kv[i : i + length]
        shift += 7
