"""Runs the configured sources inside the service, feeding the pipeline.

Each source is a task. A source that crashes is logged and restarted after a backoff (its cursor
is on disk, so it resumes where its last commit left it); sources stop before the receivers, so
their last request is committed or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult, Pipeline
from otlp_meter.queue.lmdb_queue import LmdbQueue
from otlp_meter.sources.base import Cursor, Source, backoff_delays, wait_or_stop
from otlp_meter.telemetry.logging import get_logger

log = get_logger("sources")


class PipelineSink:
    """The :class:`~otlp_meter.sources.base.SourceSink` over the service's pipeline and queue."""

    def __init__(self, pipeline: Pipeline, queue: LmdbQueue) -> None:
        self._pipeline = pipeline
        self._queue = queue

    async def logs(self, request: ExportLogsServiceRequest, cursor: Cursor) -> IngestResult:
        return await self._pipeline.ingest_logs(request, cursor)

    async def metrics(self, request: ExportMetricsServiceRequest, cursor: Cursor) -> IngestResult:
        return await self._pipeline.ingest_metrics(request, cursor)

    async def events(self, events: list[EncodedEvent], cursor: Cursor) -> IngestResult:
        return await self._pipeline.ingest_events(events, cursor)

    def get_state(self, key: bytes) -> bytes | None:
        return self._queue.get_state(key)


class SourceRunner:
    def __init__(self, sources: Sequence[Source], sink: PipelineSink) -> None:
        self._sources = list(sources)
        self._sink = sink
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def names(self) -> list[str]:
        return [f"{s.kind}/{s.name}" for s in self._sources]

    def start(self) -> None:
        for source in self._sources:
            self._tasks.append(asyncio.create_task(self._supervise(source), name=f"source {source.kind}"))

    async def _supervise(self, source: Source) -> None:
        delays = backoff_delays(1.0, 60.0)
        while not self._stop.is_set():
            try:
                await source.run(self._sink, self._stop)
                return
            except Exception as exc:  # a source bug must not take the service down
                delay = next(delays)
                log.exception(
                    "source_crashed", source=source.kind, name=source.name, error=repr(exc), restart_in=delay
                )
                if await wait_or_stop(self._stop, delay):
                    return

    async def stop(self, deadline: float) -> None:
        """Ask every source to stop; cancel those still running after ``deadline`` seconds."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=deadline)
        for task in pending:
            log.warning("source_stop_timeout", task=task.get_name())
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
