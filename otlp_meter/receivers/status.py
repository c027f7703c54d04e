"""The status table (DESIGN.md): how each outcome is answered over gRPC and over HTTP. One place only."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from otlp_meter.errors import (
    DecodeError,
    PayloadTooLargeError,
    QueueFullError,
    RetryableError,
    ShuttingDownError,
    StorageError,
    UnsupportedMediaTypeError,
)
from otlp_meter.telemetry.logging import get_logger

log = get_logger("receiver")

MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """How to refuse a request: gRPC code, HTTP status, message, optional retry delay, metric reason."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    reason: str
    retry_after: float | None = None

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` body (with RetryInfo when retryable)."""
        status = status_pb2.Status(code=self.grpc_code.value[0], message=self.message)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(round(self.retry_after * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status


def _retry_after(exc: RetryableError) -> float:
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, exc.retry_after))


def refusal_for(exc: BaseException) -> Refusal:
    """Map an exception raised while taking a request to its answer."""
    if isinstance(exc, DecodeError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, 400, str(exc), "malformed")
    if isinstance(exc, UnsupportedMediaTypeError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, 415, str(exc), "unsupported_media_type")
    if isinstance(exc, PayloadTooLargeError):
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, str(exc), "too_large")
    if isinstance(exc, QueueFullError):
        return Refusal(grpc.StatusCode.UNAVAILABLE, 503, str(exc), "queue_full", _retry_after(exc))
    if isinstance(exc, ShuttingDownError):
        return Refusal(grpc.StatusCode.UNAVAILABLE, 503, str(exc), "shutting_down", _retry_after(exc))
    if isinstance(exc, StorageError):
        return Refusal(grpc.StatusCode.UNAVAILABLE, 503, str(exc), "storage", _retry_after(exc))
    if isinstance(exc, RetryableError):
        return Refusal(grpc.StatusCode.UNAVAILABLE, 503, str(exc), "unavailable", _retry_after(exc))
    # A bug of ours: nothing was stored, so the sender must keep the data and retry.
    log.exception("receiver_internal_error", error=repr(exc))
    return Refusal(grpc.StatusCode.UNAVAILABLE, 503, "internal error; retry later", "internal", 5.0)


METHOD_NOT_ALLOWED = Refusal(grpc.StatusCode.UNIMPLEMENTED, 405, "only POST is allowed", "method_not_allowed")
NOT_FOUND = Refusal(grpc.StatusCode.UNIMPLEMENTED, 404, "unknown path", "not_found")
