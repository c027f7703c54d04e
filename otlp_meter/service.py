"""Builds the stages in flow order, starts them, and shuts them down in reverse order.

Shutdown (SIGTERM/SIGINT): receivers stop accepting and finish in-flight requests, intake closes,
the exporter gets the rest of the deadline for in-flight deliveries, the queue closes cleanly.
Whatever was not delivered stays on disk and goes out after the next start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path

from otlp_meter import __version__
from otlp_meter.config import Config
from otlp_meter.exporters.config import Target, resolve_target
from otlp_meter.exporters.delivery import Exporter
from otlp_meter.exporters.file import FileSink
from otlp_meter.exporters.openmeter import OpenMeterSink
from otlp_meter.exporters.sink import Sink
from otlp_meter.http_server import HttpServer
from otlp_meter.pipeline import Pipeline
from otlp_meter.queue.lmdb_queue import LmdbQueue
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.receivers.otlp_grpc import OtlpGrpcReceiver
from otlp_meter.receivers.otlp_http import otlp_http_app
from otlp_meter.rules.engine import RulesEngine
from otlp_meter.telemetry.logging import get_logger
from otlp_meter.telemetry.metrics import Metrics, QueueGauges
from otlp_meter.telemetry.server import telemetry_app

log = get_logger("service")


def build_sink(target: Target, config: Config) -> Sink:
    if target.kind == "file":
        return FileSink(Path(target.endpoint))
    return OpenMeterSink(target, config.exporter.openmeter.timeout, config.exporter.max_in_flight)


class Service:
    """One running otlp-meter. ``await run(stop)`` returns after a clean shutdown."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.engine = RulesEngine.from_config(config.rules)
        self.target = resolve_target(
            config.exporter, config.queue.directory, env if env is not None else os.environ
        )
        self.queue = LmdbQueue(config.queue, on_append=self._on_append)
        self.exporter: Exporter | None = None
        self.pipeline = Pipeline(self.engine, self.queue, self.metrics)
        self.core = ReceiverCore(self.pipeline, self.metrics)
        self._stopping = False
        self._started = False
        self.grpc: OtlpGrpcReceiver | None = None
        self.http: HttpServer | None = None
        self.telemetry = HttpServer(telemetry_app(self.metrics, self.readiness), config.telemetry.endpoint)

    def _on_append(self) -> None:
        if self.exporter is not None:
            self.exporter.notify()

    def readiness(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if self._stopping:
            return False, "shutting down"
        stats = self.queue.stats()
        if stats.bytes >= stats.capacity_bytes:
            return False, "queue full"
        return True, "ok"

    def _queue_gauges(self) -> QueueGauges | None:
        if not self._started:
            return None
        stats = self.queue.stats()
        oldest = stats.oldest_enqueued_at
        return QueueGauges(
            depth=stats.depth,
            bytes=stats.bytes,
            capacity_bytes=stats.capacity_bytes,
            dead_letters=stats.dead_letters,
            oldest_age_seconds=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
        )

    async def start(self) -> None:
        cfg = self.config
        self.queue.open()
        self.metrics.observe_queue(self._queue_gauges)
        self.exporter = Exporter(self.queue, build_sink(self.target, cfg), cfg.exporter, self.metrics)
        await self.telemetry.start()
        otlp = cfg.receivers.otlp
        if otlp.grpc.enabled:
            self.grpc = OtlpGrpcReceiver(otlp.grpc, self.core)
            await self.grpc.start()
        if otlp.http.enabled:
            self.http = HttpServer(
                otlp_http_app(otlp.http, self.core),
                otlp.http.endpoint,
                graceful_timeout=cfg.service.shutdown_timeout,
            )
            await self.http.start()
        self.exporter.start()
        self._started = True
        stats = self.queue.stats()
        log.info(
            "startup",
            version=__version__,
            otlp_grpc=otlp.grpc.endpoint if otlp.grpc.enabled else None,
            otlp_http=otlp.http.endpoint if otlp.http.enabled else None,
            telemetry=cfg.telemetry.endpoint,
            queue_directory=str(cfg.queue.directory),
            queued_events=stats.depth,
            dead_letters=stats.dead_letters,
            rules=len(self.engine.rule_names),
            exporter=self.target.describe(),
        )
        if self.target.kind == "file":
            log.warning(
                "exporter_writing_to_file",
                path=self.target.endpoint,
                hint="set OPENMETER_TOKEN (Konnect) or OPENMETER_URL (self-hosted) to send to OpenMeter",
            )

    async def stop(self) -> None:
        deadline = time.monotonic() + self.config.service.shutdown_timeout
        self._stopping = True
        log.info("shutdown_started", timeout=self.config.service.shutdown_timeout)
        grace = self.config.service.shutdown_timeout / 2
        receivers = []
        if self.grpc is not None:
            receivers.append(self.grpc.stop(grace))
        if self.http is not None:
            receivers.append(self.http.stop())
        await asyncio.gather(*receivers)
        self.pipeline.close_intake()
        if self.exporter is not None:
            await self.exporter.stop(max(0.0, deadline - time.monotonic()))
        stats = self.queue.stats()
        self.queue.close()
        await self.telemetry.stop()
        log.info("shutdown_complete", queued_events=stats.depth, dead_letters=stats.dead_letters)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
        except BaseException:
            await self._abort_start()
            raise
        await stop.wait()
        await self.stop()

    async def _abort_start(self) -> None:
        """Undo a partial start (e.g. a port in use) so the process exits cleanly."""
        self._stopping = True
        if self.grpc is not None:
            await self.grpc.stop(0)
        if self.http is not None:
            await self.http.stop()
        await self.telemetry.stop()
        if self.exporter is not None:
            await self.exporter.stop(0)
        self.queue.close()
