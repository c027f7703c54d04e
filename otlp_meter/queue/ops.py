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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from otlp_meter.errors import StateConflictError
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
    """Events, dead letters for rejected records and ``state`` puts (None deletes), atomically.

    ``expect``: state values that must be stored when the op applies (None: absent), else it is
    refused with StateConflictError before anything is written (optimistic concurrency between
    processes appending to one queue; earlier ops of the same transaction count).
    """

    grows: ClassVar[bool] = True

    events: Sequence[EncodedEvent]
    rejected: Sequence[Rejection] = ()
    state: Mapping[bytes, bytes | None] = field(default_factory=dict)
    expect: Mapping[bytes, bytes | None] = field(default_factory=dict)

    def cost(self) -> int:
        return (
            sum(len(e.payload) + 64 for e in self.events)
            + sum(len(r.original) + len(r.reason) + 64 for r in self.rejected)
            + sum(len(k) + len(v or b"") for k, v in self.state.items())
        )

    def apply(self, g: Group) -> AppendResult:
        events = self.events
        for event in events:
            if not event.id or not event.payload:
                raise Refused(ValueError(f"an event needs an id and a payload: {event!r}"))
        for key in self.state:
            if not 0 < len(key) <= g.max_key_size:
                raise Refused(ValueError(f"state keys must be 1..{g.max_key_size} bytes, got {len(key)}"))
        for key, expected in self.expect.items():
            if g.txn.get(key, db=g.h.state) != expected:
                raise Refused(StateConflictError(f"state {key!r} changed since it was read"))
        remembered: list[bytes] = []
        dead: list[bytes] = []
        ordered = False
        if g.dedupe:
            # The whole request's keys are looked up at once (see Group.window).
            keys, legacy = g.event_keys(events)
            rejection_keys = [codec.rejection_dedupe_key(r) for r in self.rejected]
            distinct, seen = g.window(keys + rejection_keys)
            # Shortly after an upgrade to schema 3: copies of events remembered before it.
            old = g.window(legacy)[1] if legacy is not None else set()
            if not seen and not old and len(distinct) == len(keys) + len(rejection_keys):
                # The usual case: all new, no copies within the request either.
                payloads = [e.payload for e in events]
                dead = [_rejection_letter(r, g.now_ns) for r in self.rejected]
                remembered, ordered = distinct, True
            else:
                payloads = []
                for n, (event, key) in enumerate(zip(events, keys, strict=True)):
                    if key in seen:  # a copy: of one in the window, or of one earlier in this request
                        continue
                    if old and legacy is not None and legacy[n] in old:
                        continue  # a copy of one remembered before the upgrade, in its window
                    seen.add(key)
                    remembered.append(key)
                    payloads.append(event.payload)
                for rejection, key in zip(self.rejected, rejection_keys, strict=True):
                    if key in seen:
                        continue  # the same record was already dead-lettered by an earlier try
                    seen.add(key)
                    remembered.append(key)
                    dead.append(_rejection_letter(rejection, g.now_ns))
        else:
            payloads = [event.payload for event in events]
            dead = [_rejection_letter(rejection, g.now_ns) for rejection in self.rejected]
        duplicates = len(events) - len(payloads)
        records = codec.encode_groups(payloads, g.now_ns, g.group_events)

        puts = [len(key) + len(value) for key, value in self.state.items() if value is not None]
        g.check_room(sum(map(len, records)), sum(map(len, dead)), len(remembered) + len(puts), sum(puts))
        g.put_groups(records, len(payloads))
        for record in dead:
            g.put_dead(record)
        g.remember(remembered, ordered=ordered)
        for key, value in self.state.items():
            if value is None:
                g.txn.delete(key, db=g.h.state)
            else:
                g.txn.put(key, value, db=g.h.state)
        g.deduplicated += duplicates
        g.counters.accepted += len(events)
        g.counters.deduplicated += duplicates
        g.counters.records_rejected += len(dead)
        if payloads and self.loop is not None:
            g.appended_loops.add(self.loop)
        return AppendResult(appended=len(payloads), deduplicated=duplicates, dead_lettered=len(dead))


def _rejection_letter(rejection: Rejection, now_ns: int) -> bytes:
    return codec.encode_dead_letter(codec.dead_record_for_rejection(rejection, now_ns))


@dataclass(eq=False, slots=True, kw_only=True)
class AckOp(Op[None]):
    """Delete delivered events (any order, repeats and gone ones counted once; see
    :meth:`Group.delete_events`). It only frees space, except that the rest of a group acked in
    part is written back (at most :data:`~otlp_meter.queue.codec.BYTES_PER_GROUP`, which the
    headroom kept for deletes covers)."""

    seqs: Sequence[int]

    def cost(self) -> int:
        return 16 * len(self.seqs)

    def apply(self, g: Group) -> None:
        g.counters.delivered += g.delete_events(self.seqs)


@dataclass(eq=False, slots=True, kw_only=True)
class DeadLetterOp(Op[None]):
    grows: ClassVar[bool] = True

    items: Sequence[tuple[LeasedEvent, str]]

    def cost(self) -> int:
        return sum(len(e.payload) + len(reason) + 64 for e, reason in self.items)

    def apply(self, g: Group) -> None:
        moves: dict[int, bytes] = {}  # seq → dead letter
        stored = g.stored(event.seq for event, _reason in self.items)
        for event, reason in self.items:
            if event.seq in moves or event.seq not in stored:
                continue  # already moved in this op, or acked meanwhile
            source, id = codec.event_attributes(event.payload)
            dead = codec.DeadRecord(
                kind="event",
                source=source,
                id=id,
                payload=event.payload,
                reason=reason[:MAX_REASON_CHARS],
                attempts=1,
                dead_unix_nano=g.now_ns,
                rule="",
            )
            moves[event.seq] = codec.encode_dead_letter(dead)
        g.check_room(0, sum(map(len, moves.values())))
        g.delete_events(list(moves))
        for record in moves.values():
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


StatePlan = Callable[
    [Callable[[bytes], bytes | None], Callable[[bytes], Iterator[tuple[bytes, bytes]]]],
    tuple[Mapping[bytes, bytes | None], T],
]
"""``plan(get, scan)`` → (state puts, None deletes; a result). ``get(key)`` reads a state value,
``scan(start)`` yields (key, value) from the first key ≥ ``start`` in key order; both read the
transaction the puts are committed in."""


@dataclass(eq=False, slots=True, kw_only=True)
class StateSweepOp(Op[T]):
    """State changes decided from the state database as it is in this very transaction (earlier
    ops of the group included), e.g. deleting what expired: the caller owns the decision (``plan``,
    which must only read), the queue reads and writes. If ``plan`` raises, this op fails alone and
    writes nothing. It only deletes, or overwrites small values: ``grows`` is False."""

    plan: StatePlan[T]

    def cost(self) -> int:
        return 64 * 1024

    def apply(self, g: Group) -> T:
        txn, db = g.txn, g.h.state

        def get(key: bytes) -> bytes | None:
            value: bytes | None = txn.get(key, db=db)
            return value

        def scan(start: bytes) -> Iterator[tuple[bytes, bytes]]:
            cursor = txn.cursor(db=db)
            if not cursor.set_range(start):
                return iter(())
            return cursor.iternext(keys=True, values=True)

        try:
            updates, result = self.plan(get, scan)
        except Exception as exc:
            raise Refused(exc) from exc
        for key in updates:
            if not 0 < len(key) <= g.max_key_size:
                raise Refused(ValueError(f"state keys must be 1..{g.max_key_size} bytes, got {len(key)}"))
        puts = [len(key) + len(value) for key, value in updates.items() if value is not None]
        g.check_room(0, 0, len(puts), sum(puts))  # deletes reserve nothing; a watermark, a little
        for key, value in updates.items():
            if value is None:
                txn.delete(key, db=db)
            else:
                txn.put(key, value, db=db)
        return result


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
            # A group goes with all its events: as many as its header says, if it can be read, but
            # no more than the sequences up to the next record (a damaged header can claim any).
            events = min(codec.record_count(raw), g.counters.depth)
            if len(key) == 8:
                after = g.txn.cursor(db=g.h.events)
                following = codec.key_seq(after.key()) if after.set_range(key) else g.counters.next_seq
                events = min(events, max(1, following - codec.key_seq(key)))
            g.counters.depth -= events
            g.counters.size -= len(raw)
            g.counters.corrupt += events


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
        present: dict[int, bytes] = {}  # ordered, and a seq listed twice is taken once
        items: list[ReplayItem] = []
        for item in self.items:
            raw = g.txn.get(codec.seq_key(item.dead_seq), db=g.h.dead)
            if raw is None or item.dead_seq in present:
                continue
            present[item.dead_seq] = raw
            items.append(item)
        freed = sum(map(len, present.values()))
        offered = sum(len(item.events) for item in items)
        both = [g.event_keys(item.events) if g.dedupe else ([], None) for item in items]
        keys = [item_keys for item_keys, _legacy in both]
        # A requeued event is its own earlier copy: the window remembers it, and must not drop the
        # deliberate re-send; so only the others are looked up (their old-format keys too, shortly
        # after an upgrade to schema 3; those are never remembered).
        _distinct, seen = g.window(
            k for item, item_keys in zip(items, keys, strict=True) if not item.requeue for k in item_keys
        )
        old = g.window(
            k
            for item, (_keys, legacy) in zip(items, both, strict=True)
            if not item.requeue
            for k in legacy or ()
        )[1]
        remembered: list[bytes] = []
        payloads: list[bytes] = []
        dead: list[bytes] = []
        for item, (item_keys, item_legacy) in zip(items, both, strict=True):
            for n, event in enumerate(item.events):
                if item_keys:
                    key = item_keys[n]
                    if not item.requeue and (
                        key in seen or (item_legacy is not None and item_legacy[n] in old)
                    ):
                        continue
                    seen.add(key)
                    remembered.append(key)
                payloads.append(event.payload)
            if item.rejected:
                first_dead_ns, attempts = _history(present[item.dead_seq], g.now_ns)
            for rejection in item.rejected:
                if g.dedupe:
                    remembered.append(codec.rejection_dedupe_key(rejection))
                # Keeps when the record first died (replays map it with that time, so they stay
                # deterministic) and counts the attempt.
                letter = codec.dead_record_for_rejection(rejection, first_dead_ns)
                letter = dataclasses.replace(letter, attempts=attempts + 1)
                dead.append(codec.encode_dead_letter(letter))
        duplicates = offered - len(payloads)
        records = codec.encode_groups(payloads, g.now_ns, g.group_events)

        g.check_room(sum(map(len, records)), max(0, sum(map(len, dead)) - freed), len(remembered))
        for seq in present:
            g.pop_dead(seq)
        g.put_groups(records, len(payloads))
        for record in dead:
            g.put_dead(record)
        g.remember(remembered)
        c = g.counters
        c.accepted += offered
        c.replayed += offered
        c.deduplicated += duplicates
        c.dead_replayed += len(present)
        c.records_rejected += len(dead)
        g.deduplicated += duplicates
        if payloads and self.loop is not None:
            g.appended_loops.add(self.loop)
        return ReplayResult(
            replayed=len(present),
            appended=len(payloads),
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
