"""Values the queue hands out: results of appends, leased events, statistics, dead-letter entries."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, overload

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
    """Bytes the event takes in its stored group: its payload and its length."""

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


class LeasedBatch(Sequence[LeasedEvent]):
    """What one :meth:`LmdbQueue.lease` hands out, as parallel lists (struct of arrays).

    The exporter's path reads the lists: ``payloads`` are joined into the request body, ``seqs``
    acked, with no object built per event (a tuple per event out, kept until its ack, was most of
    the garbage collector's work during a drain). It is also a read-only sequence of
    :class:`LeasedEvent` for everything else (dead letters, logs, tests), built on access.

    ``runs`` maps positions to enqueue times without a value per event: ``(index, enqueued ns)``,
    one entry wherever the time changes (events of one commit share it), ``index`` ascending.
    The lists are filled by :mod:`otlp_meter.queue.leases` and must not be changed afterwards.
    """

    __slots__ = ("payload_bytes", "payloads", "runs", "seqs", "sizes")

    def __init__(
        self,
        seqs: list[int] | None = None,
        payloads: list[bytes] | None = None,
        sizes: list[int] | None = None,
        runs: list[tuple[int, int]] | None = None,
    ) -> None:
        self.seqs: list[int] = [] if seqs is None else seqs
        self.payloads: list[bytes] = [] if payloads is None else payloads
        self.sizes: list[int] = [] if sizes is None else sizes
        """Bytes each event takes in its stored group (:attr:`LeasedEvent.stored_size`)."""
        self.runs: list[tuple[int, int]] = [] if runs is None else runs
        self.payload_bytes = sum(map(len, self.payloads))

    @classmethod
    def of(cls, events: Sequence[LeasedEvent]) -> LeasedBatch:
        """A batch of ``events`` (in that order)."""
        runs: list[tuple[int, int]] = []
        for n, event in enumerate(events):
            if not runs or runs[-1][1] != event.enqueued_unix_nano:
                runs.append((n, event.enqueued_unix_nano))
        return cls(
            [e.seq for e in events], [e.payload for e in events], [e.stored_size for e in events], runs
        )

    def __len__(self) -> int:
        return len(self.seqs)

    def __bool__(self) -> bool:
        return bool(self.seqs)

    @overload
    def __getitem__(self, index: int) -> LeasedEvent: ...

    @overload
    def __getitem__(self, index: slice) -> LeasedBatch: ...

    def __getitem__(self, index: int | slice) -> LeasedEvent | LeasedBatch:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self.seqs))
            if step != 1:
                return LeasedBatch.of([self[n] for n in range(start, stop, step)])
            runs: list[tuple[int, int]] = []
            first = self._run_at(start)
            if stop > start and first >= 0:
                runs.append((0, self.runs[first][1]))
                runs += [(at - start, ns) for at, ns in self.runs[first + 1 :] if at < stop]
            return LeasedBatch(self.seqs[start:stop], self.payloads[start:stop], self.sizes[start:stop], runs)
        n = range(len(self.seqs))[index]  # IndexError, negative indexes
        return LeasedEvent(self.seqs[n], self.payloads[n], self._enqueued(n), self.sizes[n])

    def __iter__(self) -> Iterator[LeasedEvent]:
        runs, next_run, enqueued = self.runs, 0, 0
        for n, (seq, payload, size) in enumerate(zip(self.seqs, self.payloads, self.sizes, strict=True)):
            while next_run < len(runs) and runs[next_run][0] <= n:
                enqueued = runs[next_run][1]
                next_run += 1
            yield LeasedEvent(seq, payload, enqueued, size)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside, like a list

    def __repr__(self) -> str:
        return f"LeasedBatch({list(self)!r})"

    def _run_at(self, n: int) -> int:
        """Index in ``runs`` of the run that position ``n`` is in (-1: none)."""
        return bisect_right(self.runs, n, key=_run_start) - 1

    def _enqueued(self, n: int) -> int:
        at = self._run_at(n)
        return self.runs[at][1] if at >= 0 else 0


def _run_start(run: tuple[int, int]) -> int:
    return run[0]


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
