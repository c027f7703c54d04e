"""The OpenMeter-compatible events API: the collector as a durable buffer in front of OpenMeter.

OpenMeter SDKs, curl and other collectors POST CloudEvents here exactly as they would to OpenMeter
(``/work/shared/openmeter-ingest-openapi.yaml``); the events keep their own ``id`` and ``source``,
are committed to the same queue (deduplicated by ``(source, id)``) and go out through the same
exporter. The answer comes after the commit, like every receiver's.

Paths, and the flavour of the answers they get:

* ``/api/v1/events`` — OpenMeter v1 (self-hosted, OpenMeter Cloud): 204, problems as v1 writes them
  (``validationErrors`` under ``extensions``).
* ``/events``, ``/openmeter/events``, ``/v3/openmeter/events``, ``/api/v3/openmeter/events`` —
  the v3 API (Konnect Metering & Billing, base URL ``…/v3/openmeter`` + ``/events``): 202, problems
  with ``invalid_parameters``, and no attributes beyond the schema (``additionalProperties: false``).

Events bound for a v3 exporter are checked as v3 on every path (``strict``), so that nothing
acknowledged here is refused there. Bodies may be gzip or deflate compressed (bounded by
``max_request_body_size`` after inflation, as OTLP/HTTP). Status codes come from the status table.
"""

from __future__ import annotations

import secrets
from http import HTTPStatus
from typing import Any, Literal

import orjson

from otlp_meter.errors import InvalidEventError, PayloadTooLargeError, UnsupportedMediaTypeError, event_path
from otlp_meter.http_server import (
    AsgiApp,
    ClientDisconnectedError,
    Receive,
    Scope,
    Send,
    header,
    media_type,
    read_body,
    respond,
)
from otlp_meter.receivers.auth import Authenticator
from otlp_meter.receivers.cloudevents import BATCH, JSON, MEDIA_TYPES, SINGLE, parse_events
from otlp_meter.receivers.config import EventsApiConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.receivers.encoding import decompress_body
from otlp_meter.receivers.otlp_http import peer, refusal_headers
from otlp_meter.receivers.status import METHOD_NOT_ALLOWED, NOT_FOUND, Refusal

Flavour = Literal["v1", "v3"]
PROBLEM = "application/problem+json"
V1_PATHS = frozenset({"/api/v1/events"})
V3_PATHS = frozenset({"/events", "/openmeter/events", "/v3/openmeter/events", "/api/v3/openmeter/events"})
_SUCCESS: dict[Flavour, int] = {"v1": 204, "v3": 202}


def flavour_of(path: str) -> Flavour | None:
    """Which API a path belongs to (trailing slashes ignored), None if it is not an ingest path."""
    path = path.rstrip("/") or "/"
    if path in V1_PATHS:
        return "v1"
    return "v3" if path in V3_PATHS else None


def problem_document(flavour: Flavour, status: int, detail: str, exc: BaseException | None = None) -> bytes:
    """An RFC 7807 problem as OpenMeter's v1 or v3 API writes it."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    problems = exc.problems if isinstance(exc, InvalidEventError) else []
    doc: dict[str, Any]
    if flavour == "v1":
        doc = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        doc["instance"] = f"urn:request:otlp-meter/{secrets.token_hex(8)}"
        if problems:
            errors = [
                {"code": "validation_error", "message": f"{event_path(i, f)}: {m}", "index": i, "field": f}
                for i, f, m in problems
            ]
            doc["extensions"] = {"validationErrors": errors}
    else:
        doc = {
            "type": f"https://httpstatuses.com/{status}",
            "title": title,
            "status": status,
            "detail": detail,
        }
        doc["instance"] = f"otlp-meter:trace:{secrets.token_hex(8)}"
        if status == 400:
            params = [{"field": event_path(i, f), "reason": m, "source": "body"} for i, f, m in problems]
            doc["invalid_parameters"] = params or [{"field": "body", "reason": detail, "source": "body"}]
    return orjson.dumps(doc)


def events_api_app(
    config: EventsApiConfig,
    core: ReceiverCore,
    *,
    auth: Authenticator | None = None,
    strict: bool = False,
) -> AsgiApp:
    """The events API as an ASGI app. ``strict``: check every event as v3 (the exporter targets v3)."""
    limit = config.max_request_body_size
    max_events = config.max_events_per_request
    read_timeout = config.read_timeout

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        flavour = flavour_of(scope["path"])
        if flavour is None:
            await _refuse(send, "v1", NOT_FOUND, close=True)
            return
        if scope["method"] != "POST":
            await _refuse(send, flavour, METHOD_NOT_ALLOWED, [(b"allow", b"POST")], close=True)
            return
        body_read = False
        try:
            if auth is not None:
                auth.check(header(scope, b"authorization"), peer(scope))
            content_type = header(scope, b"content-type")
            if media_type(content_type) not in MEDIA_TYPES:
                raise UnsupportedMediaTypeError(
                    f"invalid content type: {media_type(content_type) or '(none)'!r}; "
                    f"use {SINGLE}, {BATCH} or {JSON}"
                )
            body = await read_body(receive, limit, read_timeout)
            if body is None:
                raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
            body_read = True
            body = await decompress_body(body, header(scope, b"content-encoding"), limit)
            events = parse_events(body, content_type, strict=strict or flavour == "v3", max_events=max_events)
            await core.ingest_events("events_api", events, wire_size=len(body))
        except ClientDisconnectedError:
            return  # nothing was taken and nobody is listening
        except Exception as exc:
            refusal = core.refuse("events", "events_api", exc, peer=peer(scope))
            await _refuse(send, flavour, refusal, exc=exc, close=not body_read)
            return
        await respond(send, _SUCCESS[flavour])

    return app


async def _refuse(
    send: Send,
    flavour: Flavour,
    refusal: Refusal,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    exc: BaseException | None = None,
    close: bool = False,
) -> None:
    status = refusal.events_api_status
    body = problem_document(flavour, status, refusal.message, exc)
    extra = list(headers or []) + refusal_headers(refusal)
    await respond(send, status, body, PROBLEM, extra, close=close)
