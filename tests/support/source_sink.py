"""Sources in-process: the service's SourceSink over a real Pipeline and LmdbQueue in a temp dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.errors import QueueFullError
from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult, Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.queue.types import DeadLetterEntry
from otlp_meter.rules import RulesConfig, RulesEngine
from otlp_meter.sources.base import Cursor
from otlp_meter.sources.runner import PipelineSink as ServiceSink
from otlp_meter.telemetry.metrics import Metrics


class PipelineSink:
    """The service's sink (``sources.runner.PipelineSink``) over a real pipeline and queue, recording.

    ``refuse`` makes the next that many calls fail with QueueFullError (nothing stored), as a
    full queue does. ``calls`` records (signal, record count, cursor) of every accepted call.
    """

    def __init__(self, directory: Path, packs: Sequence[str] = ("prometheus", "s3")) -> None:
        self.queue = LmdbQueue(QueueConfig.model_validate({"directory": directory, "sync": False}))
        self.queue.open()
        self.telemetry = Metrics()
        engine = RulesEngine.from_config(RulesConfig(packs=list(packs)))
        self.pipeline = Pipeline(engine, self.queue, self.telemetry)
        self.pipeline.open_streams()
        self._sink = ServiceSink(self.pipeline, self.queue)
        self.refuse = 0
        self.refused = 0
        self.calls: list[tuple[str, int, dict[bytes, bytes | None]]] = []

    def _maybe_refuse(self) -> None:
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            raise QueueFullError("queue full (test)", retry_after=0.0)

    async def logs(self, request: ExportLogsServiceRequest, cursor: Cursor) -> IngestResult:
        self._maybe_refuse()
        result = await self._sink.logs(request, cursor)
        self.calls.append(("logs", result.records, dict(cursor)))
        return result

    async def metrics(self, request: ExportMetricsServiceRequest, cursor: Cursor) -> IngestResult:
        self._maybe_refuse()
        result = await self._sink.metrics(request, cursor)
        self.calls.append(("metrics", result.records, dict(cursor)))
        return result

    async def events(self, events: list[EncodedEvent], cursor: Cursor) -> IngestResult:
        self._maybe_refuse()
        result = await self._sink.events(events, cursor)
        self.calls.append(("events", len(events), dict(cursor)))
        return result

    def get_state(self, key: bytes) -> bytes | None:
        return self._sink.get_state(key)

    def events_queued(self) -> list[dict[str, Any]]:
        """Every queued event (leased and released again), oldest first."""
        leased = self.queue.lease(1_000_000, 1 << 40)
        self.queue.release([e.seq for e in leased])
        return [orjson.loads(e.payload) for e in leased]

    def dead(self) -> list[DeadLetterEntry]:
        return self.queue.list_dead(limit=10_000)

    def close(self) -> None:
        self.queue.close()
