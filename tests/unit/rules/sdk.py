"""Real OTLP from the OpenTelemetry Python SDK: what an instrumented app actually exports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource


class SdkApp:
    """An app with a MeterProvider and a LoggerProvider whose exports we take as protobuf requests.

    ``temporality`` is what the app exports histograms and counters as (the SDK default:
    cumulative).
    """

    def __init__(self, resource: Mapping[str, Any], temporality: str = "cumulative") -> None:
        preferred = {}
        if temporality == "delta":
            preferred = {Histogram: AggregationTemporality.DELTA}
        self._reader = InMemoryMetricReader(preferred_temporality=preferred)  # type: ignore[arg-type]
        self.resource = Resource.create(dict(resource))
        self.meters = MeterProvider(metric_readers=[self._reader], resource=self.resource)
        self._logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        self.loggers = LoggerProvider(resource=self.resource)
        self.loggers.add_log_record_processor(SimpleLogRecordProcessor(self._logs))

    def export_metrics(self) -> ExportMetricsServiceRequest:
        """What a periodic metric export would send now."""
        data = self._reader.get_metrics_data()
        assert data is not None
        return encode_metrics(data)

    def export_logs(self) -> ExportLogsServiceRequest:
        """The log records emitted since the last call."""
        request = encode_logs(self._logs.get_finished_logs())
        self._logs.clear()
        return request
