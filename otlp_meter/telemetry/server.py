"""The telemetry endpoint: ``/metrics`` (Prometheus text or OpenMetrics), ``/healthz``, ``/readyz``.

With ``auth``, ``/metrics`` needs a bearer token (``telemetry.auth``); the probes stay open, since a
kubelet probe carries no secret and they tell nothing beyond "up" and "taking data" (the readiness
body names listening addresses and queue fill, no data and no configuration secrets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from otlp_meter.errors import AuthenticationError
from otlp_meter.http_server import AsgiApp, Receive, Scope, Send, header, respond
from otlp_meter.telemetry.health import Readiness
from otlp_meter.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from otlp_meter.receivers.auth import Authenticator


def telemetry_app(metrics: Metrics, readiness: Readiness, auth: Authenticator | None = None) -> AsgiApp:
    """The telemetry endpoint as an ASGI app; ``auth`` guards ``/metrics`` only."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await respond(send, 405, b"method not allowed\n", "text/plain", [(b"allow", b"GET, HEAD")])
        elif path == "/metrics" and not _authorized(auth, scope):
            await respond(send, 401, b"unauthorized\n", "text/plain", [(b"www-authenticate", b"Bearer")])
        elif path == "/metrics":
            if "application/openmetrics-text" in (header(scope, b"accept") or ""):
                body = generate_openmetrics(metrics.registry)  # type: ignore[no-untyped-call]
                await respond(send, 200, body, OPENMETRICS_CONTENT_TYPE)
            else:
                await respond(send, 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            await respond(send, 200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            report = readiness()
            body = orjson.dumps(report.to_json())
            await respond(send, 200 if report.ready else 503, body, "application/json")
        else:
            await respond(send, 404, b"not found\n", "text/plain")

    return app


def _authorized(auth: Authenticator | None, scope: Scope) -> bool:
    if auth is None:
        return True
    client = scope.get("client")
    try:
        auth.check(header(scope, b"authorization"), f"{client[0]}:{client[1]}" if client else None)
    except AuthenticationError:
        return False
    return True
