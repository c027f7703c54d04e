"""The durable queue between the pipeline and the exporters (LMDB). The only package that imports lmdb.

``LmdbQueue`` is the interface; ``QueueConfig`` its configuration section; the value types are what
it returns. See :mod:`otlp_meter.queue.lmdb_queue` for how appends, leases and acks fit together.
"""

from otlp_meter.queue.config import QueueConfig
from otlp_meter.queue.lmdb_queue import LmdbQueue
from otlp_meter.queue.types import (
    Accounting,
    AppendResult,
    DeadLetterEntry,
    LeasedEvent,
    QueueStats,
    ReplayItem,
    ReplayResult,
)

__all__ = [
    "Accounting",
    "AppendResult",
    "DeadLetterEntry",
    "LeasedEvent",
    "LmdbQueue",
    "QueueConfig",
    "QueueStats",
    "ReplayItem",
    "ReplayResult",
]
