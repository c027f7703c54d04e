"""The status table (DESIGN.md): how each outcome is answered over gRPC, OTLP/HTTP and the events
API. One place only.

| condition                              | gRPC                    | OTLP/HTTP    | events API    |
|----------------------------------------|-------------------------|--------------|---------------|
| accepted                               | OK                      | 200          | 204 v1 / 202 v3 |
| malformed body, invalid CloudEvent     | INVALID_ARGUMENT        | 400          | 400           |
| a record breaks an attribute limit     | INVALID_ARGUMENT        | 400          | (n/a)         |
| unsupported Content-Type/-Encoding     | INVALID_ARGUMENT        | 415          | 400 (as OpenMeter) |
| body too large, too many events        | RESOURCE_EXHAUSTED      | 413          | 413           |
| body not received within read_timeout  | (n/a)                   | 503 + Retry-After | 503 + Retry-After |
| missing/invalid bearer token           | UNAUTHENTICATED         | 401          | 401           |
| queue full, storage, stopping, our bug | UNAVAILABLE + RetryInfo | 503 + Retry-After | 503 + Retry-After |

OTLP error bodies are ``google.rpc.Status``; the events API answers ``application/problem+json``
(RFC 7807) like OpenMeter.

A body that arrives too slowly is answered 503, not 408: OTLP clients retry only 429, 502, 503 and
504 (the OTLP specification), so a 408 would make an SDK or an upstream Collector drop the data —
usage lost to a slow link. (A request *head* that does not arrive in ``read_header_timeout`` is
answered 408 by the HTTP server: nothing is known of it yet, and real clients send heads at once.)
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from otlp_meter.errors import (
    AuthenticationError,
    DecodeError,
    LimitExceededError,
    PayloadTooLargeError,
    QueueFullError,
    RetryableError,
    ShuttingDownError,
    StorageError,
    UnsupportedMediaTypeError,
)
from otlp_meter.http_server import RequestTimeoutError
from otlp_meter.telemetry.logging import get_logger

log = get_logger("receiver")

MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 30.0
SLOW_BODY_RETRY_AFTER = 5.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """How to refuse a request: gRPC code, HTTP status (OTLP/HTTP), events API status, message,
    optional retry delay, metric reason."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    reason: str
    retry_after: float | None = None
    events_status: int = 0
    """The events API's status; 0 means the same as ``http_status``."""

    @property
    def events_api_status(self) -> int:
        return self.events_status or self.http_status

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
    if isinstance(exc, AuthenticationError):
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, 401, str(exc), "unauthenticated")
    if isinstance(exc, DecodeError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, 400, str(exc), "malformed")
    if isinstance(exc, LimitExceededError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, 400, str(exc), "limit_exceeded")
    if isinstance(exc, UnsupportedMediaTypeError):
        # OpenMeter answers a content type it does not take with 400; its clients expect that.
        return Refusal(
            grpc.StatusCode.INVALID_ARGUMENT, 415, str(exc), "unsupported_media_type", events_status=400
        )
    if isinstance(exc, PayloadTooLargeError):
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, str(exc), "too_large")
    if isinstance(exc, RequestTimeoutError):
        return Refusal(grpc.StatusCode.UNAVAILABLE, 503, str(exc), "timeout", SLOW_BODY_RETRY_AFTER)
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
