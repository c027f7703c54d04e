"""Deterministic event ids: the same record under the same rule always gets the same id.

The id is a BLAKE2b-128 digest (personalization ``otlp-meter.id.v1``) formatted as a version-8
UUID. It covers, in this order, each framed as an 8-byte little-endian length and the bytes:

    resource   Resource.SerializeToString(deterministic=True)
    scope      InstrumentationScope.SerializeToString(deterministic=True)
    signal     b"logs" | b"metrics"
    record     logs:    LogRecord serialized (without observed_time_unix_nano when time_unix_nano is set)
               metrics: metric name, metric type (e.g. b"sum"), data point serialized
    rule       the rule name (UTF-8)

The hashing is staged so each part is fed once: one hasher per resource, copied per scope, copied
per record, copied per rule. Two records that are byte-for-byte identical (same timestamps, same
attributes, same body) under the same resource and scope are one event by design: that is what a
retried export looks like. Changing this layout changes every id, so it is versioned in
``_PERSON``; never change it silently (OpenMeter would count the same usage again). The C extension
builds the same record hashers (``_native.c``: ``record_hasher``); ``tests/unit/rules/test_native.py``
holds the two to the same ids.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import Message
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otlp_meter import native

_PERSON = b"otlp-meter.id.v1"  # BLAKE2b personalization, exactly 16 bytes


class Hasher(Protocol):
    """A BLAKE2b hasher: :mod:`hashlib`'s, or the C extension's (the same digests)."""

    def copy(self) -> Hasher: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def resource_hasher(resource: Message) -> Hasher:
    """A hasher primed with one resource; copy it for each scope below it."""
    hasher: Hasher = native.blake2b(
        _frame(resource.SerializeToString(deterministic=True)), digest_size=16, person=_PERSON
    )
    return hasher


def scope_hasher(parent: Hasher, scope: Message) -> Hasher:
    """A copy of ``parent`` extended with one instrumentation scope."""
    hasher = parent.copy()
    hasher.update(_frame(scope.SerializeToString(deterministic=True)))
    return hasher


_LOGS = _frame(b"logs")
_METRICS = _frame(b"metrics")


def log_record_bytes(record: LogRecord) -> bytes:
    """What :func:`log_record_hasher` covers of a log record: the record serialized.

    When the record has its own ``time_unix_nano``, ``observed_time_unix_nano`` is left out: it is
    when *a collector* saw the record, and a record read twice (a file tailer restarting, an SDK
    re-emitting after a crash) must still be one event.
    """
    observed = record.observed_time_unix_nano
    if observed and record.time_unix_nano:
        record.observed_time_unix_nano = 0
        try:
            return record.SerializeToString(deterministic=True)
        finally:
            record.observed_time_unix_nano = observed
    return record.SerializeToString(deterministic=True)


def log_record_hasher(parent: Hasher, serialized: bytes) -> Hasher:
    """A copy of a scope hasher extended with one log record (``log_record_bytes(record)``)."""
    hasher = parent.copy()
    hasher.update(_LOGS + _frame(serialized))
    return hasher


def metric_key(metric_name: str, metric_type: str) -> bytes:
    """What :func:`point_hasher` feeds for a metric before its point; compute it once per metric."""
    return _METRICS + _frame(metric_name.encode()) + _frame(metric_type.encode())


def point_bytes(point: Message) -> bytes:
    """What :func:`point_hasher` covers of a data point: the point serialized."""
    return point.SerializeToString(deterministic=True)


def point_hasher(parent: Hasher, metric_key: bytes, serialized: bytes) -> Hasher:
    """A copy of a scope hasher extended with one metric data point (``point_bytes(point)``) and
    what names its series (``metric_key(name, type)``)."""
    hasher = parent.copy()
    hasher.update(metric_key + _frame(serialized))
    return hasher


def rule_key(rule_name: str) -> bytes:
    """What :func:`event_id` feeds for a rule; compute it once per rule."""
    return _frame(rule_name.encode())


def event_id(record_hasher: Hasher, rule_key: bytes) -> str:
    """The id of the event the rule (``rule_key(name)``) makes from the record of ``record_hasher``."""
    hasher = record_hasher.copy()
    hasher.update(rule_key)
    return format_uuid8(hasher.digest())


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def format_uuid8(digest: bytes) -> str:
    """Format 16 bytes as a UUID string with the version (8) and RFC 9562 variant bits set."""
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"
