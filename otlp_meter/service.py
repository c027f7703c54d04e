"""Builds the stages in flow order, starts them, and shuts them down in reverse order.

Shutdown (SIGTERM/SIGINT): receivers stop accepting and finish in-flight requests, intake closes,
the exporter gets the rest of the deadline for in-flight deliveries, the queue closes cleanly.
Whatever was not delivered stays on disk and goes out after the next start.

With ``service.workers`` > 1 this process is the *primary* and spawns intake workers
(:mod:`otlp_meter.workers`); an intake worker is a ``Service`` built with ``worker=``: the same
receivers, rules and pipeline on the same ports and queue, and no exporter, sources or telemetry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
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
from otlp_meter.http_server import HttpServer, ServerLimits
from otlp_meter.pipeline import Pipeline
from otlp_meter.queue.lmdb_queue import LmdbQueue
from otlp_meter.queue.types import QueueStats
from otlp_meter.receivers.auth import Authenticator, TokenSet
from otlp_meter.receivers.config import AuthConfig, TlsConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.receivers.events_api import events_api_app
from otlp_meter.receivers.otlp_grpc import SERVICE_NAMES, OtlpGrpcReceiver
from otlp_meter.receivers.otlp_http import otlp_http_app
from otlp_meter.receivers.tls import ServerTls
from otlp_meter.rules.engine import RulesEngine
from otlp_meter.rules.loader import rule_file_texts
from otlp_meter.sources.config import build_sources
from otlp_meter.sources.runner import PipelineSink, SourceRunner
from otlp_meter.telemetry.health import Check, HealthService, ReadinessReport
from otlp_meter.telemetry.logging import get_logger
from otlp_meter.telemetry.metrics import Metrics
from otlp_meter.telemetry.peers import REPORT_INTERVAL
from otlp_meter.telemetry.server import telemetry_app
from otlp_meter.workers import ConfigDocument, WorkerLink, WorkerPool

log = get_logger("service")


def build_sink(target: Target, config: Config) -> Sink:
    if target.kind == "file":
        return FileSink(Path(target.endpoint))
    openmeter = config.exporter.openmeter
    return OpenMeterSink(target, openmeter.timeout, config.exporter.max_in_flight, ca_file=openmeter.ca_file)


class Service:
    """One running otlp-meter. ``await run(stop)`` returns after a clean shutdown.

    ``document``: the config as read (spawning intake workers needs it when ``service.workers`` >
    1). ``worker``: run as an intake worker over this link to the primary. ``with_sources=False``:
    build no sources (``otlp-meter check``, away from the pod's environment).
    """

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str] | None = None,
        *,
        document: ConfigDocument | None = None,
        worker: WorkerLink | None = None,
        with_sources: bool = True,
    ) -> None:
        self.config = config
        self.worker = worker
        # The rule files are read once, by the primary: a worker (re)started later compiles the same.
        if worker is not None and document is not None:
            rule_texts = dict(document.rule_files)
        else:
            rule_texts = rule_file_texts(config.rules)
            if document is not None:
                document = dataclasses.replace(document, rule_files=rule_texts)
        self._document = document
        self._reuse_port = config.service.workers > 1
        self.pool: WorkerPool | None = None
        self.metrics = Metrics(migration_aliases=config.telemetry.metrics.migration_aliases)
        self.engine = RulesEngine.from_config(config.rules, texts=rule_texts)
        self.target = resolve_target(
            config.exporter, config.queue.directory, env if env is not None else os.environ
        )
        self.queue = LmdbQueue(
            config.queue,
            on_append=self._on_append,
            on_commit=self.metrics.observe_commit,
            batch_events=config.exporter.batch.max_events,
        )
        self.exporter: Exporter | None = None
        self.pipeline = Pipeline(self.engine, self.queue, self.metrics)
        self.core = ReceiverCore(self.pipeline, self.metrics, config.receivers.limits)
        # Ready CloudEvents bound for Konnect (v3) are checked as v3 wherever they come in (the
        # events API, S3 cloudevents files): acknowledged means deliverable.
        self._strict_events = self.target.kind == "openmeter" and self.target.api == "v3"
        sources = (
            []
            if worker is not None or not with_sources
            else build_sources(config.sources, self.metrics.sources, strict_events=self._strict_events)
        )
        self.sources = SourceRunner(sources, PipelineSink(self.pipeline, self.queue))
        self._stopping = False
        self._started = False
        self._queue_open = False
        self._listening: dict[str, str] = {}
        """Receiver name → ``host:port``, from a successful start until its stop begins."""
        self.health = HealthService(self.readiness, SERVICE_NAMES)
        self.grpc: OtlpGrpcReceiver | None = None
        self.http: HttpServer | None = None
        self.events: HttpServer | None = None
        # Token files and certificates are read now: a missing one is a config error before anything
        # starts (exit code 2), not a half-started service.
        self._ingest_tokens = self._tokens(config.receivers.auth, "receivers.auth")
        receivers = config.receivers
        self._grpc_tls = self._tls(receivers.otlp.grpc.tls, "otlp_grpc", "receivers.otlp.grpc.tls")
        self._http_tls = self._tls(receivers.otlp.http.tls, "otlp_http", "receivers.otlp.http.tls")
        self._events_tls = self._tls(receivers.events_api.tls, "events_api", "receivers.events_api.tls")
        telemetry = config.telemetry
        self.telemetry: HttpServer | None = None
        if worker is None:
            self.telemetry = HttpServer(
                telemetry_app(self.metrics, self.readiness, self._auth("telemetry", telemetry.auth)),
                telemetry.endpoint,
                tls=self._tls(telemetry.tls, "telemetry", "telemetry.tls"),
                name="telemetry",
                metrics=self.metrics,
            )

    @staticmethod
    def _tokens(config: AuthConfig, key: str) -> TokenSet | None:
        return TokenSet(config, config_key=key) if config.enabled else None

    def _auth(self, receiver: str, config: AuthConfig | None = None) -> Authenticator | None:
        """An authenticator for one receiver: the ingest tokens, or those of ``config``."""
        tokens = self._ingest_tokens if config is None else self._tokens(config, "telemetry.auth")
        return Authenticator(tokens, self.metrics, receiver) if tokens is not None else None

    def _tls(self, config: TlsConfig, server: str, key: str) -> ServerTls | None:
        return ServerTls(config, server, self.metrics, config_key=key) if config.enabled else None

    def _on_append(self) -> None:
        if self.exporter is not None:
            self.exporter.notify()
        elif self.worker is not None:
            self.worker.wake()  # the primary's exporter

    def readiness(self) -> ReadinessReport:
        """Ready to take data: started and not stopping, every enabled receiver listening, the
        queue open and below its limit, and every intake worker listening. Served by /readyz and
        the gRPC health service (an intake worker answers the latter with its own readiness)."""
        checks = {
            "lifecycle": self._lifecycle_check(),
            "receivers": self._receivers_check(),
            "queue": self._queue_check(),
        }
        if self.config.service.workers > 1 and self.worker is None:
            checks["workers"] = self._workers_check()
        return ReadinessReport(checks)

    def _workers_check(self) -> Check:
        if self.pool is None:
            return Check(False, "workers not started", {"expected": self.config.service.workers - 1})
        return self.pool.check()

    def _lifecycle_check(self) -> Check:
        if self._stopping:
            return Check(False, "shutting down", {"state": "shutting down"})
        if not self._started:
            return Check(False, "starting", {"state": "starting"})
        return Check(True, details={"state": "running"})

    def _receivers_check(self) -> Check:
        otlp, events = self.config.receivers.otlp, self.config.receivers.events_api
        enabled = {
            "otlp_grpc": otlp.grpc.enabled,
            "otlp_http": otlp.http.enabled,
            "events_api": events.enabled,
        }
        # An HTTP server whose task ended (crashed) no longer listens, though it started.
        servers = (("otlp_http", self.http), ("events_api", self.events))
        stopped = {name for name, server in servers if server is not None and not server.serving}
        listening = {name: address for name, address in self._listening.items() if name not in stopped}
        missing = [name for name, on in enabled.items() if on and name not in listening]
        details = {"listening": listening, "not_listening": missing}
        if missing:
            return Check(False, f"not listening: {', '.join(missing)}", details)
        return Check(True, details=details)

    def _queue_check(self) -> Check:
        if not self._queue_open:
            return Check(False, "queue not open", {"open": False})
        if not self.queue.writable:  # its writer thread crashed (logged): every write is refused
            return Check(False, "queue writer stopped", {"open": True, "writable": False})
        stats = self.queue.stats()
        full = stats.full or stats.bytes >= stats.capacity_bytes  # full: refusing until drained below
        details = {
            "open": True,
            "full": full,
            "events": stats.depth,
            "bytes": stats.bytes,
            "capacity_bytes": stats.capacity_bytes,
        }
        return Check(False, "queue full", details) if full else Check(True, details=details)

    def _queue_stats(self) -> QueueStats | None:
        return self.queue.stats() if self._queue_open else None

    async def start(self) -> None:
        cfg = self.config
        # An intake worker writes next to its primary, which holds the owner lock and exports.
        self.queue.open(owner=self.worker is None)
        self._queue_open = True
        self.pipeline.open_streams()
        self.metrics.observe_queue(self._queue_stats)
        if self.worker is not None:
            await self.worker.open()
        else:
            self.exporter = Exporter(self.queue, build_sink(self.target, cfg), cfg.exporter, self.metrics)
        if self.telemetry is not None:
            await self.telemetry.start()
        await self._start_receivers()
        if self.worker is not None:
            self._started = True
            self.worker.send({"type": "ready", "pid": os.getpid()})
            self.worker.report(self.metrics.snapshot, REPORT_INTERVAL)  # the primary's /metrics
            log.info("worker_listening", pid=os.getpid(), **self._listening)
            return
        if cfg.service.workers > 1:
            if self._document is None:
                raise RuntimeError("service.workers > 1 needs the config document to spawn workers")
            self.pool = WorkerPool(
                cfg.service.workers - 1, self._document, self._listening, self._on_append, self.metrics
            )
            self.pool.start()
        assert self.exporter is not None
        self.exporter.start()
        self.pipeline.start_expiry()  # the primary alone forgets ended cumulative streams
        self.sources.start()
        self._started = True
        self._log_startup()

    async def _start_receivers(self) -> None:
        cfg = self.config
        otlp, events = cfg.receivers.otlp, cfg.receivers.events_api
        if otlp.grpc.enabled:
            self.grpc = OtlpGrpcReceiver(
                otlp.grpc,
                self.core,
                self._auth("otlp_grpc"),
                self._grpc_tls,
                health=self.health,
                reuse_port=self._reuse_port,
            )
            await self.grpc.start()
            self._listening["otlp_grpc"] = self.grpc.address or otlp.grpc.endpoint
        if otlp.http.enabled:
            self.http = HttpServer(
                otlp_http_app(otlp.http, self.core, self._auth("otlp_http")),
                otlp.http.endpoint,
                graceful_timeout=cfg.service.shutdown_timeout,
                limits=ServerLimits.of(otlp.http),
                tls=self._http_tls,
                name="otlp_http",
                metrics=self.metrics,
                reuse_port=self._reuse_port,
            )
            await self.http.start()
            self._listening["otlp_http"] = _address(self.http)
        if events.enabled:
            self.events = HttpServer(
                events_api_app(events, self.core, auth=self._auth("events_api"), strict=self._strict_events),
                events.endpoint,
                graceful_timeout=cfg.service.shutdown_timeout,
                limits=ServerLimits.of(events),
                tls=self._events_tls,
                name="events_api",
                metrics=self.metrics,
                reuse_port=self._reuse_port,
            )
            await self.events.start()
            self._listening["events_api"] = _address(self.events)

    def _log_startup(self) -> None:
        cfg = self.config
        assert self.telemetry is not None
        stats = self.queue.stats()
        log.info(
            "startup",
            version=__version__,
            # Where it listens, with the ports actually bound (an endpoint may say port 0).
            otlp_grpc=self._listening.get("otlp_grpc"),
            otlp_http=self._listening.get("otlp_http"),
            events_api=self._listening.get("events_api"),
            telemetry=_address(self.telemetry),
            ingest_auth="bearer token" if self._ingest_tokens is not None else "none",
            tls=[name for name, tls in self._tls_settings() if tls.enabled],
            queue_directory=str(cfg.queue.directory),
            queued_events=stats.depth,
            dead_letters=stats.dead_letters,
            rules=len(self.engine.rule_names),
            sources=self.sources.names,
            exporter=self.target.describe(),
            workers=cfg.service.workers,
        )
        if self.target.kind == "file":
            log.warning(
                "exporter_writing_to_file",
                path=self.target.endpoint,
                hint="set OPENMETER_TOKEN (Konnect) or OPENMETER_URL (self-hosted) to send to OpenMeter",
            )

    def _tls_settings(self) -> list[tuple[str, TlsConfig]]:
        r = self.config.receivers
        return [
            ("otlp_grpc", r.otlp.grpc.tls),
            ("otlp_http", r.otlp.http.tls),
            ("events_api", r.events_api.tls),
            ("telemetry", self.config.telemetry.tls),
        ]

    async def stop(self) -> None:
        deadline = time.monotonic() + self.config.service.shutdown_timeout
        self._stopping = True
        log.info("shutdown_started", timeout=self.config.service.shutdown_timeout)
        grace = self.config.service.shutdown_timeout / 2
        await self.sources.stop(grace)
        self._listening.clear()
        receivers = []
        if self.grpc is not None:
            receivers.append(self.grpc.stop(grace))
        if self.http is not None:
            receivers.append(self.http.stop())
        if self.events is not None:
            receivers.append(self.events.stop())
        if self.pool is not None:
            # The workers stop taking data at the same time, and finish their in-flight requests
            # (acknowledged only after the commit); the exporter runs on meanwhile.
            receivers.append(self.pool.stop(max(0.0, deadline - time.monotonic())))
        await asyncio.gather(*receivers)
        self.pipeline.close_intake()
        await self.pipeline.stop_expiry()
        if self.worker is not None:
            await self.worker.finish()  # the last metrics snapshot: every request is answered
        if self.exporter is not None:
            await self.exporter.stop(max(0.0, deadline - time.monotonic()))
        stats = self.queue.stats()
        self._queue_open = False
        self.queue.close()
        if self.telemetry is not None:
            await self.telemetry.stop()
        log.info("shutdown_complete", queued_events=stats.depth, dead_letters=stats.dead_letters)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
        except BaseException:
            await self._abort_start()
            raise
        # What exists now (modules, config, compiled rules, servers) lives as long as the process:
        # moved out of the collector's generations, a full collection no longer rescans it (~70k
        # objects, ~15-30 ms with the GIL held, stalling every request in flight).
        gc.freeze()
        await stop.wait()
        await self.stop()

    async def _abort_start(self) -> None:
        """Undo a partial start (e.g. a port in use) so the process exits cleanly."""
        self._stopping = True
        self._listening.clear()
        await self.sources.stop(0)
        if self.grpc is not None:
            await self.grpc.stop(0)
        if self.http is not None:
            await self.http.stop()
        if self.events is not None:
            await self.events.stop()
        if self.pool is not None:
            await self.pool.stop(self.config.service.shutdown_timeout)
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.exporter is not None:
            await self.exporter.stop(0)
        await self.pipeline.stop_expiry()
        self._queue_open = False
        self.queue.close()


def _address(server: HttpServer) -> str:
    host, port = server.address
    return f"{host}:{port}"
