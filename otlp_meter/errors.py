"""The exception tree. Every failure a stage can report is one of these.

    OtlpMeterError
    ├── ConfigError            bad configuration or rules; carries one message per YAML path
    ├── PermanentError         the input itself is wrong; retrying the same input cannot help
    │   ├── DecodeError        malformed protobuf / JSON / CloudEvent
    │   │   └── InvalidEventError   a CloudEvent violates the OpenMeter schema; carries (index, field)s
    │   ├── UnsupportedMediaTypeError
    │   ├── PayloadTooLargeError
    │   ├── LimitExceededError a record breaks an attribute limit (count or value size)
    │   └── AuthenticationError missing or wrong credentials
    └── RetryableError         the input is fine but cannot be taken now; carries retry_after (seconds)
        ├── QueueFullError     queue at its byte limit, or the disk is full
        ├── StorageError       LMDB failed for another reason
        ├── StateConflictError another process changed the state an append was mapped against
        └── ShuttingDownError  intake is closed

Receivers translate these into the status table in ``receivers/status.py``; nothing else picks
status codes.
"""

from __future__ import annotations

from collections.abc import Sequence


class OtlpMeterError(Exception):
    """Base of every error otlp-meter raises on purpose."""


class ConfigError(OtlpMeterError):
    """Configuration or rules are invalid. ``problems`` holds ``(yaml_path, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        lines = [f"{prefix}{path or '<root>'}: {message}" for path, message in self.problems]
        super().__init__("\n".join(lines))


class PermanentError(OtlpMeterError):
    """The request is wrong; the sender must not retry it unchanged."""


class DecodeError(PermanentError):
    """The body could not be decoded (malformed protobuf, JSON or CloudEvent)."""


class UnsupportedMediaTypeError(PermanentError):
    """The request's content type or encoding is not one we accept."""


class PayloadTooLargeError(PermanentError):
    """The body exceeds the configured limit (after decompression)."""


class InvalidEventError(DecodeError):
    """CloudEvents that OpenMeter would refuse. ``problems`` holds ``(index, field, message)``;
    ``index`` is None for a single-event body, ``field`` is ``""`` when the event itself is wrong."""

    def __init__(self, problems: Sequence[tuple[int | None, str, str]]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"invalid event: {event_path(first[0], first[1])}: {first[2]}{more}")


def event_path(index: int | None, field: str) -> str:
    """``event[3].subject``, ``event.time`` (single event), ``event[0]`` (the event itself)."""
    where = "event" if index is None else f"event[{index}]"
    return f"{where}.{field}" if field else where


class LimitExceededError(PermanentError):
    """A record exceeds a configured attribute limit; ``limit`` names it (``attributes``,
    ``attribute_value``) for the metrics."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class AuthenticationError(PermanentError):
    """The request carries no credentials, or wrong ones. ``reason`` is ``missing`` or ``invalid``."""

    def __init__(self, reason: str) -> None:
        super().__init__("missing bearer token" if reason == "missing" else "invalid bearer token")
        self.reason = reason


class RetryableError(OtlpMeterError):
    """The request is fine but cannot be accepted now; the sender should retry after ``retry_after``."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(RetryableError):
    """The queue reached its byte limit or the disk is full."""


class StorageError(RetryableError):
    """LMDB failed for a reason other than space."""


class StateConflictError(RetryableError):
    """An append's ``expect`` did not hold: another process (an intake worker) committed state the
    append was computed from since it was read. Nothing of the append was stored; map it again."""


class ShuttingDownError(RetryableError):
    """The service is stopping and takes no new data."""
