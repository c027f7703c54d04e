"""Rules engine throughput: µs per record for 1000-record requests.

Run with ``python -m benchmarks.rules_bench [--runs N]``. Each scenario maps a request ``runs``
times and reports the best and the median run; "decode" is ``ParseFromString`` of the same
request, for scale (the receivers pay it before the rules run). Scenarios: the shipped packs on
their log inputs, the issue's *typical rule* (3 conditions, 6 data fields) on a delta sum, the
same rule on a cumulative sum (delta conversion with in-memory stream states: each run maps the
next export of the same 1000 streams), and a rule with a CEL ``match.expr`` and an expression field.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine

RECORDS = 1000
T0 = 1_704_067_200_000_000_000


def _kv(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


def _logs(make_record: Callable[[ExportLogsServiceRequest, int], None]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(
        [_kv("service.name", "chat-api"), _kv("service.version", "1.4.2"), _kv("host.name", "node-7")]
    )
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "opentelemetry.instrumentation.openai"
    for i in range(RECORDS):
        make_record(request, i)
    return request


def genai_record(request: ExportLogsServiceRequest, i: int) -> None:
    record = request.resource_logs[0].scope_logs[0].log_records.add(time_unix_nano=T0 + i * 1_000_000)
    record.trace_id = i.to_bytes(16, "big")
    record.span_id = i.to_bytes(8, "big")
    record.event_name = "gen_ai.client.inference.operation.details"
    record.attributes.extend(
        [
            _kv("gen_ai.operation.name", "chat"),
            _kv("gen_ai.provider.name", "openai"),
            _kv("gen_ai.request.model", "gpt-4o"),
            _kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
            _kv("gen_ai.response.id", f"chatcmpl-{i}"),
            _kv("gen_ai.response.finish_reasons", "stop"),
            _kv("gen_ai.request.temperature", 0.2),
            _kv("gen_ai.usage.input_tokens", 100 + i),
            _kv("gen_ai.usage.output_tokens", 20 + i),
            _kv("server.address", "api.openai.com"),
            _kv("customer.id", f"customer-{i % 50}"),
        ]
    )


def http_attributes_record(request: ExportLogsServiceRequest, i: int) -> None:
    record = request.resource_logs[0].scope_logs[0].log_records.add(time_unix_nano=T0 + i * 1_000_000)
    record.attributes.extend(
        [
            _kv("method", "GET"),
            _kv("path", f"/api/items/{i % 20}"),
            _kv("user", f"user-{i % 50}"),
            _kv("duration", 12 + i % 40),
            _kv("status", 200),
            _kv("client.address", "10.0.0.1"),
        ]
    )


def http_body_record(request: ExportLogsServiceRequest, i: int) -> None:
    record = request.resource_logs[0].scope_logs[0].log_records.add(time_unix_nano=T0 + i * 1_000_000)
    record.body.kvlist_value.values.extend(
        [
            _kv("method", "POST"),
            _kv("path", "/api/orders"),
            _kv("user", f"user-{i % 50}"),
            _kv("duration", 40.5),
        ]
    )


def unmatched_record(request: ExportLogsServiceRequest, i: int) -> None:
    record = request.resource_logs[0].scope_logs[0].log_records.add(time_unix_nano=T0 + i * 1_000_000)
    record.severity_text = "INFO"
    record.body.string_value = f"cache warmed in {i} ms"
    record.attributes.extend([_kv("code.function", "warm"), _kv("thread.name", "main")] * 3)


def metrics_request(
    temporality: int = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA, export: int = 1
) -> ExportMetricsServiceRequest:
    """1000 points of one sum; ``export`` n is the n-th export (time and cumulative value grow)."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend([_kv("service.name", "gateway")])
    metric = resource_metrics.scope_metrics.add().metrics.add(name="http.server.request.count", unit="1")
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.sum.is_monotonic = True
    for i in range(RECORDS):
        point = metric.sum.data_points.add(
            start_time_unix_nano=T0, time_unix_nano=T0 + export * 60_000_000_000, as_int=(i % 7 + 1) * export
        )
        point.attributes.extend(
            [_kv("customer.id", f"customer-{i}"), _kv("http.route", "/api"), _kv("http.method", "GET")]
        )
    return request


METRIC_RULE = {
    "name": "requests",
    "match": {
        "signal": "metrics",
        "metric": "http.server.*",
        "metric_type": "sum",
        "where": [
            {"path": "attributes.customer.id", "exists": True},
            {"path": "attributes.http.method", "in": ["GET", "POST"]},
            {"path": "point.value", "exists": True},
        ],
    },
    "event": {
        "type": "requests",
        "subject": {"path": "attributes.customer.id"},
        "data": {
            "count": {"path": "point.value", "as": "int"},
            "route": {"path": "attributes.http.route", "optional": True},
            "method": {"path": "attributes.http.method"},
            "metric": {"path": "metric.name"},
            "service": {"path": "resource.attributes.service.name", "default": "unknown"},
            "unit": {"path": "metric.unit", "optional": True},
        },
    },
}
EXPRESSION_RULE = {
    "name": "expensive-calls",
    "match": {
        "signal": "logs",
        "where": [{"path": "attributes.gen_ai.usage.input_tokens", "exists": True}],
        "expr": 'attributes["gen_ai.usage.input_tokens"] + attributes["gen_ai.usage.output_tokens"] > 50',
    },
    "event": {
        "type": "expensive-call",
        "subject": {"path": "attributes.customer.id"},
        "data": {
            "total": {
                "expr": 'attributes["gen_ai.usage.input_tokens"] + attributes["gen_ai.usage.output_tokens"]'
            },
            "model": {"path": "attributes.gen_ai.request.model"},
        },
    },
}


def _time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / RECORDS / 1000)
    return min(samples), statistics.median(samples)


def _cumulative_time(engine: RulesEngine, runs: int) -> tuple[int, float, float]:
    """The typical rule on successive cumulative exports of the same streams (state in memory)."""
    cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    exports = [metrics_request(cumulative, export=n) for n in range(1, runs + 2)]
    states = engine.stream_states(None, T0 - 1)  # streams started after "first start": kept
    engine.map_metrics(exports[0], T0, states)
    samples = []
    events = 0
    for request in exports[1:]:
        start = time.perf_counter_ns()
        events = len(engine.map_metrics(request, T0, states).events)
        samples.append((time.perf_counter_ns() - start) / RECORDS / 1000)
    return events, min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs

    packs = RulesEngine.from_config(RulesConfig(packs=["genai", "http", "s3"]))
    typical = RulesEngine.from_config(RulesConfig(packs=[], inline=[RuleModel.model_validate(METRIC_RULE)]))
    expression = RulesEngine.from_config(
        RulesConfig(packs=[], inline=[RuleModel.model_validate(EXPRESSION_RULE)])
    )
    log_scenarios = [
        ("genai pack, 2 events/record", packs, genai_record),
        ("http pack, attributes", packs, http_attributes_record),
        ("http pack, kvlist body", packs, http_body_record),
        ("log packs, no rule matches", packs, unmatched_record),
        ("CEL match.expr + 1 expr field", expression, genai_record),
    ]
    rows = []
    for label, engine, make in log_scenarios:
        logs = _logs(make)
        data = logs.SerializeToString()
        events = len(engine.map_logs(logs, T0).events)
        best, median = _time(lambda e=engine, logs=logs: e.map_logs(logs, T0), runs)  # type: ignore[misc]
        decode, _ = _time(lambda data=data: ExportLogsServiceRequest.FromString(data), runs)  # type: ignore[misc]
        rows.append((label, events, best, median, decode))
    request = metrics_request()
    data = request.SerializeToString()
    events = len(typical.map_metrics(request, T0).events)
    best, median = _time(lambda: typical.map_metrics(request, T0), runs)
    decode, _ = _time(lambda: ExportMetricsServiceRequest.FromString(data), runs)
    rows.append(("typical rule (3 conds, 6 data), delta sum", events, best, median, decode))
    events, best, median = _cumulative_time(typical, runs)
    rows.append(("typical rule, cumulative sum → delta", events, best, median, decode))

    print(f"{RECORDS} records per request, {runs} runs; µs per record")
    print(f"{'scenario':44} {'events':>7} {'best':>7} {'median':>7} {'decode':>7}")
    for label, events, best, median, decode in rows:
        print(f"{label:44} {events:>7} {best:>7.2f} {median:>7.2f} {decode:>7.2f}")


if __name__ == "__main__":
    main()
