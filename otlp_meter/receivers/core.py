"""The receiver core every transport shares: take a decoded request, check the limits, run it
through the pipeline, count it, and build the OTLP response (with ``partial_success`` when rules
rejected records). The events API uses :meth:`ReceiverCore.ingest_events` and the same refusals.

Refusals are counted (``receiver_refused_records``, ``receiver_requests``) and logged as
``receiver_refused``, at most once per reason every ``THROTTLE_INTERVAL`` seconds: a sender that
keeps sending garbage is visible in the log without being able to fill it."""

from __future__ import annotations

import time
from typing import Literal

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otlp_meter.errors import LimitExceededError
from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult, Pipeline
from otlp_meter.receivers.cloudevents import TooManyEventsError
from otlp_meter.receivers.config import LimitsConfig
from otlp_meter.receivers.limits import check_limits
from otlp_meter.receivers.status import Refusal, refusal_for
from otlp_meter.telemetry.logging import ThrottledLog, get_logger
from otlp_meter.telemetry.metrics import Children, Metrics

SignalName = Literal["logs", "metrics", "traces", "events"]
Transport = Literal["grpc", "http_protobuf", "http_json", "events_api"]

log = get_logger("receiver")
# Logged where they happen, with more to say: the authenticator (rate-limited) and refusal_for.
_LOGGED_ELSEWHERE = frozenset({"unauthenticated", "internal"})
_MAX_MESSAGE = 300
# Answers without partial_success, shared by every request (never modified).
_LOGS_OK = ExportLogsServiceResponse()
_METRICS_OK = ExportMetricsServiceResponse()
_TRACES_OK = ExportTraceServiceResponse()


def count_records(request: Message) -> int:
    """Log records or metric data points in a request (for refusal counters)."""
    if isinstance(request, ExportLogsServiceRequest):
        return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    if isinstance(request, ExportMetricsServiceRequest):
        total = 0
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        total += len(getattr(metric, kind).data_points)
        return total
    return 0


class ReceiverCore:
    """Shared by OTLP/gRPC, OTLP/HTTP and the events API: check, ingest, count, answer. Transports
    only authenticate, decode and encode."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics, limits: LimitsConfig | None = None) -> None:
        self._pipeline = pipeline
        self._metrics = metrics
        self._limits = limits or LimitsConfig()
        self._refusals = ThrottledLog(log, "receiver_refused")
        # Once-per-request instruments, looked up by (transport, signal[, outcome]).
        self._sizes = Children(metrics.receiver_request_size)
        self._durations = Children(metrics.receiver_request_duration)
        self._accepted = Children(metrics.receiver_accepted_records)
        self._requests = Children(metrics.receiver_requests)

    async def export(
        self, signal: SignalName, transport: Transport, request: Message, wire_size: int | None = None
    ) -> Message:
        """Check ``request`` against the limits and ingest it; raises LimitExceededError and what the
        pipeline raises (map it with :meth:`refuse`). ``wire_size``: bytes of the decoded body
        (default: the request's protobuf size)."""
        started = time.perf_counter()
        size = request.ByteSize() if wire_size is None else wire_size
        self._sizes[transport, signal].observe(size)
        check_limits(request, size, self._limits)
        if isinstance(request, ExportLogsServiceRequest):
            result = await self._pipeline.ingest_logs(request)
            response: Message = _LOGS_OK
            if result.rejected:
                response = ExportLogsServiceResponse(
                    partial_success=ExportLogsPartialSuccess(
                        rejected_log_records=result.rejected, error_message=result.message
                    )
                )
        elif isinstance(request, ExportMetricsServiceRequest):
            result = await self._pipeline.ingest_metrics(request)
            response = _METRICS_OK
            if result.rejected:
                response = ExportMetricsServiceResponse(
                    partial_success=ExportMetricsPartialSuccess(
                        rejected_data_points=result.rejected, error_message=result.message
                    )
                )
        else:  # traces are accepted and discarded so SDKs that also send them stay quiet
            result = IngestResult(0, 0, "", 0, 0)
            response = _TRACES_OK
        self._count(signal, transport, result)
        self._durations[transport, signal].observe(time.perf_counter() - started)
        return response

    async def ingest_events(
        self, transport: Transport, events: list[EncodedEvent], wire_size: int | None = None
    ) -> IngestResult:
        """Commit validated CloudEvents; returns after the commit, raises what the pipeline raises.
        ``wire_size``: bytes of the decoded body (default: the events' encoded size)."""
        started = time.perf_counter()
        size = sum(len(e.payload) for e in events) if wire_size is None else wire_size
        self._sizes[transport, "events"].observe(size)
        result = await self._pipeline.ingest_events(events)
        self._count("events", transport, result)
        self._durations[transport, "events"].observe(time.perf_counter() - started)
        return result

    def _count(self, signal: SignalName, transport: Transport, result: IngestResult) -> None:
        accepted = result.records - result.rejected
        if accepted:
            self._accepted[transport, signal].inc(accepted)
        if result.rejected:
            self._metrics.receiver_refused_records.labels(transport, signal, "rejected_by_rules").inc(
                result.rejected
            )
        self._requests[transport, signal, "partial" if result.rejected else "ok"].inc()

    def refuse(
        self,
        signal: SignalName,
        transport: Transport,
        exc: BaseException,
        records: int = 0,
        peer: str | None = None,
    ) -> Refusal:
        """Count and log (rate-limited) a refused request and return how to answer it. ``peer``
        (``host:port``) is for the log only: it tells the operator which client misbehaves."""
        refusal = refusal_for(exc)
        if isinstance(exc, LimitExceededError):
            self._metrics.receiver_limit_violations.labels(transport, exc.limit).inc()
        elif isinstance(exc, TooManyEventsError):
            self._metrics.receiver_limit_violations.labels(transport, "events").inc()
        if records:
            self._metrics.receiver_refused_records.labels(transport, signal, refusal.reason).inc(records)
        self._metrics.receiver_requests.labels(transport, signal, refusal.reason).inc()
        if refusal.reason not in _LOGGED_ELSEWHERE:
            self._refusals.warning(
                refusal.reason,
                reason=refusal.reason,
                transport=transport,
                signal=signal,
                status=_status(refusal, transport),
                error=refusal.message[:_MAX_MESSAGE],
                records=records,
                retry_after=refusal.retry_after,
                peer=peer,
            )
        return refusal


def _status(refusal: Refusal, transport: Transport) -> str | int:
    """The status the sender saw, in its transport's terms."""
    if transport == "grpc":
        name: str = refusal.grpc_code.name  # grpc is untyped
        return name
    return refusal.events_api_status if transport == "events_api" else refusal.http_status
