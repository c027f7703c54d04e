"""Request bodies for the load generators: serialized once, then patched per request.

A benchmark must send distinct records (a copy would be dropped by the dedupe window and cost almost
nothing), but building a 1000-record protobuf request in Python costs milliseconds, more than the
service spends on it. So each workload is serialized once with *marker* values in its fixed-width
fields (``fixed64`` timestamps and counts, ``double`` sums, 19-digit JSON integers, fixed-width ids),
the markers are located, and every request is that template with new values written at those
offsets: a few hundred nanoseconds per record. Every value that makes a record distinct (its time,
and for cumulative metrics the growing value) is patched, so request ``seq`` of client ``client``
holds records no other request holds.

Workloads (``Workload.kind``):

* ``genai-logs`` — GenAI client log records as the OpenTelemetry instrumentations emit them (11
  attributes, event name, trace and span ids); the genai pack makes **2 events per record**.
* ``cumulative-sums`` / ``cumulative-histograms`` — one metric of ``size`` points (one stream per
  point, per client); request ``seq`` is export ``seq`` of the same streams, so the rules engine's
  cumulative-to-delta state is read and advanced for every point (1 event per point).
* ``cloudevents`` — a CloudEvents batch for the events API (1 event per record).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.receivers import otlp_json

Kind = Literal["genai-logs", "cumulative-sums", "cumulative-histograms", "cloudevents"]
Encoding = Literal["protobuf", "json"]

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z: log record times start here
RECORD_SPACING_NS = 10_000
"""A client's log record times advance 10 µs per record (100 records per millisecond, more than any
client sends here per millisecond of wall time), as a source's clock does. They once advanced 1 ns
per record: a client's whole run fell in one millisecond, and since the queue's dedupe keys start
with the event's millisecond, every key was a random insert into a growing index (about half of
S2's CPU), a load no real source makes."""
_MARK = 0xA5C3_0000_0000_0000  # fixed64 markers: this high half never occurs in a real request
_SIGNED_MARK = 0x25C3_0000_0000_0000  # the same for sfixed64 fields (below 2**63)
_DEC_MARK = 1_111_000_000_000_000_000  # 19-digit JSON integer markers
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_HISTOGRAM_BOUNDS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0]

# (slot kind, record index) -> value for request seq. Slot kinds:
#   "time"   record/point time (ns);        "value"  cumulative sum value (int)
#   "count"  histogram count (int);         "sum"    histogram sum (float, encoded as double)
#   "bucket" first histogram bucket count;  "id"     CloudEvent id number
SlotKind = Literal["time", "value", "count", "sum", "bucket", "id"]


def _kv(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


@dataclass(frozen=True)
class Workload:
    """What one client sends: ``size`` records per request of ``kind``, in ``encoding``."""

    kind: Kind
    size: int
    encoding: Encoding = "protobuf"

    @property
    def events_per_record(self) -> int:
        return 2 if self.kind == "genai-logs" else 1

    @property
    def unit(self) -> str:
        return "points" if self.kind.startswith("cumulative") else "records"


class Template:
    """A serialized request with patchable fixed-width slots; ``render(seq)`` is request ``seq``."""

    def __init__(
        self,
        body: bytes,
        slots: list[tuple[int, int, SlotKind, int]],  # (offset, width, kind, record index)
        encoders: dict[SlotKind, Callable[[int], bytes]],
        value: Callable[[SlotKind, int, int], int],
    ) -> None:
        slots = sorted(slots)
        self._segments: list[bytes] = []
        previous = 0
        for offset, width, _, _ in slots:
            self._segments.append(body[previous:offset])
            previous = offset + width
        self._segments.append(body[previous:])
        self._slots = [(kind, index, encoders[kind]) for _, _, kind, index in slots]
        self._value = value
        self.size = len(body)

    def render(self, seq: int) -> bytes:
        value = self._value
        parts: list[bytes] = []
        append = parts.append
        segments = self._segments
        for n, (kind, index, encode) in enumerate(self._slots):
            append(segments[n])
            append(encode(value(kind, index, seq)))
        append(segments[-1])
        return b"".join(parts)


_U64 = struct.Struct("<Q").pack
_F64 = struct.Struct("<d").pack


def _find_all(body: bytes, needle: bytes) -> list[int]:
    found, start = [], 0
    while (at := body.find(needle, start)) >= 0:
        found.append(at)
        start = at + 1
    return found


def _locate(body: bytes, markers: dict[bytes, tuple[SlotKind, int]]) -> list[tuple[int, int, SlotKind, int]]:
    slots = []
    for needle, (kind, index) in markers.items():
        where = _find_all(body, needle)
        if len(where) != 1:
            raise AssertionError(f"marker for {kind}[{index}] found {len(where)} times in the template")
        slots.append((where[0], len(needle), kind, index))
    return slots


def _genai_logs(size: int, client: int) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(
        [_kv("service.name", "chat-api"), _kv("service.version", "1.4.2"), _kv("host.name", f"node-{client}")]
    )
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "opentelemetry.instrumentation.openai"
    for i in range(size):
        record = scope_logs.log_records.add(time_unix_nano=_MARK + i)
        record.trace_id = (client << 64 | i).to_bytes(16, "big")
        record.span_id = (i + 1).to_bytes(8, "big")
        record.event_name = "gen_ai.client.inference.operation.details"
        record.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.request.model", "gpt-4o"),
                _kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
                _kv("gen_ai.response.id", f"chatcmpl-{client}-{i}"),
                _kv("gen_ai.response.finish_reasons", "stop"),
                _kv("gen_ai.request.temperature", 0.2),
                _kv("gen_ai.usage.input_tokens", 100 + i % 900),
                _kv("gen_ai.usage.output_tokens", 20 + i % 300),
                _kv("server.address", "api.openai.com"),
                _kv("openmeter.subject", f"customer-{i % 50}"),
            ]
        )
    return request


def _cumulative_metrics(kind: Kind, size: int, client: int, start_ns: int) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(
        [_kv("service.name", "gateway"), _kv("host.name", f"node-{client}")]
    )
    scope = resource_metrics.scope_metrics.add()
    scope.scope.name = "bench.meter"
    if kind == "cumulative-sums":
        metric = scope.metrics.add(name="bench.requests", unit="{request}")
        metric.sum.aggregation_temporality = _CUMULATIVE
        metric.sum.is_monotonic = True
        for i in range(size):
            point = metric.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=_MARK + i)
            point.as_int = _SIGNED_MARK + i
            point.attributes.extend(
                [_kv("customer.id", f"customer-{client}-{i}"), _kv("http.route", "/api/v1/chat")]
            )
    else:
        metric = scope.metrics.add(name="bench.duration", unit="ms")
        metric.histogram.aggregation_temporality = _CUMULATIVE
        for i in range(size):
            histogram_point = metric.histogram.data_points.add(
                start_time_unix_nano=start_ns, time_unix_nano=_MARK + i
            )
            histogram_point.count = _MARK + (1 << 40) + i
            histogram_point.sum = float(-1_000_000 - i)  # a double marker (sums are never negative)
            histogram_point.bucket_counts.extend([_MARK + (2 << 40) + i] + [0] * len(_HISTOGRAM_BOUNDS))
            histogram_point.explicit_bounds.extend(_HISTOGRAM_BOUNDS)
            histogram_point.attributes.extend(
                [_kv("customer.id", f"customer-{client}-{i}"), _kv("http.route", "/api/v1/chat")]
            )
    return request


def _proto_markers(kind: Kind, size: int) -> dict[bytes, tuple[SlotKind, int]]:
    markers: dict[bytes, tuple[SlotKind, int]] = {}
    for i in range(size):
        markers[_U64(_MARK + i)] = ("time", i)
        if kind == "cumulative-sums":
            markers[_U64(_SIGNED_MARK + i)] = ("value", i)
        elif kind == "cumulative-histograms":
            markers[_U64(_MARK + (1 << 40) + i)] = ("count", i)
            markers[_F64(float(-1_000_000 - i))] = ("sum", i)
            markers[_U64(_MARK + (2 << 40) + i)] = ("bucket", i)
    return markers


def _json_markers(message: Message, size: int) -> tuple[bytes, dict[bytes, tuple[SlotKind, int]]]:
    """The OTLP/JSON body of a genai-logs message, with 19-digit decimal markers for the times."""
    for i, record in enumerate(message.resource_logs[0].scope_logs[0].log_records):  # type: ignore[attr-defined]
        record.time_unix_nano = _DEC_MARK + i
    body = otlp_json.encode_response(message)  # the generic OTLP/JSON encoder: int64 as strings
    return body, {f'"{_DEC_MARK + i}"'.encode(): ("time", i) for i in range(size)}


def _cloudevents(size: int, client: int) -> tuple[bytes, dict[bytes, tuple[SlotKind, int]]]:
    events = [
        {
            "specversion": "1.0",
            "id": f"{_DEC_MARK + i}",
            "source": f"bench-client-{client}",
            "type": "prompt",
            "subject": f"customer-{i % 50}",
            "time": "2026-01-01T00:00:00Z",
            "data": {"tokens": 100 + i, "model": "gpt-4o", "type": "input"},
        }
        for i in range(size)
    ]
    body = orjson.dumps(events)
    return body, {f'"{_DEC_MARK + i}"'.encode(): ("id", i) for i in range(size)}


def template(workload: Workload, client: int, start_ns: int | None = None) -> Template:
    """The template of ``workload`` for ``client`` (client numbers keep clients' records apart).

    Values for request ``seq``: log record times ``base + (seq * size + i) * RECORD_SPACING_NS`` and
    ids ``(client << 36) + seq * size + i`` (unique per client and request); cumulative points
    advance 1 ms per export and grow by ``i % 7 + 1`` (sums) or by 5 observations summing to 12.5 ms
    (histograms), from ``start_ns`` (default: now, so the collector treats each stream as new since
    its first start and bills its first point too).
    """
    size = workload.size
    start = time.time_ns() if start_ns is None else start_ns
    base = T0 + (client << 36)

    def value(kind: SlotKind, i: int, seq: int) -> int:
        if kind == "time":
            if workload.kind == "genai-logs":
                return base + (seq * size + i) * RECORD_SPACING_NS
            return start + (seq + 1) * 1_000_000
        if kind == "id":
            return (client << 36) + seq * size + i
        if kind == "value":
            return (seq + 1) * (i % 7 + 1)
        if kind == "sum":
            return (seq + 1) * 25  # encoded below as (seq + 1) * 12.5
        return (seq + 1) * 5  # count, bucket

    encoders: dict[SlotKind, Callable[[int], bytes]]
    if workload.kind == "cloudevents":
        body, markers = _cloudevents(size, client)
        encoders = {"id": lambda v: f'"{v:019d}"'.encode()}
        return Template(body, _locate(body, markers), encoders, value)
    if workload.kind == "genai-logs":
        message: Message = _genai_logs(size, client)
        if workload.encoding == "json":
            body, markers = _json_markers(message, size)
            encoders = {"time": lambda v: f'"{v:019d}"'.encode()}
            return Template(body, _locate(body, markers), encoders, value)
    else:
        if workload.encoding == "json":
            raise ValueError("metrics workloads are protobuf only")
        message = _cumulative_metrics(workload.kind, size, client, start)
    body = message.SerializeToString()
    encoders = {
        "time": _U64,
        "value": _U64,  # sfixed64 as_int: the same 8 little-endian bytes for non-negative values
        "count": _U64,
        "bucket": _U64,
        "sum": lambda v: _F64(v / 2),
    }
    return Template(body, _locate(body, _proto_markers(workload.kind, size)), encoders, value)
