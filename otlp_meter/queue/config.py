"""Configuration of the durable queue (the ``queue:`` section)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from otlp_meter.config_types import ByteSize, Duration, Section

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# LMDB needs room beyond the live data: a write transaction copies the pages it touches (copy on
# write) and freed pages are reused only once no reader needs them, so deletes (acks) need free
# pages too. The map is virtual address space and the file is sparse, so headroom costs nothing.
_MAP_SLACK = 64 * MiB
# Bytes one dedupe key costs on disk: the key (16 bytes: time + hash → 8-byte expiry) plus its expiry-index
# entry, with B-tree overhead and half-empty pages.
_DEDUPE_BYTES_PER_KEY = 128


class QueueConfig(Section):
    """Where and how much the queue stores. The LMDB environment lives in ``<directory>/queue/``."""

    directory: Path = Field(
        default=Path("./otlp-meter-data"),
        description="Data directory of otlp-meter (created if missing). The queue's LMDB environment "
        "(data.mdb, lock.mdb) lives in its 'queue/' subdirectory. Put it on a persistent volume.",
    )
    max_bytes: ByteSize = Field(
        default=1 * GiB,
        gt=0,
        description="Limit on stored, undelivered events (payload plus a small envelope). An append that "
        "would exceed it is refused with a retryable 'queue full' (UNAVAILABLE / 503).",
    )
    dead_letter_max_bytes: ByteSize = Field(
        default=256 * MiB,
        gt=0,
        description="Limit on the dead-letter store. When reached, new dead letters are refused (the "
        "append or the dead-lettering fails, retryably); nothing is dropped to make room.",
    )
    sync: bool = Field(
        default=True,
        description="fsync every grouped commit before acknowledging it. Turn off only for benchmarks "
        "and tests: without it a power loss can lose acknowledged events.",
    )
    dedupe_window: Duration = Field(
        default=24 * 3600.0,
        description="How long an event's (source, id) is remembered, with its time; a copy (same "
        "source, id and time) appended within the window is dropped and counted as deduplicated. "
        "0 disables deduplication.",
    )
    dedupe_max_keys: int = Field(
        default=10_000_000,
        ge=0,
        description="Most (source, id) keys remembered; beyond it the keys expiring first are forgotten "
        "early (counted). 0 disables deduplication.",
    )
    map_size: ByteSize | None = Field(
        default=None,
        description="LMDB map size (the most the data file may grow to). Default: twice the event and "
        "dead-letter limits plus the dedupe keys plus 64MiB, so deletes always find free pages. "
        "The file is sparse; this is address space, not disk.",
    )

    @property
    def path(self) -> Path:
        """Directory of the LMDB environment."""
        return self.directory / "queue"

    @property
    def dedupe_enabled(self) -> bool:
        return self.dedupe_window > 0 and self.dedupe_max_keys > 0

    def effective_map_size(self) -> int:
        """``map_size`` if set, else a size derived from the limits with generous headroom."""
        if self.map_size is not None:
            return self.map_size
        dedupe = self.dedupe_max_keys * _DEDUPE_BYTES_PER_KEY if self.dedupe_enabled else 0
        return 2 * self.max_bytes + 2 * self.dead_letter_max_bytes + dedupe + _MAP_SLACK
