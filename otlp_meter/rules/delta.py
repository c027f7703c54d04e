"""Cumulative → delta: the increase of each cumulative stream since its last point, billing-safe.

A *stream* is one series of points: resource, instrumentation scope, metric name, unit and type,
and the point's attributes (in any order). For cumulative monotonic sums and cumulative
(exponential) histograms the engine replaces each point by the increase since the stream's
previous point; rules only ever see deltas. Per stream it remembers a :class:`StreamState`
(start time, time and value of the last point seen) in :class:`StreamStates`: plain data that
the pipeline commits to the queue's ``state`` database in the same transaction as the events, so
a restart neither bills an increase again nor skips one.

Per point, in order (``docs/rules.md`` has the operator's version):

* no state yet: a stream that started before the watermark :data:`EXPIRED_BEFORE_KEY` may be
  one whose state was expired (:func:`expire_streams`): its point is dropped, and remembered only
  if it is not older than the watermark. Otherwise the *first point* policy (``initial_value``)
  decides. ``keep`` bills the whole value, ``drop`` only remembers it, ``auto`` keeps it when the
  stream started (its start time) after the collector first started (persisted under
  :data:`FIRST_START_KEY`), else drops it.
* ``time`` not after the last seen time: a duplicate (a retried export, a copy from a second
  path) or out of order: no event, state unchanged. So the same request twice bills once.
* a reset: a newer run (start time later than the stored one and not before the last point) or a
  value that went down (a sum's value; a histogram's count — its sum may go down when negative
  values are recorded): the whole value is the increase.
* otherwise the difference, never negative. A histogram's sum is carried only when both points
  have one (a sum that appears is a new base, not an increase).
* a point no counter can have — a negative value of a monotonic sum, a value or histogram sum
  that is NaN or infinite — raises :class:`InvalidPoint` (the engine dead-letters the point; the
  stream's state is left as it was).

An increase of zero (including a first or reset point whose value is zero) makes no event and
counts as ``unchanged``; the state still moves on.

Streams end (a pod's new ``service.instance.id``, a changed label set) and their states would stay
forever: :func:`expire_streams` deletes the states whose last point is older than a horizon, and
raises the watermark to it in the same transaction. A forgotten stream's points are all older
than the watermark, so a stream that started at or after it cannot have been forgotten; one that
started before it may have been, and must not bill its history again.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
)

from otlp_meter import native
from otlp_meter.rules import ids
from otlp_meter.rules.attributes import attribute_list, key_of
from otlp_meter.rules.views import ScopeState

InitialValue = Literal["auto", "keep", "drop"]
Outcome = Literal["converted", "reset", "first_kept", "first_dropped", "duplicate", "unchanged", "no_value"]
Load = Callable[[bytes], bytes | None]
Scan = Callable[[bytes], Iterator[tuple[bytes, bytes]]]
"""``scan(start)``: committed (key, value) pairs from the first key ≥ ``start``, in key order."""
CumulativePoint = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint

KEY_PREFIX = b"delta/"
"""Every key this module writes starts with this (stream keys: prefix + 16-byte digest)."""
FIRST_START_KEY = b"delta/first-start"
"""When the collector first started (Unix ns, 8 bytes big-endian), for the ``auto`` policy."""
EXPIRED_BEFORE_KEY = b"delta/expired-before"
"""The watermark (Unix ns, 8 bytes big-endian; absent: 0): streams whose last point is older may
have been expired. It only grows: the horizon of the latest :func:`expire_streams` that deleted."""

_PERSON = b"otlp-meter.st.v1"  # stream keys' BLAKE2b personalization; changing it forgets all state
_NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE: a staleness marker, not a value
_VERSION = 1
_HEAD = struct.Struct(">BcQQ")  # version, kind, start, time
_INT = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_HIST = struct.Struct(">Qd?")  # count, sum, has sum
_ABSENT = object()
_INFINITY = float("inf")
_STREAM_KEY_SIZE = len(KEY_PREFIX) + 16


class InvalidPoint(ValueError):
    """A cumulative point whose value no counter can have (the reason says which)."""


class StreamState(NamedTuple):
    """The last point seen of one stream. Sums keep ``value``; histograms ``count`` and ``value``
    (their sum, ``has_sum`` false when the producer sent none). A named tuple, not a frozen
    dataclass: one is made per cumulative point, and this is several times cheaper to make."""

    start: int
    time: int
    value: int | float
    count: int = -1  # type: ignore[assignment]  # shadows tuple.count, which nothing here calls
    has_sum: bool = True

    def encode(self) -> bytes:
        """Versioned bytes for the state database."""
        if self.count >= 0:
            return _HEAD.pack(_VERSION, b"h", self.start, self.time) + _HIST.pack(
                self.count, float(self.value), self.has_sum
            )
        if isinstance(self.value, int):
            return _HEAD.pack(_VERSION, b"i", self.start, self.time) + _INT.pack(self.value)
        return _HEAD.pack(_VERSION, b"d", self.start, self.time) + _DOUBLE.pack(self.value)

    @classmethod
    def decode(cls, raw: bytes) -> StreamState | None:
        """The state in ``raw``, or None when it is not one this version wrote (start afresh)."""
        try:
            version, kind, start, time = _HEAD.unpack_from(raw)
            body = raw[_HEAD.size :]
            if version != _VERSION:
                return None
            if kind == b"i":
                return cls(start, time, _INT.unpack(body)[0])
            if kind == b"d":
                return cls(start, time, _DOUBLE.unpack(body)[0])
            if kind == b"h":
                count, total, has_sum = _HIST.unpack(body)
                return cls(start, time, total, count, has_sum)
        except struct.error:
            pass
        return None


@dataclass(frozen=True, slots=True)
class StateChange:
    """What one mapping changed: ``updates`` for the state database, the rollback token, and what
    the database must still hold for the updates to be right (``StreamStates``: ``expect``)."""

    updates: dict[bytes, bytes | None]
    token: int
    expect: dict[bytes, bytes | None] = field(default_factory=dict)


class StreamStates:
    """Stream states in memory (an LRU of ``max_streams``) over the durable ``state`` database.

    ``load`` reads a committed value (the pipeline passes ``LmdbQueue.get_state``); without it the
    states live in memory only (the dry run, tests). ``started_ns`` is now: it becomes the
    collector's *first start* when the database has none yet.

    Protocol, one mapping at a time (callers serialize; this class is not thread-safe)::

        states.begin()                # the engine's map_metrics does begin ... finish
        ... get / put ...
        change = states.finish()      # change.updates go into the same append as the events
        # if the append fails (or its outcome is unknown):
        states.rollback(change.token) # memory agrees with the database again

    Keys read during a mapping stay in memory until the next ``begin`` so a mapping never reads
    back an older committed value of a key it changed.

    Another process may commit states of the same streams (intake workers share the queue), so
    memory may be stale. ``finish`` also returns ``expect``: the stored value each state the
    mapping read had when it read it (from memory or from the database), and the first-start time
    and watermark as read. The append commits only if the database still holds exactly those
    (else ``StateConflictError``: nothing stored; reload and map again). Processes that touch
    different streams never conflict.
    """

    def __init__(self, load: Load | None = None, *, started_ns: int, max_streams: int = 100_000) -> None:
        self._load = load
        self._max = max(1, max_streams)
        self._memory: OrderedDict[bytes, StreamState] = OrderedDict()
        self._undo: dict[bytes, object] | None = None  # key → state before this mapping, or _ABSENT
        self._updates: dict[bytes, bytes | None] = {}
        self._read: dict[bytes, StreamState | bytes | None] = {}
        """Each key the mapping read → what it read: a state from memory, or the stored bytes."""
        # (token, undo, the first-start time as read if this mapping wrote it, else _ABSENT)
        self._last: tuple[int, dict[bytes, object], object] | None = None
        self._token = 0
        raw = load(FIRST_START_KEY) if load is not None else None
        self._meta: dict[bytes, bytes | None] = {}
        """The first-start time and the watermark as stored when read (what ``expect`` checks)."""
        if load is not None:
            self._meta = {FIRST_START_KEY: raw, EXPIRED_BEFORE_KEY: load(EXPIRED_BEFORE_KEY)}
        self._first_start_pending = raw is None or len(raw) != 8
        self.first_start_ns = started_ns if self._first_start_pending else int.from_bytes(raw, "big")  # type: ignore[arg-type]
        """When the collector first started (persisted), or ``started_ns`` on a first start."""
        self.expired_before_ns = _read_ns(self._meta.get(EXPIRED_BEFORE_KEY))
        """The watermark as read (:data:`EXPIRED_BEFORE_KEY`): streams that started earlier may
        have been forgotten. A cache is only as current as this: reload after an expiry."""

    def __len__(self) -> int:
        return len(self._memory)

    def begin(self) -> None:
        """Start collecting the changes of one mapping; trims memory to ``max_streams`` first."""
        if self._undo is not None:
            raise RuntimeError("a mapping is already in progress")
        self._last = None  # the previous mapping's append succeeded (or nobody will roll it back)
        while len(self._memory) > self._max:
            self._memory.popitem(last=False)
        self._undo, self._updates, self._read = {}, {}, {}
        if self._first_start_pending:
            self._updates[FIRST_START_KEY] = self.first_start_ns.to_bytes(8, "big")

    def get(self, key: bytes) -> StreamState | None:
        """The stream's state: from memory, else loaded (and kept), else None."""
        state = self._memory.get(key)
        if state is not None:
            self._memory.move_to_end(key)
            if self._load is not None and key not in self._read:  # in memory only: nothing to expect
                self._read[key] = state
            return state
        if self._load is None:
            return None
        raw = self._load(key)
        if key not in self._read:
            self._read[key] = raw
        state = StreamState.decode(raw) if raw is not None else None
        if state is not None:
            self._memory[key] = state
        return state

    def put(self, key: bytes, state: StreamState) -> None:
        """Record the stream's new state (in memory now; in the database with ``finish``'s updates)."""
        undo = self._undo
        if undo is None:
            raise RuntimeError("put outside begin/finish")
        if key not in undo:
            undo[key] = self._memory.get(key, _ABSENT)
        self._memory[key] = state
        self._memory.move_to_end(key)
        self._updates[key] = state.encode()

    def finish(self) -> StateChange:
        """End the mapping: the updates to commit with its events, and the token to roll back."""
        if self._undo is None:
            raise RuntimeError("finish without begin")
        self._token += 1
        expect: dict[bytes, bytes | None] = {}
        if self._load is not None and (self._read or self._updates):
            expect.update(self._meta)
            for key, seen in self._read.items():
                expect[key] = seen.encode() if isinstance(seen, StreamState) else seen
        first = self._updates.get(FIRST_START_KEY)
        self._last = (self._token, self._undo, self._meta.get(FIRST_START_KEY) if first else _ABSENT)
        if first is not None:  # stored once the append commits; else rollback restores
            self._first_start_pending = False
            if self._load is not None:
                self._meta[FIRST_START_KEY] = first
        change = StateChange(self._updates, self._token, expect)
        self._undo, self._updates, self._read = None, {}, {}
        return change

    def rollback(self, token: int) -> None:
        """Undo the in-memory changes of the last finished mapping (its append failed, or may have).

        With ``load``, the streams it touched are dropped from memory and read back from the
        database when next seen: right whether or not the append committed. Without ``load``
        their previous states are restored. The first-start key is written again with the next
        mapping (the same value: harmless if it was committed after all).
        """
        last = self._last
        if last is None or last[0] != token or self._undo is not None:
            raise RuntimeError("only the last finished mapping can be rolled back, before the next begins")
        _, undo, first_as_read = last
        for key, previous in undo.items():
            if previous is _ABSENT or self._load is not None:
                self._memory.pop(key, None)
            else:
                self._memory[key] = previous  # type: ignore[assignment]
        if first_as_read is not _ABSENT:
            self._first_start_pending = True
            if self._load is not None:
                self._meta[FIRST_START_KEY] = first_as_read  # type: ignore[assignment]
        self._last = None


def _read_ns(raw: bytes | None) -> int:
    return int.from_bytes(raw, "big") if raw is not None and len(raw) == 8 else 0


# --- expiry --------------------------------------------------------------------------------------


class Expiry(NamedTuple):
    """One batch of :func:`expire_streams`: the ``updates`` to commit (deletes, the watermark),
    how many streams they delete, and where the next batch starts (None: the pass is done)."""

    updates: dict[bytes, bytes | None]
    expired: int
    next_key: bytes | None


def expire_streams(load: Load, scan: Scan, horizon_ns: int, start: bytes, limit: int) -> Expiry:
    """The states (keys from ``start``, at most ``limit`` read) whose stream was last seen before
    ``horizon_ns``, to delete, with the watermark raised to the horizon in the same commit.

    ``load`` and ``scan`` must read the transaction the updates are committed in, so nothing
    written meanwhile is deleted, and the watermark is in place before a forgotten stream can
    report again. "Last seen" is the later of the state's start and last point time (the
    producer's clock: the one the watermark is compared with). States this version cannot read
    are left alone: they hold no time to judge by, and already count as no state.
    """
    deletes: list[bytes] = []
    read = 0
    next_key: bytes | None = None
    if horizon_ns > 0:
        for key, raw in scan(max(start, KEY_PREFIX)):
            if not key.startswith(KEY_PREFIX):
                break
            if read >= limit:
                next_key = key
                break
            read += 1
            if len(key) != _STREAM_KEY_SIZE:
                continue  # the first-start time, the watermark
            state = StreamState.decode(raw)
            if state is not None and max(state.start, state.time) < horizon_ns:
                deletes.append(key)
    updates: dict[bytes, bytes | None] = dict.fromkeys(deletes)
    if deletes and horizon_ns > _read_ns(load(EXPIRED_BEFORE_KEY)):
        updates[EXPIRED_BEFORE_KEY] = horizon_ns.to_bytes(8, "big")
    return Expiry(updates, len(deletes), next_key)


# --- stream keys ---------------------------------------------------------------------------------


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def metric_hasher(scope: ScopeState, metric: Metric, metric_type: str) -> ids.Hasher:
    """A hasher primed with everything that names a stream except the point's attributes."""
    res = scope.res
    if res.stream is None:
        res.stream = native.blake2b(
            _frame(res.resource.SerializeToString(deterministic=True)), digest_size=16, person=_PERSON
        )
    if scope.stream is None:
        scope.stream = res.stream.copy()
        scope.stream.update(_frame(scope.scope.SerializeToString(deterministic=True)))
    hasher = scope.stream.copy()
    hasher.update(_frame(metric.name.encode()) + _frame(metric.unit.encode()) + _frame(metric_type.encode()))
    return hasher


_ATTRIBUTES = {
    cls: cls.DESCRIPTOR.fields_by_name["attributes"].number
    for cls in (NumberDataPoint, HistogramDataPoint, ExponentialHistogramDataPoint)
}


def stream(metric: ids.Hasher, point: CumulativePoint) -> tuple[bytes, bytes]:
    """The state key of ``point``'s stream (:func:`stream_key`) and its attribute field serialized
    (for :func:`to_delta`): in C when ``metric`` is the extension's hasher (made so when it was
    available), else :func:`point_attributes` and :func:`stream_key` (the same bytes)."""
    module = native.module
    if module is not None and isinstance(metric, module.Hasher):
        made: tuple[bytes, bytes] | None = module.stream_key(
            metric, point.SerializeToString(), _ATTRIBUTES[type(point)], KEY_PREFIX
        )
        if made is not None:
            return made
    kvs, attributes = point_attributes(point)
    return stream_key(metric, kvs), attributes


def point_attributes(point: CumulativePoint) -> tuple[list[bytes], bytes]:
    """A point's attributes, read once for :func:`stream_key` and :func:`to_delta`: each
    ``KeyValue`` serialized, and the attribute field serialized (:func:`attributes.attribute_list`;
    several times cheaper than reading them through the protobuf API)."""
    return attribute_list(point, point.SerializeToString())


def stream_key(metric: ids.Hasher, attributes: list[bytes]) -> bytes:
    """The state key of the stream of a point whose attributes, each ``KeyValue`` serialized, are
    ``attributes`` (their order does not matter: they are hashed in key order)."""
    hasher = metric.copy()
    if len(attributes) > 1:
        attributes = sorted(attributes, key=key_of)
    hasher.update(b"".join([_frame(kv) for kv in attributes]))
    return KEY_PREFIX + hasher.digest()


# --- conversion ----------------------------------------------------------------------------------


def to_delta(
    states: StreamStates, key: bytes, point: CumulativePoint, initial_value: InitialValue, attributes: bytes
) -> tuple[CumulativePoint | None, Outcome]:
    """The delta point for a cumulative ``point`` of stream ``key`` (None: no event), and why.

    ``attributes`` is the point's attribute field serialized (:func:`point_attributes`)."""
    if point.flags & _NO_RECORDED_VALUE:
        return None, "no_value"
    if isinstance(point, NumberDataPoint):
        kind = point.WhichOneof("value")
        if kind is None:
            return None, "no_value"
        value: int | float = getattr(point, kind)
        if not value >= 0:  # negative, or NaN (every comparison with NaN is false)
            raise InvalidPoint(f"a monotonic sum cannot be {value}")
        if value == _INFINITY:
            raise InvalidPoint("a monotonic sum cannot be infinite")
        current = StreamState(point.start_time_unix_nano, point.time_unix_nano, value)
    else:
        has_sum = point.HasField("sum")
        if has_sum and not math.isfinite(point.sum):
            raise InvalidPoint(f"a histogram's sum cannot be {point.sum}")
        current = StreamState(
            point.start_time_unix_nano,
            point.time_unix_nano,
            point.sum if has_sum else 0.0,
            point.count,
            has_sum,
        )
    last = states.get(key)
    if last is None:
        start = current.start
        if start < states.expired_before_ns:
            # Maybe a stream whose state was expired: its history may be billed already. Its points
            # since then are newer than the watermark: only those may become the stream's base.
            if current.time >= states.expired_before_ns:
                states.put(key, current)
            return None, "first_dropped"
        states.put(key, current)
        if initial_value == "keep" or (initial_value == "auto" and start > states.first_start_ns):
            return _outcome(_delta_point(point, current, None, start, attributes), "first_kept")
        return None, "first_dropped"
    if current.time <= last.time:
        return None, "duplicate"
    states.put(key, current)
    newer_run = current.start > last.start and current.start >= last.time
    went_down = current.count < last.count if current.count >= 0 else current.value < last.value
    if newer_run or went_down:
        return _outcome(_delta_point(point, current, None, current.start or last.time, attributes), "reset")
    return _outcome(_delta_point(point, current, last, last.time, attributes), "converted")


def _outcome(delta: CumulativePoint | None, outcome: Outcome) -> tuple[CumulativePoint | None, Outcome]:
    return (None, "unchanged") if delta is None else (delta, outcome)


def _delta_point(
    point: CumulativePoint, current: StreamState, last: StreamState | None, start: int, attributes: bytes
) -> CumulativePoint | None:
    """A fresh point holding ``current - last`` (all of ``current`` without ``last``); None if zero.

    Only what the increase defines is carried: attributes (parsed from ``attributes``, the point's
    attribute field serialized: copying them message by message costs several times more), start
    and time, and the value (sums) or count and sum (histograms). Buckets, min, max and exemplars
    describe the cumulative run.
    """
    if isinstance(point, NumberDataPoint):
        value = current.value - last.value if last is not None else current.value
        if value == 0:
            return None
        out = NumberDataPoint.FromString(attributes)
        out.start_time_unix_nano = start
        out.time_unix_nano = current.time
        if isinstance(value, int):
            out.as_int = value
        else:
            out.as_double = value
        return out
    if last is None:
        count, total, has_sum = current.count, current.value, current.has_sum
    else:  # a sum is an increase only between two points that have one
        count, total, has_sum = (
            current.count - last.count,
            current.value - last.value,
            current.has_sum and last.has_sum,
        )
    if count == 0 and (total == 0 or not has_sum):
        return None
    hist = type(point).FromString(attributes)
    hist.start_time_unix_nano = start
    hist.time_unix_nano = current.time
    hist.count = count
    if has_sum:
        hist.sum = total
    return hist
