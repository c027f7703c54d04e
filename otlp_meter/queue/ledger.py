"""What the queue keeps besides the records: the LMDB handles, the persisted counters, and the
in-memory book of leases shared by the asyncio side and the writer thread.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import lmdb

from otlp_meter.errors import StorageError
from otlp_meter.queue import codec
from otlp_meter.telemetry.logging import get_logger

log = get_logger("queue")

SCHEMA_VERSION = b"1"
"""Layout of the named databases below; bump it (with a migration) when the layout changes."""

_SCHEMA_KEY = b"schema_version"
_COUNTERS_KEY = b"counters"
_COUNTERS = struct.Struct(">6Q")
_MAX_DBS = 8


@dataclass(frozen=True, slots=True)
class Handles:
    """The environment and its named databases.

    ``events``  seq (8-byte big-endian) → envelope(QueuedEvent)
    ``dedupe``  16-byte (source, id) hash → expiry (8-byte big-endian Unix nanoseconds)
    ``expiry``  expiry + hash → empty; the dedupe keys in expiry order, so pruning reads the front
    ``dead``    dead seq → envelope(DeadLetter)
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
    """Persisted in ``meta`` in every write transaction, so they are exact after any crash and
    reopening a queue of millions of events reads one key instead of scanning."""

    depth: int = 0
    size: int = 0
    dead_count: int = 0
    dead_size: int = 0
    next_seq: int = 1
    next_dead_seq: int = 1

    def pack(self) -> bytes:
        return _COUNTERS.pack(
            self.depth, self.size, self.dead_count, self.dead_size, self.next_seq, self.next_dead_seq
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Counters:
        return cls(*_COUNTERS.unpack(raw))

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
    lock: threading.Lock = field(default_factory=threading.Lock)
    leased: set[int] = field(default_factory=set)
    released: list[int] = field(default_factory=list)
    cursor: int = 0
    quarantining: set[bytes] = field(default_factory=set)
    deduplicated_total: int = 0
    corrupt_total: int = 0
    expired_dedupe_total: int = 0
    evicted_dedupe_total: int = 0
    commits_total: int = 0


def open_environment(path: Path, map_size: int, sync: bool) -> Handles:
    """Open (creating if needed) the environment and its databases; check the schema version."""
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
        )
    except lmdb.Error as exc:
        raise StorageError(f"cannot open the queue at {path}: {exc}") from exc
    try:
        env.reader_check()  # free reader slots of dead processes, which would pin old pages
        with env.begin(write=True) as txn:
            handles = Handles(
                env=env,
                events=env.open_db(b"events", txn=txn),
                dedupe=env.open_db(b"dedupe", txn=txn),
                expiry=env.open_db(b"dedupe_expiry", txn=txn),
                dead=env.open_db(b"dead", txn=txn),
                corrupt=env.open_db(b"corrupt", txn=txn),
                state=env.open_db(b"state", txn=txn),
                meta=env.open_db(b"meta", txn=txn),
            )
            version = txn.get(_SCHEMA_KEY, db=handles.meta)
            if version is None:
                txn.put(_SCHEMA_KEY, SCHEMA_VERSION, db=handles.meta)
            elif version != SCHEMA_VERSION:
                raise StorageError(
                    f"the queue at {path} has schema version {version.decode(errors='replace')}; this "
                    f"otlp-meter understands {SCHEMA_VERSION.decode()} (was it written by a newer one?)",
                    retry_after=60.0,
                )
    except lmdb.Error as exc:
        env.close()
        raise StorageError(f"cannot open the queue at {path}: {exc}") from exc
    except BaseException:
        env.close()
        raise
    return handles


def load_counters(txn: lmdb.Transaction[bytes], h: Handles) -> tuple[Counters, bool]:
    """The persisted counters, checked against LMDB's own entry counts.

    Returns ``(counters, repaired)``. They only disagree if the file was written by something else
    than this module; then the byte totals are recomputed by a scan (slow, but right).
    """
    raw = txn.get(_COUNTERS_KEY, db=h.meta)
    counters = Counters.unpack(raw) if raw is not None and len(raw) == _COUNTERS.size else Counters()
    repaired = raw is None or len(raw) != _COUNTERS.size
    if counters.depth != txn.stat(h.events)["entries"]:
        counters.depth, counters.size = _scan_sizes(txn, h.events)
        repaired = True
    if counters.dead_count != txn.stat(h.dead)["entries"]:
        counters.dead_count, counters.dead_size = _scan_sizes(txn, h.dead)
        repaired = True
    for db, attr in ((h.events, "next_seq"), (h.dead, "next_dead_seq")):
        cursor = txn.cursor(db=db)
        if cursor.last() and len(cursor.key()) == 8:
            last = codec.key_seq(cursor.key())
            if getattr(counters, attr) <= last:
                setattr(counters, attr, last + 1)
                repaired = True
    if repaired and (counters.depth or counters.dead_count):
        log.warning("queue_counters_recomputed", counters=str(counters))
    return counters, repaired


def store_counters(txn: lmdb.Transaction[bytes], h: Handles, counters: Counters) -> None:
    txn.put(_COUNTERS_KEY, counters.pack(), db=h.meta)


def _scan_sizes(txn: lmdb.Transaction[bytes], db: lmdb._Database) -> tuple[int, int]:
    count = size = 0
    for _key, value in txn.cursor(db=db):
        count += 1
        size += len(value)
    return count, size
