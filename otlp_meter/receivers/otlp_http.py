"""OTLP over HTTP: ``POST /v1/logs``, ``/v1/metrics``, ``/v1/traces`` in protobuf or JSON, optionally
compressed (gzip, zstd, deflate/zlib: ``encoding.py``).

A thin transport: authenticate, decode the body, hand the request to the receiver core, answer in
the request's encoding. Errors are ``google.rpc.Status`` bodies, status codes from
``receivers/status.py``. A refusal sent before the body was read closes the connection (the rest of
the body would otherwise be read as the next request, or keep a slow client attached).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_meter.errors import DecodeError, PayloadTooLargeError, UnsupportedMediaTypeError
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
from otlp_meter.receivers import otlp_json
from otlp_meter.receivers.auth import Authenticator
from otlp_meter.receivers.config import HttpReceiverConfig
from otlp_meter.receivers.core import ReceiverCore, SignalName, Transport, count_records
from otlp_meter.receivers.encoding import OFF_LOOP_BYTES, decompress_body
from otlp_meter.receivers.status import METHOD_NOT_ALLOWED, NOT_FOUND, Refusal

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = {"application/x-protobuf", "application/protobuf"}

_ROUTES: dict[str, tuple[SignalName, type[Message], Callable[[bytes], Message | None]]] = {
    "/v1/logs": ("logs", ExportLogsServiceRequest, otlp_json.decode_logs_request),
    "/v1/metrics": ("metrics", ExportMetricsServiceRequest, otlp_json.decode_metrics_request),
    "/v1/traces": ("traces", ExportTraceServiceRequest, otlp_json.decode_traces_request),
}


def _decode(
    body: bytes, mtype: str, request_type: type[Message], json_decode: Callable[[bytes], Message | None]
) -> Message:
    if mtype in _PROTOBUF_TYPES:
        try:
            return request_type.FromString(body)
        except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
            raise DecodeError(f"malformed {request_type.__name__}: {exc}") from exc
    decoded = json_decode(body)
    return decoded if decoded is not None else request_type()


def peer(scope: Scope) -> str | None:
    """``host:port`` of the client, for logs."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def otlp_http_app(
    config: HttpReceiverConfig, core: ReceiverCore, auth: Authenticator | None = None
) -> AsgiApp:
    """The OTLP/HTTP receiver as an ASGI app (serve it with :class:`~otlp_meter.http_server.HttpServer`).

    With ``auth``, every request must carry an accepted bearer token (checked before the body is read).
    """
    limit = config.max_request_body_size
    read_timeout = config.read_timeout

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = _ROUTES.get(scope["path"].rstrip("/") or "/")
        mtype = media_type(header(scope, b"content-type"))
        encoding_json = mtype not in _PROTOBUF_TYPES
        if route is None:
            await _refuse(send, NOT_FOUND, encoding_json)
            return
        signal, request_type, json_decode = route
        transport: Transport = "http_json" if encoding_json else "http_protobuf"
        if scope["method"] != "POST":
            await _refuse(send, METHOD_NOT_ALLOWED, encoding_json, [(b"allow", b"POST")])
            return
        request: Message | None = None
        body_read = False
        try:
            if auth is not None:
                auth.check(header(scope, b"authorization"), peer(scope))
            if mtype not in _PROTOBUF_TYPES and mtype != JSON:
                raise UnsupportedMediaTypeError(
                    f"unsupported Content-Type {mtype or '(none)'!r}; use {PROTOBUF} or {JSON}"
                )
            body = await read_body(receive, limit, read_timeout)
            if body is None:
                raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
            body_read = True
            body = await decompress_body(body, header(scope, b"content-encoding"), limit)
            if len(body) < OFF_LOOP_BYTES:
                request = _decode(body, mtype, request_type, json_decode)
            else:  # a big body: the loop keeps serving other requests meanwhile
                request = await asyncio.to_thread(_decode, body, mtype, request_type, json_decode)
            response = await core.export(signal, transport, request, wire_size=len(body))
        except ClientDisconnectedError:
            return  # nothing was taken and nobody is listening
        except Exception as exc:
            records = count_records(request) if request is not None else 0
            refusal = core.refuse(signal, transport, exc, records, peer(scope))
            await _refuse(send, refusal, encoding_json, close=not body_read)
            return
        if encoding_json:
            await respond(send, 200, otlp_json.encode_response(response), JSON)
        else:
            await respond(send, 200, response.SerializeToString(), PROTOBUF)

    return app


def refusal_headers(refusal: Refusal) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` for retryable refusals, ``WWW-Authenticate`` for 401."""
    headers = []
    if refusal.retry_after is not None:
        # Whole seconds, rounded up: never invite the sender back before the RetryInfo delay.
        headers.append((b"retry-after", str(math.ceil(refusal.retry_after)).encode()))
    if refusal.http_status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return headers


async def _refuse(
    send: Send,
    refusal: Refusal,
    encoding_json: bool,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    status = refusal.to_status()
    extra = list(headers or []) + refusal_headers(refusal)
    if encoding_json:
        body, content_type = otlp_json.encode_status(status), JSON
    else:
        body, content_type = status.SerializeToString(), PROTOBUF
    await respond(send, refusal.http_status, body, content_type, extra, close=close)
