"""Readiness: one report, answered by ``/readyz`` (JSON) and by the gRPC health service.

Both derive from the same function, evaluated when asked, so a kubelet probing ``/readyz`` and a
gRPC load balancer probing ``grpc.health.v1.Health`` on the OTLP port can never disagree. Ready
means "route new data here": the service has started and is not shutting down, every enabled
receiver is listening, and the queue is open and below its limit. Liveness (``/healthz``) is only
"the process answers"; a full queue is not a reason to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
HEALTH_SERVICE = "grpc.health.v1.Health"


@dataclass(frozen=True, slots=True)
class Check:
    """One condition of readiness: ``reason`` says why it fails ("ok" when it holds), ``details``
    what was seen (JSON-serializable)."""

    ok: bool
    reason: str = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """Readiness as a set of named checks, in the order they are reported."""

    checks: Mapping[str, Check]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    @property
    def reason(self) -> str:
        """The first failing check's reason, or "ok"."""
        return next((check.reason for check in self.checks.values() if not check.ok), "ok")

    def to_json(self) -> dict[str, Any]:
        """The ``/readyz`` body: ``status``, ``reason`` and every check with what it saw."""
        checks: dict[str, Any] = {}
        for name, check in self.checks.items():
            entry: dict[str, Any] = {"ok": check.ok}
            if not check.ok:
                entry["reason"] = check.reason
            checks[name] = entry | dict(check.details)
        return {"status": "ready" if self.ready else "not ready", "reason": self.reason, "checks": checks}


Readiness = Callable[[], ReadinessReport]
"""Evaluated on every probe; must be cheap and must not block the event loop for long."""


def report(ready: bool, reason: str = "ok") -> ReadinessReport:
    """A report of one check named ``service`` (for tests and simple embeddings)."""
    return ReadinessReport({"service": Check(ready, "ok" if ready else reason)})


class HealthService:
    """``grpc.health.v1.Health`` for a ``grpc.aio`` server, answering from ``readiness``.

    ``services`` are the names it knows besides "" (the whole server); any other name is NOT_FOUND
    (Check) or SERVICE_UNKNOWN (Watch), as the health-checking protocol says. Every known name has
    the same status: the OTLP services share one pipeline and one queue. ``Watch`` re-evaluates
    readiness every ``poll_interval`` seconds and sends each change; :meth:`close` ends the watches
    (at shutdown, so that open streams do not hold the server's grace period).
    """

    def __init__(self, readiness: Readiness, services: Iterable[str] = (), poll_interval: float = 1.0):
        self._readiness = readiness
        self._services = frozenset(("", *services))
        self._poll_interval = poll_interval
        self._closed = asyncio.Event()

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register on ``server`` (before it starts)."""
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def status(self, service: str = "") -> int:
        """SERVING or NOT_SERVING for a known service, SERVICE_UNKNOWN otherwise."""
        if service not in self._services:
            return int(SERVICE_UNKNOWN)
        return int(SERVING if not self._closed.is_set() and self._readiness().ready else NOT_SERVING)

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        statuses = {name: health_pb2.HealthCheckResponse(status=self.status(name)) for name in self._services}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        last: int | None = None
        while True:
            # Read "closed" before the status: a close that comes while the answer is being sent
            # gets one more round, so the last thing a watcher hears is NOT_SERVING.
            closed = self._closed.is_set()
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if closed:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._poll_interval)

    def close(self) -> None:
        """From now on every service is NOT_SERVING and open watches end after saying so."""
        self._closed.set()
