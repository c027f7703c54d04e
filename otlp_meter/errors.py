"""The exception tree. Every failure a stage can report is one of these.

    OtlpMeterError
    ├── ConfigError            bad configuration or rules; carries one message per YAML path
    ├── PermanentError         the input itself is wrong; retrying the same input cannot help
    │   ├── DecodeError        malformed protobuf / JSON / CloudEvent
    │   ├── UnsupportedMediaTypeError
    │   └── PayloadTooLargeError
    └── RetryableError         the input is fine but cannot be taken now; carries retry_after (seconds)
        ├── QueueFullError     queue at its byte limit, or the disk is full
        ├── StorageError       LMDB failed for another reason
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


class RetryableError(OtlpMeterError):
    """The request is fine but cannot be accepted now; the sender should retry after ``retry_after``."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(RetryableError):
    """The queue reached its byte limit or the disk is full."""


class StorageError(RetryableError):
    """LMDB failed for a reason other than space."""


class ShuttingDownError(RetryableError):
    """The service is stopping and takes no new data."""
