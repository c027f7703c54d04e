"""The seam between delivery logic and transport: a sink takes encoded events and says what happened."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from otlp_meter.exporters.retry import Verdict


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one attempt, as a value (not an exception)."""

    verdict: Verdict
    status: int | None = None  # HTTP status; None for network errors/timeouts
    retry_after: float | None = None
    detail: str = ""  # the server's problem details or the error, for logs and dead letters


class Sink(Protocol):
    """Where batches go. ``send`` reports every outcome as a :class:`SendResult`, never raises for it."""

    name: str  # the ``exporter`` metric label

    async def send(self, payloads: Sequence[bytes]) -> SendResult:
        """Deliver the events (each a JSON object) as one batch."""
        ...

    async def close(self) -> None:
        """Release connections/files; called once, after the last ``send``."""
        ...


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """The ``application/cloudevents-batch+json`` body: a JSON array joined from stored bytes."""
    return b"[" + b",".join(payloads) + b"]"
