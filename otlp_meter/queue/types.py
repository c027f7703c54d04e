"""Values the queue hands out: results of appends, leased events, statistics, dead-letter entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue.codec import DeadLetterKind, event_attributes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one append committed: new events, events dropped as copies, dead letters written."""

    appended: int
    deduplicated: int
    dead_lettered: int


class LeasedEvent(NamedTuple):
    """An event handed to an exporter; ``seq`` is what it acks, dead-letters or releases.

    A NamedTuple, one per event out: built in a fraction of a frozen dataclass's time, and just as
    immutable. ``source`` and ``id`` are read from the payload when asked for (dead letters and
    logs of refused events need them; delivering does not).
    """

    seq: int
    payload: bytes
    """The CloudEvent JSON object, ready to be joined into a batch body."""
    enqueued_unix_nano: int
    stored_size: int
    """Bytes of the stored record (envelope included): an ack deletes it without reading it back."""

    @property
    def enqueued_at(self) -> float:
        """When the event was committed to the queue (Unix seconds)."""
        return self.enqueued_unix_nano / 1e9

    @property
    def source(self) -> str:
        """The CloudEvents ``source`` (parsed from the payload; "" if it has none)."""
        return event_attributes(self.payload)[0]

    @property
    def id(self) -> str:
        """The CloudEvents ``id`` (parsed from the payload; "" if it has none)."""
        return event_attributes(self.payload)[1]


@dataclass(frozen=True, slots=True)
class Accounting:
    """Totals since the queue was created, committed in the same transactions as the data they
    count, so they are exact after any crash. Two identities hold at every commit:

    * events: ``accepted = delivered + queued + dead_lettered + deduplicated + corrupt``
      (``queued`` is :attr:`QueueStats.depth`; ``accepted`` counts every event handed to the
      queue, copies included, and events replayed from the dead-letter store);
    * dead letters: ``dead letters now = dead_lettered + records_rejected - dead_replayed - dead_purged``.

    Records that matched no rule never reach the queue; they are counted in the metrics only.
    """

    accepted: int
    """Events handed to the queue: by appends (copies included) and by dead-letter replays."""
    deduplicated: int
    """Events dropped at append as copies of a (source, id) seen within the dedupe window."""
    delivered: int
    """Events the destination acknowledged (acked and deleted)."""
    dead_lettered: int
    """Events moved to the dead-letter store: refused by the destination, or expired (max_elapsed)."""
    corrupt: int
    """Stored events that could not be decoded and were moved aside."""
    replayed: int
    """Of ``accepted``: events that came from a dead-letter replay."""
    records_rejected: int
    """Dead letters written for records the rules could not map (at intake or on replay)."""
    dead_replayed: int
    """Dead letters taken out of the store by a replay."""
    dead_purged: int
    """Dead letters deleted by a purge."""
    dedupe_expired: int
    """Dedupe keys forgotten at the end of their window."""
    dedupe_evicted: int
    """Dedupe keys forgotten early because of ``dedupe_max_keys``."""

    def unaccounted_events(self, queued: int) -> int:
        """``accepted`` minus where the events went: 0 unless something else changed the store."""
        return self.accepted - (
            self.delivered + queued + self.dead_lettered + self.deduplicated + self.corrupt
        )

    def unaccounted_dead_letters(self, dead_letters: int) -> int:
        """Like :meth:`unaccounted_events`, for the dead-letter store."""
        kept = self.dead_lettered + self.records_rejected - self.dead_replayed - self.dead_purged
        return kept - dead_letters


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A consistent-enough snapshot for metrics and ``queue stats``.

    ``depth``/``bytes``/``dead_*``/``corrupt_records``/``dedupe_keys``/``accounting`` describe
    what is on disk (read from it, so they include other processes' writes); the ``*_total``
    counters count since :meth:`LmdbQueue.open` (process lifetime, like any Prometheus counter).
    ``full`` is True while intake is refused for lack of space (byte limit or storage): set when
    an append is refused so, cleared when one commits again or a tenth of the bytes drained.
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
    full: bool = False
    storage_used_bytes: int = 0
    """Bytes of LMDB pages in use (events, dedupe keys, dead letters, state), against ``map_size``."""
    map_size: int = 0
    accounting: Accounting | None = None
    """None only for a queue that was never opened."""


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


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """What one dead letter becomes on replay, committed together with its removal.

    ``requeue``: the dead letter is an event and goes back to the queue as it is (no dedupe check:
    it is a deliberate re-send). Otherwise ``events`` and ``rejected`` are what the rules make of
    the record now: the events go through the dedupe window like any append, and each rejection
    becomes a new dead letter in place of the old one (with the new reason).
    """

    dead_seq: int
    events: tuple[EncodedEvent, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    requeue: bool = False


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replay transaction did."""

    replayed: int
    """Dead letters taken out of the store."""
    appended: int
    """Events added to the queue."""
    deduplicated: int
    """Events dropped as copies of events already seen within the dedupe window."""
    rejected: int
    """New dead letters written because the rules still reject the record."""
    missing: int
    """Dead letters already gone (purged or replayed by someone else meanwhile)."""
