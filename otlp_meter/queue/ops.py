"""The write operations the writer thread applies, each inside a shared (grouped) transaction.

An operation first checks everything that can refuse it alone (byte limits, bad keys) without
writing, raising :class:`Refused`; only then does it write. So a refused operation leaves no trace
and the rest of its group commits, while an LMDB failure part-way through a write fails the whole
group (the transaction is aborted, nothing of it is visible). Operations that only delete
(``grows = False``) are then retried on their own, so deliveries are acknowledged even when the
storage is full.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue import codec
from otlp_meter.queue.group import Group, Refused
from otlp_meter.queue.types import AppendResult, LeasedEvent, ReplayItem, ReplayResult

T = TypeVar("T")

MAX_REASON_CHARS = 16 * 1024
"""A destination's answer can be long; the dead letter keeps the start of it."""


@dataclass(eq=False, slots=True, kw_only=True)
class Op(Generic[T]):
    """One request to the writer; ``future`` (on ``loop``) receives the result, if anyone waits."""

    grows: ClassVar[bool] = False
    """True for operations that need new space (appends, moves); the others only free it."""

    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[T] | None = None

    def apply(self, g: Group) -> T:
        raise NotImplementedError

    def cost(self) -> int:
        """Rough bytes this op writes, to keep one group's transaction bounded."""
        return 64


@dataclass(eq=False, slots=True, kw_only=True)
class AppendOp(Op[AppendResult]):
    grows: ClassVar[bool] = True

    events: Sequence[EncodedEvent]
    rejected: Sequence[Rejection] = ()
    state: Mapping[bytes, bytes | None] = field(default_factory=dict)

    def cost(self) -> int:
        return (
            sum(len(e.payload) + 64 for e in self.events)
            + sum(len(r.original) + len(r.reason) + 64 for r in self.rejected)
            + sum(len(k) + len(v or b"") for k, v in self.state.items())
        )

    def apply(self, g: Group) -> AppendResult:
        seen: set[bytes] = set()
        records: list[tuple[bytes | None, bytes]] = []
        duplicates = 0
        for event in self.events:
            if not event.id or not event.payload:
                raise Refused(ValueError(f"an event needs an id and a payload: {event!r}"))
            key = codec.event_dedupe_key(event.source, event.id) if g.dedupe else None
            if key is not None:
                if key in seen or g.is_duplicate(key):
                    duplicates += 1
                    continue
                seen.add(key)
            records.append((key, codec.encode_event(event, g.now_ns)))
        dead: list[tuple[bytes | None, bytes]] = []
        for rejection in self.rejected:
            key = codec.rejection_dedupe_key(rejection) if g.dedupe else None
            if key is not None:
                if key in seen or g.is_duplicate(key):
                    continue  # the same record was already dead-lettered by an earlier try
                seen.add(key)
            dead.append((key, codec.encode_dead_letter(codec.dead_record_for_rejection(rejection, g.now_ns))))
        for key in self.state:
            if not 0 < len(key) <= g.max_key_size:
                raise Refused(ValueError(f"state keys must be 1..{g.max_key_size} bytes, got {len(key)}"))

        keys = sum(1 for key, _ in records if key) + sum(1 for key, _ in dead if key)
        g.check_room(sum(len(r) for _, r in records), sum(len(r) for _, r in dead), keys)
        for key, record in records:
            g.put_event(record)
            if key is not None:
                g.remember(key)
        for key, record in dead:
            g.put_dead(record)
            if key is not None:
                g.remember(key)
        for key, value in self.state.items():
            if value is None:
                g.txn.delete(key, db=g.h.state)
            else:
                g.txn.put(key, value, db=g.h.state)
        g.deduplicated += duplicates
        g.counters.accepted += len(self.events)
        g.counters.deduplicated += duplicates
        g.counters.records_rejected += len(dead)
        if records and self.loop is not None:
            g.appended_loops.add(self.loop)
        return AppendResult(appended=len(records), deduplicated=duplicates, dead_lettered=len(dead))


@dataclass(eq=False, slots=True, kw_only=True)
class AckOp(Op[None]):
    seqs: Sequence[int]

    def apply(self, g: Group) -> None:
        for seq in self.seqs:
            if g.delete_event(seq):
                g.counters.delivered += 1


@dataclass(eq=False, slots=True, kw_only=True)
class DeadLetterOp(Op[None]):
    grows: ClassVar[bool] = True

    items: Sequence[tuple[LeasedEvent, str]]

    def cost(self) -> int:
        return sum(len(e.payload) + len(reason) + 64 for e, reason in self.items)

    def apply(self, g: Group) -> None:
        moves: dict[int, bytes] = {}
        for event, reason in self.items:
            if event.seq in moves or g.txn.get(codec.seq_key(event.seq), db=g.h.events) is None:
                continue  # already moved in this op, or acked meanwhile
            dead = codec.DeadRecord(
                kind="event",
                source=event.source,
                id=event.id,
                payload=event.payload,
                reason=reason[:MAX_REASON_CHARS],
                attempts=1,
                dead_unix_nano=g.now_ns,
                rule="",
            )
            moves[event.seq] = codec.encode_dead_letter(dead)
        g.check_room(0, sum(len(r) for r in moves.values()))
        for seq, record in moves.items():
            g.delete_event(seq)
            g.put_dead(record)
        g.counters.dead_lettered += len(moves)


@dataclass(eq=False, slots=True, kw_only=True)
class PruneOp(Op[int]):
    """Forget dedupe keys that expired by ``now`` (the group's clock if None), at most ``limit``."""

    now: float | None
    limit: int
    removed: int = 0

    def apply(self, g: Group) -> int:
        now_ns = g.now_ns if self.now is None else int(self.now * 1e9)
        self.removed = g.prune_dedupe(now_ns, self.limit)
        return self.removed


@dataclass(eq=False, slots=True, kw_only=True)
class QuarantineOp(Op[None]):
    """Move undecodable ``events`` records, by raw key, to ``corrupt``; nobody waits for it."""

    keys: Sequence[bytes]

    def apply(self, g: Group) -> None:
        for key in self.keys:
            g.quarantined.append(key)
            raw = g.txn.pop(key, db=g.h.events)
            if raw is None:
                continue
            g.txn.put(key, raw, db=g.h.corrupt)
            g.counters.depth -= 1
            g.counters.size -= len(raw)
            g.counters.corrupt += 1


@dataclass(eq=False, slots=True, kw_only=True)
class PurgeDeadOp(Op[int]):
    """Delete the given dead letters (all of them when ``seqs`` is None)."""

    seqs: Sequence[int] | None

    def apply(self, g: Group) -> int:
        if self.seqs is None:
            count = g.counters.dead_count
            g.txn.drop(g.h.dead, delete=False)
            g.counters.dead_count = 0
            g.counters.dead_size = 0
            g.counters.dead_purged += count
            return count
        purged = sum(1 for seq in set(self.seqs) if g.pop_dead(seq) is not None)
        g.counters.dead_purged += purged
        return purged


@dataclass(eq=False, slots=True, kw_only=True)
class ReplayOp(Op[ReplayResult]):
    """Take dead letters out and put what they become (events, new dead letters) in, atomically.

    A dead letter already gone (purged or replayed by another process meanwhile) is skipped, so
    replaying twice at once cannot queue anything twice.
    """

    grows: ClassVar[bool] = True

    items: Sequence[ReplayItem]

    def cost(self) -> int:
        return sum(
            sum(len(e.payload) + 64 for e in item.events) + sum(len(r.original) + 64 for r in item.rejected)
            for item in self.items
        )

    def apply(self, g: Group) -> ReplayResult:
        present: dict[int, None] = {}  # ordered, and a seq listed twice is taken once
        freed = offered = duplicates = 0
        seen: set[bytes] = set()
        records: list[tuple[bytes | None, bytes]] = []
        dead: list[tuple[bytes | None, bytes]] = []
        for item in self.items:
            raw = g.txn.get(codec.seq_key(item.dead_seq), db=g.h.dead)
            if raw is None or item.dead_seq in present:
                continue
            present[item.dead_seq] = None
            freed += len(raw)
            offered += len(item.events)
            for event in item.events:
                key = codec.event_dedupe_key(event.source, event.id) if g.dedupe else None
                # A requeued event is its own earlier copy: the window remembers it, and must not
                # drop the deliberate re-send.
                if key is not None and not item.requeue and (key in seen or g.is_duplicate(key)):
                    duplicates += 1
                    continue
                if key is not None:
                    seen.add(key)
                records.append((key, codec.encode_event(event, g.now_ns)))
            if item.rejected:
                first_dead_ns, attempts = _history(raw, g.now_ns)
            for rejection in item.rejected:
                key = codec.rejection_dedupe_key(rejection) if g.dedupe else None
                # Keeps when the record first died (replays map it with that time, so they stay
                # deterministic) and counts the attempt.
                letter = codec.dead_record_for_rejection(rejection, first_dead_ns)
                letter = dataclasses.replace(letter, attempts=attempts + 1)
                dead.append((key, codec.encode_dead_letter(letter)))

        keys = sum(1 for key, _ in records if key) + sum(1 for key, _ in dead if key)
        g.check_room(sum(len(r) for _, r in records), max(0, sum(len(r) for _, r in dead) - freed), keys)
        for seq in present:
            g.pop_dead(seq)
        for key, record in records:
            g.put_event(record)
            if key is not None:
                g.remember(key)
        for key, record in dead:
            g.put_dead(record)
            if key is not None:
                g.remember(key)
        c = g.counters
        c.accepted += offered
        c.replayed += offered
        c.deduplicated += duplicates
        c.dead_replayed += len(present)
        c.records_rejected += len(dead)
        g.deduplicated += duplicates
        if records and self.loop is not None:
            g.appended_loops.add(self.loop)
        return ReplayResult(
            replayed=len(present),
            appended=len(records),
            deduplicated=duplicates,
            rejected=len(dead),
            missing=len(self.items) - len(present),
        )


def _history(raw: bytes, now_ns: int) -> tuple[int, int]:
    """(first dead time, attempts) of a stored dead letter; (now, 0) if it cannot be decoded."""
    try:
        old = codec.decode_dead_letter(raw)
    except codec.CorruptRecordError:
        return now_ns, 0
    return old.dead_unix_nano, old.attempts
