"""What the queue keeps besides the records: the LMDB handles, the persisted counters, and the
in-memory book of leases shared by the asyncio side and the writer thread.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import lmdb

from otlp_meter.errors import StorageError
from otlp_meter.queue import codec
from otlp_meter.telemetry.logging import get_logger

log = get_logger("queue")

SCHEMA_VERSION = b"4"
"""Layout of the named databases below; bump it (with a migration) when the layout changes.

2: events in envelope 2 (:mod:`~otlp_meter.queue.codec`), multi-key expiry index entries.
Everything schema 1 wrote is still read, so opening a schema-1 queue for writing only marks it 2
(which keeps an older otlp-meter, which would take envelope-2 events for corrupt, out of it).

3: event dedupe keys ordered by the event's time (:func:`~otlp_meter.queue.codec.event_dedupe_key`;
same size, same expiry index). A queue of schema 1 or 2 may hold keys of the old format still
within their window: opening it for writing records in ``meta`` (:data:`LEGACY_UNTIL_KEY`) the
latest expiry among them, and until then appends look up each event's old key as well
(:func:`legacy_until`). An older otlp-meter refuses a schema-3 queue: it would not find the new
keys, and let copies through.

4: events stored in groups (envelope 3: the events of one append, up to
:data:`~otlp_meter.queue.codec.EVENTS_PER_GROUP`, in one record under the sequence of the first).
Records of envelopes 1 and 2 are still read, as groups of one, so opening a queue of schema 1 to 3
only marks it 4 (keys are unchanged from 3); an older otlp-meter refuses a schema-4 queue, whose
groups it would take for corrupt records.
"""
_READABLE_SCHEMAS = (b"1", b"2", b"3", SCHEMA_VERSION)
_SCHEMAS_WITH_LEGACY_KEYS = (b"1", b"2")

LEGACY_UNTIL_KEY = b"dedupe_legacy_until"
"""``meta`` key: Unix ns (8-byte big-endian) until which the dedupe set may hold keys of the format
before schema 3 (written at the upgrade: the last expiry in the expiry index then)."""

_SCHEMA_KEY = b"schema_version"
_COUNTERS_KEY = b"counters"
_COUNTERS = struct.Struct(">17Q")
_COUNTERS_V0 = struct.Struct(">6Q")  # before the accounting totals: depth … next_dead_seq only
_MAX_DBS = 8
_DB_NAMES = (b"events", b"dedupe", b"dedupe_expiry", b"dead", b"corrupt", b"state", b"meta")


@dataclass(frozen=True, slots=True)
class Handles:
    """The environment and its named databases.

    ``events``  seq (8-byte big-endian) of a group's first event → envelope 3 (a header, the
                lengths, the JSON payloads; the group holds seq … seq + count - 1); envelope 2
                (13-byte header + the JSON) or 1 (QueuedEvent), one event each, if written before
    ``dedupe``  16-byte key → expiry (8-byte big-endian Unix nanoseconds); an event's key is its
                time (6 bytes of Unix ms) + 10 bytes of the (source, id) hash since schema 3, the
                16-byte hash before; a rejected record's key is a 16-byte hash
    ``expiry``  expiry + first hash → the hashes that expire then, concatenated (one entry per
                commit and up to 1024 keys); before schema 2, one entry per hash with an empty
                value. Sorted by expiry, so pruning reads the front. An entry may name a hash
                remembered again since with a later expiry: pruning checks ``dedupe`` first.
    ``dead``    dead seq → envelope 1 (DeadLetter)
    ``corrupt`` the original key → the original bytes of a record that could not be decoded
    ``state``   callers' opaque keys (source cursors, cumulative-to-delta state)
    ``meta``    the queue's own keys: schema version and counters (apart from ``state`` so no
                caller key can collide with them)
    """

    env: lmdb.Environment
    events: lmdb._Database
    dedupe: lmdb._Database
    expiry: lmdb._Database
    dead: lmdb._Database
    corrupt: lmdb._Database
    state: lmdb._Database
    meta: lmdb._Database


@dataclass(slots=True)
class Counters:
    """Persisted in ``meta`` by every write transaction that changes them, so they are exact after
    any crash and reopening a queue of millions of events reads one key instead of scanning.

    Every writer reads them back inside its own write transaction (LMDB serializes writers, also
    across processes), so an admin command writing next to the running service cannot make either
    one's view stale. The first six describe the store; the rest are totals since the queue was
    created, the accounting an operator checks (see :class:`~otlp_meter.queue.types.Accounting`).
    """

    depth: int = 0
    size: int = 0
    dead_count: int = 0
    dead_size: int = 0
    next_seq: int = 1
    next_dead_seq: int = 1
    accepted: int = 0
    deduplicated: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    corrupt: int = 0
    replayed: int = 0
    records_rejected: int = 0
    dead_replayed: int = 0
    dead_purged: int = 0
    dedupe_expired: int = 0
    dedupe_evicted: int = 0

    def pack(self) -> bytes:
        return _COUNTERS.pack(*(getattr(self, name) for name in self.__slots__))

    @classmethod
    def unpack(cls, raw: bytes) -> Counters | None:
        """The counters, or None when ``raw`` is no layout this version knows."""
        if len(raw) == _COUNTERS.size:
            return cls(*_COUNTERS.unpack(raw))
        if len(raw) == _COUNTERS_V0.size:
            # Written before the totals existed: count what is stored as accepted (events) and
            # rejected (dead letters), so the accounting identities hold from here on.
            old = cls(*_COUNTERS_V0.unpack(raw))
            old.accepted, old.records_rejected = old.depth, old.dead_count
            return old
        return None

    def copy(self) -> Counters:
        return replace(self)


@dataclass(slots=True)
class Ledger:
    """In-memory state guarded by ``lock``: published counters, totals and the lease book.

    Lease book invariant: every event with a sequence below ``cursor`` is leased, released (in the
    ``released`` heap, to be leased again before anything newer), being moved aside as corrupt, or
    deleted; no event at or above ``cursor`` is leased. Nothing of this is persisted: after a
    restart every stored event is leasable again.
    """

    counters: Counters
    """The last counters this process committed or read (the writer re-reads them per transaction)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    leased: dict[int, int] = field(default_factory=dict)
    """Leased sequence → bytes the event takes in its stored group."""
    released: list[int] = field(default_factory=list)
    unpublished: tuple[int, int] | None = None
    """The LMDB transaction id the writer is committing and how many leased events it deletes, from
    just before the commit until the writer pops them from ``leased``: a depth read in a snapshot
    that includes that commit (id at least this one, whoever committed after) must not count them
    twice with the leases (see :meth:`LmdbQueue.available`)."""
    cursor: int = 0
    quarantining: set[bytes] = field(default_factory=set)
    deduplicated_total: int = 0
    corrupt_total: int = 0
    expired_dedupe_total: int = 0
    evicted_dedupe_total: int = 0
    commits_total: int = 0
    full_at_size: int | None = None
    """Queue bytes when an append was last refused for lack of space; None once one commits again."""


def open_environment(path: Path, map_size: int, sync: bool, readonly: bool = False) -> Handles:
    """Open (creating if needed) the environment and its databases; check the schema version.

    ``readonly`` opens an existing queue for reading only (``queue stats``, ``dlq list``), next
    to a running service: it creates nothing and raises StorageError if there is no queue.
    """
    if readonly and not (path / "data.mdb").is_file():
        raise StorageError(f"there is no queue at {path} (nothing was ever stored there)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the queue directory {path}: {exc}") from exc
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            max_dbs=_MAX_DBS,
            sync=sync,
            metasync=sync,
            readahead=False,  # random reads of a working set; readahead only evicts the page cache
            max_readers=126,
            lock=True,
            readonly=readonly,
        )
    except lmdb.Error as exc:
        raise StorageError(f"cannot open the queue at {path}: {exc}") from exc
    try:
        env.reader_check()  # free reader slots of dead processes, which would pin old pages
        if readonly:
            # Opened by lmdb's own transaction: a handle opened in a read-only transaction of ours
            # would be closed again when that transaction ends.
            dbs = [env.open_db(name, create=False) for name in _DB_NAMES]
        with env.begin(write=not readonly) as txn:
            if not readonly:
                dbs = [env.open_db(name, txn=txn) for name in _DB_NAMES]
            handles = Handles(env, *dbs)
            version = txn.get(_SCHEMA_KEY, db=handles.meta)
            if version is not None and version not in _READABLE_SCHEMAS:
                raise StorageError(
                    f"the queue at {path} has schema version {version.decode(errors='replace')}; this "
                    f"otlp-meter understands {b', '.join(_READABLE_SCHEMAS).decode()} (was it written "
                    "by a newer one?)",
                    retry_after=60.0,
                )
            if version != SCHEMA_VERSION and not readonly:  # a new queue, or one of schema 1 to 3
                if version in _SCHEMAS_WITH_LEGACY_KEYS:
                    _mark_legacy_keys(txn, handles)
                txn.put(_SCHEMA_KEY, SCHEMA_VERSION, db=handles.meta)
    except lmdb.Error as exc:
        env.close()
        raise StorageError(f"cannot open the queue at {path}: {exc}") from exc
    except BaseException:
        env.close()
        raise
    return handles


def _mark_legacy_keys(txn: lmdb.Transaction[bytes], h: Handles) -> None:
    """Upgrading to schema 3: remember until when the old-format keys stored now can matter.

    The expiry index is sorted by expiry, so its last entry names the latest expiry of any key
    stored (rejection keys included, which keep their format: that only overestimates a little).
    """
    cursor = txn.cursor(db=h.expiry)
    found = cursor.last()
    while found and len(cursor.key()) != 24:  # not ours (pruning drops such entries): skip them
        found = cursor.prev()
    if not found:
        return
    until, _first = codec.split_expiry_index_key(cursor.key())
    if until > 0:
        txn.put(LEGACY_UNTIL_KEY, codec.encode_expiry(until), db=h.meta)
        log.info("queue_schema_upgraded", schema=SCHEMA_VERSION.decode(), legacy_keys_until_unix_nano=until)


def legacy_until(txn: lmdb.Transaction[bytes], h: Handles) -> int:
    """Unix ns until which appends must also look up dedupe keys of the format before schema 3
    (0: none; a queue created at schema 3, or upgraded with no dedupe keys)."""
    raw = txn.get(LEGACY_UNTIL_KEY, db=h.meta)
    return codec.decode_expiry(raw) if raw is not None else 0


def load_counters(txn: lmdb.Transaction[bytes], h: Handles) -> tuple[Counters, bool]:
    """The persisted counters, checked against LMDB's own entry counts.

    Returns ``(counters, repaired)``. They only disagree if the file was written by something else
    than this module; then the totals are recomputed by a scan (slow, but right). A record of
    ``events`` holds one event or more (a group), so its entries bound the depth from below.
    """
    raw = txn.get(_COUNTERS_KEY, db=h.meta)
    stored = Counters.unpack(raw) if raw is not None else None
    counters = stored if stored is not None else Counters()
    repaired = stored is None or len(raw or b"") != _COUNTERS.size
    records = txn.stat(h.events)["entries"]
    if records > counters.depth or (records == 0) != (counters.depth == 0):
        counters.depth, counters.size = _scan_sizes(txn, h.events, codec.record_count)
        repaired = True
    if counters.dead_count != txn.stat(h.dead)["entries"]:
        counters.dead_count, counters.dead_size = _scan_sizes(txn, h.dead)
        repaired = True
    for db, attr in ((h.events, "next_seq"), (h.dead, "next_dead_seq")):
        cursor = txn.cursor(db=db)
        if cursor.last() and len(cursor.key()) == 8:
            last = codec.key_seq(cursor.key())
            if db is h.events:  # the last sequence of the last group
                last += codec.record_count(cursor.value()) - 1
            if getattr(counters, attr) <= last:
                setattr(counters, attr, last + 1)
                repaired = True
    if repaired and (counters.depth or counters.dead_count):
        log.warning("queue_counters_recomputed", counters=str(counters))
    return counters, repaired


def read_counters(txn: lmdb.Transaction[bytes], h: Handles) -> Counters | None:
    """The counters as committed, or None when missing or unreadable (then use the last known)."""
    raw = txn.get(_COUNTERS_KEY, db=h.meta)
    return Counters.unpack(raw) if raw is not None else None


def store_counters(txn: lmdb.Transaction[bytes], h: Handles, counters: Counters) -> None:
    txn.put(_COUNTERS_KEY, counters.pack(), db=h.meta)


def storage_used_bytes(txn: lmdb.Transaction[bytes], h: Handles) -> int:
    """Bytes of pages the databases occupy now (reachable B-tree pages, not the free list).

    The map is sparse address space; this is what counts against ``map_size``. It leaves out
    LMDB's free-list tree and the main database (a few pages), which the headroom covers.
    """
    pages = 2  # the two meta pages
    for db in (h.events, h.dedupe, h.expiry, h.dead, h.corrupt, h.state, h.meta):
        stat = txn.stat(db)
        pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    return pages * int(h.env.stat()["psize"])


def _scan_sizes(
    txn: lmdb.Transaction[bytes], db: lmdb._Database, count_of: Callable[[bytes], int] = lambda _value: 1
) -> tuple[int, int]:
    """(items, bytes) stored in ``db``; ``count_of`` says how many items a record holds (a group of
    events: :func:`codec.record_count`)."""
    count = size = 0
    for _key, value in txn.cursor(db=db):
        count += count_of(value)
        size += len(value)
    return count, size
