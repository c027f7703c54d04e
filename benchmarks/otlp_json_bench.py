"""OTLP/JSON decode throughput: the hand walk in ``receivers/otlp_json`` against ``json_format.Parse``.

Run with ``python -m benchmarks.otlp_json_bench [--repeat N]``. Each scenario is one request body
of 1000 records (log records or data points) shaped like what an OpenTelemetry SDK sends; every
row reports the best of ``--repeat`` runs. Two reference rows put the numbers in context:
``orjson.loads`` alone (the floor for any JSON walk) and protobuf binary ``FromString`` of the same
request (what an OTLP/gRPC or OTLP/HTTP-protobuf request costs).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otlp_meter.receivers import otlp_json

RECORDS = 1000
T0 = 1_700_000_000_000_000_000


def _kv(key: str, value: str | int | float | bool) -> common_pb2.KeyValue:
    kv = common_pb2.KeyValue(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = value
    return kv


def _resource(target: Message) -> None:
    attrs = {"service.name": "checkout", "service.version": "1.4.2", "k8s.namespace.name": "shop"}
    target.resource.attributes.extend(_kv(k, v) for k, v in attrs.items())  # type: ignore[attr-defined]


def logs_request(records: int = RECORDS) -> ExportLogsServiceRequest:
    """One resource, one scope, ``records`` log records with body, 5 attributes and ids."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    _resource(resource_logs)
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "checkout.usage"
    for i in range(records):
        rec = scope_logs.log_records.add()
        rec.time_unix_nano = T0 + i
        rec.observed_time_unix_nano = T0 + i + 7
        rec.severity_number = logs_pb2.SEVERITY_NUMBER_INFO
        rec.severity_text = "INFO"
        rec.body.string_value = f"request served in {i % 97} ms"
        rec.attributes.extend(
            [
                _kv("customer.id", f"cust-{i % 50}"),
                _kv("http.route", "/api/v1/orders"),
                _kv("llm.tokens.input", 1000 + i),
                _kv("cost.usd", 0.0042 * i),
                _kv("cache.hit", i % 2 == 0),
            ]
        )
        rec.trace_id = i.to_bytes(16, "big")
        rec.span_id = (i + 1).to_bytes(8, "big")
    return request


def sum_request(points: int = RECORDS) -> ExportMetricsServiceRequest:
    """50 cumulative monotonic sums of 20 int points each, 3 attributes per point."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    _resource(resource_metrics)
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = "checkout.usage"
    per_metric = 20
    for m in range(points // per_metric):
        metric = scope_metrics.metrics.add(name=f"usage.metric.{m}", unit="{request}")
        metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.is_monotonic = True
        for i in range(per_metric):
            point = metric.sum.data_points.add(start_time_unix_nano=T0, time_unix_nano=T0 + 60 * 10**9)
            point.as_int = m * 1000 + i
            point.attributes.extend(
                [_kv("customer.id", f"cust-{i}"), _kv("region", "eu-west-1"), _kv("tier", "pro")]
            )
    return request


def histogram_request(points: int = RECORDS) -> ExportMetricsServiceRequest:
    """10 delta histograms of 100 points, 2 attributes and 10 buckets per point."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    _resource(resource_metrics)
    scope_metrics = resource_metrics.scope_metrics.add()
    per_metric = 100
    bounds = [5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0]
    for m in range(points // per_metric):
        metric = scope_metrics.metrics.add(name=f"latency.{m}", unit="ms")
        metric.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
        for i in range(per_metric):
            point = metric.histogram.data_points.add(
                start_time_unix_nano=T0, time_unix_nano=T0 + 60 * 10**9, count=55, sum=1234.5, min=1, max=900
            )
            point.bucket_counts.extend(range(1, 11))
            point.explicit_bounds.extend(bounds)
            point.attributes.extend([_kv("customer.id", f"cust-{i}"), _kv("region", "eu-west-1")])
    return request


@dataclass(frozen=True)
class Row:
    scenario: str
    decoder: str
    seconds: float  # best time for one request of RECORDS records

    @property
    def records_per_second(self) -> float:
        return RECORDS / self.seconds

    @property
    def micros_per_record(self) -> float:
        return self.seconds / RECORDS * 1e6


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def scenario_rows(
    scenario: str, message: Message, decode: Callable[[bytes], Message], repeat: int
) -> list[Row]:
    body = otlp_json.encode_response(message)  # generic OTLP/JSON encoder: hex ids, int64 as strings
    assert decode(body) == message, f"{scenario}: the hand walk does not round-trip"
    binary = message.SerializeToString()
    cls = type(message)

    def with_json_format() -> Message:
        return json_format.Parse(body, cls(), ignore_unknown_fields=True)

    return [
        Row(scenario, "otlp_json (orjson + hand walk)", best_of(lambda: decode(body), repeat)),
        Row(scenario, "json_format.Parse", best_of(with_json_format, max(1, repeat // 5))),
        Row(scenario, "ref: orjson.loads only", best_of(lambda: orjson.loads(body), repeat)),
        Row(scenario, "ref: protobuf binary FromString", best_of(lambda: cls.FromString(binary), repeat)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=25, help="runs per row; the best one is reported")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    rows += scenario_rows("logs x1000", logs_request(), otlp_json.decode_logs_request, args.repeat)
    rows += scenario_rows("sum points x1000", sum_request(), otlp_json.decode_metrics_request, args.repeat)
    rows += scenario_rows(
        "histogram points x1000", histogram_request(), otlp_json.decode_metrics_request, args.repeat
    )
    header = f"{'scenario':<24} {'decoder':<34} {'records/s':>12} {'µs/record':>10} {'vs json_format':>15}"
    print(header)
    print("-" * len(header))
    baseline = {row.scenario: row.seconds for row in rows if row.decoder == "json_format.Parse"}
    for row in rows:
        ratio = baseline[row.scenario] / row.seconds
        print(
            f"{row.scenario:<24} {row.decoder:<34} {row.records_per_second:>12,.0f}"
            f" {row.micros_per_record:>10.2f} {ratio:>14.1f}x"
        )


if __name__ == "__main__":
    main()
