"""Values that travel between stages: encoded CloudEvents and rejected records.

The rules engine produces them, the pipeline hands them to the queue, the queue stores them.
They are plain immutable values with no behaviour so that every stage can depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Signal = Literal["logs", "metrics", "events"]


class EncodedEvent(NamedTuple):
    """A CloudEvent ready to send: ``payload`` is its JSON object (UTF-8 bytes, no trailing newline).

    ``source`` and ``id`` repeat the event's own attributes; together they are the dedupe key.
    A NamedTuple rather than a frozen dataclass: the rules engine makes one per event and a tuple
    is built in a third of the time; it is just as immutable.
    """

    source: str
    id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that matched a rule but could not become an event.

    ``original`` is a serialized single-record OTLP export request (``ExportLogsServiceRequest`` or
    ``ExportMetricsServiceRequest`` per ``signal``) holding the record with its resource and scope,
    so the dead letter can be inspected and replayed.
    """

    signal: Signal
    rule: str
    reason: str
    original: bytes
