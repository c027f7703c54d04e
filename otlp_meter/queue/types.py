"""Values the queue hands out: results of appends, leased events, statistics, dead-letter entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from otlp_meter.queue.codec import DeadLetterKind


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one append committed: new events, events dropped as copies, dead letters written."""

    appended: int
    deduplicated: int
    dead_lettered: int


@dataclass(frozen=True, slots=True)
class LeasedEvent:
    """An event handed to an exporter; ``seq`` is what it acks, dead-letters or releases."""

    seq: int
    source: str
    id: str
    payload: bytes
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A consistent-enough snapshot for metrics and ``queue stats``.

    ``depth``/``bytes``/``dead_*``/``corrupt_records``/``dedupe_keys`` describe what is on disk;
    the ``*_total`` counters count since :meth:`LmdbQueue.open` (process lifetime, like any
    Prometheus counter).
    """

    depth: int
    bytes: int
    capacity_bytes: int
    dead_letters: int
    dead_bytes: int
    dead_capacity_bytes: int
    oldest_enqueued_at: float | None
    leased: int
    dedupe_keys: int
    corrupt_records: int
    deduplicated_total: int
    corrupt_total: int
    expired_dedupe_total: int
    evicted_dedupe_total: int
    commits_total: int


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead letter as listed for an operator.

    ``kind`` is ``"corrupt"`` (and ``payload`` the raw stored bytes) if the entry itself cannot be
    decoded; such entries can only be inspected and purged.
    """

    seq: int
    kind: DeadLetterKind | Literal["corrupt"]
    reason: str
    payload: bytes
    source: str
    id: str
    dead_at: float
    attempts: int
    rule: str = ""
