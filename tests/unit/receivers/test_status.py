"""The status table (DESIGN.md "Status table"): every failure kind has one answer per transport.

Permanent errors (the request itself is wrong) never carry RetryInfo, so senders drop them;
retryable ones always do, with a delay of 1 to 30 s, so senders keep the data and come back.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from otlp_meter.errors import (
    AuthenticationError,
    DecodeError,
    InvalidEventError,
    LimitExceededError,
    PayloadTooLargeError,
    QueueFullError,
    RetryableError,
    ShuttingDownError,
    StorageError,
    UnsupportedMediaTypeError,
)
from otlp_meter.http_server import RequestTimeoutError
from otlp_meter.receivers.status import METHOD_NOT_ALLOWED, NOT_FOUND, Refusal, refusal_for

Code = grpc.StatusCode
TABLE: list[tuple[BaseException, grpc.StatusCode, int, str, bool]] = [
    (DecodeError("bad protobuf"), Code.INVALID_ARGUMENT, 400, "malformed", False),
    (UnsupportedMediaTypeError("text/plain"), Code.INVALID_ARGUMENT, 415, "unsupported_media_type", False),
    (PayloadTooLargeError("too big"), Code.RESOURCE_EXHAUSTED, 413, "too_large", False),
    (QueueFullError("queue full"), Code.UNAVAILABLE, 503, "queue_full", True),
    (ShuttingDownError("stopping"), Code.UNAVAILABLE, 503, "shutting_down", True),
    (StorageError("lmdb failed"), Code.UNAVAILABLE, 503, "storage", True),
    (RetryableError("later"), Code.UNAVAILABLE, 503, "unavailable", True),
    (RuntimeError("a bug of ours"), Code.UNAVAILABLE, 503, "internal", True),
    (InvalidEventError([(1, "subject", "is required")]), Code.INVALID_ARGUMENT, 400, "malformed", False),
    (
        LimitExceededError("too many attributes", "attributes"),
        Code.INVALID_ARGUMENT,
        400,
        "limit_exceeded",
        False,
    ),
    (AuthenticationError("invalid"), Code.UNAUTHENTICATED, 401, "unauthenticated", False),
    (RequestTimeoutError("slow body"), Code.UNAVAILABLE, 503, "timeout", True),  # OTLP clients retry 503
]


def retry_info(refusal: Refusal) -> error_details_pb2.RetryInfo | None:
    """The RetryInfo detail of the refusal's google.rpc.Status, or None (at most one allowed)."""
    infos = []
    for detail in refusal.to_status().details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) <= 1
    return infos[0] if infos else None


@pytest.mark.parametrize(
    ("exc", "grpc_code", "http_status", "reason", "retryable"),
    TABLE,
    ids=[type(row[0]).__name__ for row in TABLE],
)
def test_each_failure_kind_has_one_answer_per_transport(
    exc: BaseException, grpc_code: grpc.StatusCode, http_status: int, reason: str, retryable: bool
) -> None:
    refusal = refusal_for(exc)

    assert (refusal.grpc_code, refusal.http_status, refusal.reason) == (grpc_code, http_status, reason)
    status = refusal.to_status()
    assert status.code == grpc_code.value[0]
    assert status.message == refusal.message
    if retryable:
        assert refusal.retry_after is not None
        assert 1.0 <= refusal.retry_after <= 30.0
        info = retry_info(refusal)
        assert info is not None
        assert 1 <= info.retry_delay.ToTimedelta().total_seconds() <= 30
    else:
        assert refusal.retry_after is None
        assert retry_info(refusal) is None


def test_messages_of_our_errors_reach_the_sender_but_a_bug_does_not_leak_its_details() -> None:
    assert refusal_for(DecodeError("malformed ExportLogsServiceRequest")).message == (
        "malformed ExportLogsServiceRequest"
    )
    assert "secret-internal-state" not in refusal_for(RuntimeError("secret-internal-state")).message


@pytest.mark.parametrize(
    ("asked", "answered"),
    [(0.0, 1.0), (0.2, 1.0), (1.0, 1.0), (7.0, 7.0), (30.0, 30.0), (60.0, 30.0), (float("inf"), 30.0)],
)
def test_the_retry_delay_is_the_errors_own_clamped_to_1_to_30_seconds(asked: float, answered: float) -> None:
    refusal = refusal_for(QueueFullError("full", retry_after=asked))

    assert refusal.retry_after == answered
    info = retry_info(refusal)
    assert info is not None
    assert info.retry_delay.ToTimedelta().total_seconds() == answered


def test_a_fractional_retry_delay_keeps_its_fraction_in_retry_info() -> None:
    refusal = refusal_for(StorageError("busy", retry_after=2.5))

    info = retry_info(refusal)
    assert info is not None
    assert info.retry_delay == Duration(seconds=2, nanos=500_000_000)


def test_wrong_method_and_unknown_path_are_permanent() -> None:
    assert (METHOD_NOT_ALLOWED.http_status, METHOD_NOT_ALLOWED.retry_after) == (405, None)
    assert (NOT_FOUND.http_status, NOT_FOUND.retry_after) == (404, None)
    assert retry_info(METHOD_NOT_ALLOWED) is None
    assert retry_info(NOT_FOUND) is None


@pytest.mark.parametrize(("exc", "_grpc", "http_status", "_reason", "_retryable"), TABLE)
def test_the_events_api_answers_like_otlp_http_except_a_content_type_is_400_as_openmeter_does(
    exc: BaseException, _grpc: object, http_status: int, _reason: str, _retryable: bool
) -> None:
    expected = 400 if isinstance(exc, UnsupportedMediaTypeError) else http_status

    assert refusal_for(exc).events_api_status == expected
