"""Real OTLP clients for the end-to-end tests: the OpenTelemetry Python SDK exporters and raw requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.util.types import Attributes

RESOURCE = Resource.create({"service.name": "chat-api", "deployment.environment": "test"})


def send_logs(transport: str, endpoint: str, records: Sequence[dict[str, Any]]) -> None:
    """Emit ``records`` (each: body, attributes, timestamp) through the SDK and flush them in one export."""
    exporter: Any
    if transport == "grpc":
        exporter = GrpcLogExporter(endpoint=endpoint, insecure=True, timeout=10)
    else:
        exporter = HttpLogExporter(endpoint=f"{endpoint}/v1/logs", timeout=10)
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = provider.get_logger("otlp-meter-tests", "1.0")
    for record in records:
        logger.emit(
            timestamp=record["timestamp"],
            body=record.get("body"),
            attributes=record.get("attributes"),
            severity_text="INFO",
        )
    assert provider.force_flush(10_000), "the SDK did not flush"
    provider.shutdown()


def send_counter(
    transport: str, endpoint: str, name: str, increments: Sequence[tuple[int, Attributes]]
) -> None:
    """Record ``increments`` on a counter and export once (cumulative temporality, SDK default)."""
    exporter: Any
    if transport == "grpc":
        exporter = GrpcMetricExporter(endpoint=endpoint, insecure=True, timeout=10)
    else:
        exporter = HttpMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=10)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    counter = provider.get_meter("otlp-meter-tests").create_counter(name, unit="{request}")
    for amount, attributes in increments:
        counter.add(amount, attributes)
    assert provider.force_flush(10_000), "the SDK did not flush"
    provider.shutdown()
