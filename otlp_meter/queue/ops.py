"""The write operations the writer thread applies, each inside a shared (grouped) transaction.

An operation first checks everything that can refuse it alone (byte limits, bad keys) without
writing, raising :class:`Refused`; only then does it write. So a refused operation leaves no trace
and the rest of its group commits, while an LMDB failure part-way through a write fails the whole
group (the transaction is aborted, nothing of it is visible).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue import codec
from otlp_meter.queue.types import AppendResult, LeasedEvent

if TYPE_CHECKING:
    from otlp_meter.queue.writer import Group

T = TypeVar("T")

MAX_REASON_CHARS = 16 * 1024
"""A destination's answer can be long; the dead letter keeps the start of it."""


class Refused(Exception):
    """Raised by :meth:`Op.apply` before writing anything: this operation fails with ``error`` alone."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(eq=False, slots=True, kw_only=True)
class Op(Generic[T]):
    """One request to the writer; ``future`` (on ``loop``) receives the result, if anyone waits."""

    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[T] | None = None

    def apply(self, g: Group) -> T:
        raise NotImplementedError

    def cost(self) -> int:
        """Rough bytes this op writes, to keep one group's transaction bounded."""
        return 64


@dataclass(eq=False, slots=True, kw_only=True)
class AppendOp(Op[AppendResult]):
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

        g.check_room(sum(len(r) for _, r in records), sum(len(r) for _, r in dead))
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
        if records and self.loop is not None:
            g.appended_loops.add(self.loop)
        return AppendResult(appended=len(records), deduplicated=duplicates, dead_lettered=len(dead))


@dataclass(eq=False, slots=True, kw_only=True)
class AckOp(Op[None]):
    seqs: Sequence[int]

    def apply(self, g: Group) -> None:
        for seq in self.seqs:
            g.delete_event(seq)


@dataclass(eq=False, slots=True, kw_only=True)
class DeadLetterOp(Op[None]):
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
            return count
        purged = 0
        for seq in set(self.seqs):
            raw = g.txn.pop(codec.seq_key(seq), db=g.h.dead)
            if raw is not None:
                purged += 1
                g.counters.dead_count -= 1
                g.counters.dead_size -= len(raw)
        return purged
