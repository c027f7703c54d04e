"""``QueueStats`` values for telemetry tests, with every field defaulted."""

from __future__ import annotations

from typing import Any

from otlp_meter.queue.types import Accounting, QueueStats


def accounting(**values: int) -> Accounting:
    fields = dict.fromkeys(Accounting.__dataclass_fields__, 0)
    return Accounting(**(fields | values))


def queue_stats(ledger: Accounting | None = None, **values: Any) -> QueueStats:
    """A snapshot of an open, empty queue, with ``values`` overriding fields."""
    fields: dict[str, Any] = {
        "depth": 0,
        "bytes": 0,
        "capacity_bytes": 1 << 30,
        "dead_letters": 0,
        "dead_bytes": 0,
        "dead_capacity_bytes": 1 << 28,
        "oldest_enqueued_at": None,
        "leased": 0,
        "dedupe_keys": 0,
        "corrupt_records": 0,
        "deduplicated_total": 0,
        "corrupt_total": 0,
        "expired_dedupe_total": 0,
        "evicted_dedupe_total": 0,
        "commits_total": 0,
        "accounting": ledger if ledger is not None else accounting(),
    }
    return QueueStats(**(fields | values))
