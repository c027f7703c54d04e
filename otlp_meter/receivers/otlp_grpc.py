"""OTLP over gRPC: LogsService, MetricsService and (accept-and-discard) TraceService.

Handlers take raw bytes so that a malformed message is our INVALID_ARGUMENT, not grpc's INTERNAL.
With auth, the ``authorization`` metadata must carry an accepted bearer token (UNAUTHENTICATED
otherwise); with TLS, certificates are reloaded on new connections when their files change. The
gRPC health service (``grpc.health.v1.Health``), when given, is served on the same port without
auth: a load balancer's probe carries no secret, and the answer tells nothing beyond "ready".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otlp_meter.errors import DecodeError
from otlp_meter.receivers.auth import Authenticator
from otlp_meter.receivers.config import GrpcReceiverConfig
from otlp_meter.receivers.core import ReceiverCore, SignalName, count_records
from otlp_meter.receivers.tls import ServerTls
from otlp_meter.telemetry.health import HealthService

_SERVICES: dict[SignalName, tuple[str, type[Message]]] = {
    "logs": ("opentelemetry.proto.collector.logs.v1.LogsService", ExportLogsServiceRequest),
    "metrics": ("opentelemetry.proto.collector.metrics.v1.MetricsService", ExportMetricsServiceRequest),
    "traces": ("opentelemetry.proto.collector.trace.v1.TraceService", ExportTraceServiceRequest),
}
SERVICE_NAMES = tuple(service for service, _ in _SERVICES.values())
"""The OTLP services served, by their full gRPC names (also the names the health service knows)."""

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _identity(data: bytes) -> bytes:
    return data


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def export_handler(
    core: ReceiverCore, signal: SignalName, request_type: type[Message], auth: Authenticator | None = None
) -> Handler:
    """The Export method of one OTLP service, as a raw-bytes unary handler."""

    async def export(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request: Message | None = None
        try:
            if auth is not None:
                auth.check(_authorization(context), context.peer())
            try:
                request = request_type.FromString(body)
            except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
                raise DecodeError(f"malformed {request_type.__name__}: {exc}") from exc
            response = await core.export(signal, "grpc", request, wire_size=len(body))
        except Exception as exc:
            records = count_records(request) if request is not None else 0
            refusal = core.refuse(signal, "grpc", exc, records, context.peer())
            trailing = (("grpc-status-details-bin", refusal.to_status().SerializeToString()),)
            await context.abort(refusal.grpc_code, refusal.message, trailing_metadata=trailing)
            raise AssertionError("unreachable") from exc  # abort raises
        return response.SerializeToString()

    return export


def server_options(config: GrpcReceiverConfig, reuse_port: bool) -> list[tuple[str, int]]:
    """The gRPC core's channel arguments for the receiver's server."""
    options = [
        ("grpc.max_receive_message_length", config.max_recv_msg_size),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        # Shared only with our own intake workers (service.workers); otherwise a second
        # otlp-meter on the port must fail to start rather than take half the traffic.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
    ]
    if config.idle_timeout is not None:
        options.append(("grpc.max_connection_idle_ms", _ms(config.idle_timeout)))
    if config.max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", _ms(config.max_connection_age)))
        options.append(("grpc.max_connection_age_grace_ms", _ms(config.max_connection_age_grace)))
    return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class OtlpGrpcReceiver:
    """The OTLP/gRPC server (``grpc.aio``, on the running loop) for the three OTLP services.

    ``port`` is the port actually bound once :meth:`start` returned (useful with ``host:0``).
    ``reuse_port`` binds with SO_REUSEPORT, for the intake workers that share the port.
    """

    def __init__(
        self,
        config: GrpcReceiverConfig,
        core: ReceiverCore,
        auth: Authenticator | None = None,
        tls: ServerTls | None = None,
        health: HealthService | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._config = config
        self._reuse_port = reuse_port
        self._core = core
        self._auth = auth
        self._tls = tls
        self._health = health
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def address(self) -> str | None:
        """``host:port`` listened on (the port actually bound), None unless serving."""
        if self._server is None or self.port is None:
            return None
        return f"{self._config.endpoint.rpartition(':')[0]}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; raises OSError when the endpoint cannot be bound (e.g. in use)."""
        server = grpc.aio.server(options=server_options(self._config, self._reuse_port))
        for signal, (service, request_type) in _SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(
                export_handler(self._core, signal, request_type, self._auth),
                request_deserializer=_identity,
                response_serializer=_identity,
            )
            # Registered with the C core (grpcio >= 1.63): a call is routed without the generic
            # handlers' Python lookup (a HandlerCallDetails object and a service() call per RPC).
            if hasattr(server, "add_registered_method_handlers"):
                server.add_registered_method_handlers(service, {"Export": handler})
            else:  # pragma: no cover - older grpcio
                server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
                )
        if self._health is not None:
            self._health.add_to(server)
        # grpcio reports a failed bind as RuntimeError (older releases returned 0); either way the
        # caller gets the OSError that "address in use" is everywhere else.
        try:
            if self._tls is not None:
                port = server.add_secure_port(self._config.endpoint, self._tls.grpc_credentials())
            else:
                port = server.add_insecure_port(self._config.endpoint)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for OTLP/gRPC on {self._config.endpoint} (address in use or invalid)"
            ) from exc
        if port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {self._config.endpoint} (address in use?)")
        self.port = port
        await server.start()
        self._server = server

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` seconds."""
        if self._health is not None:
            self._health.close()  # health watches are streams: end them rather than wait out the grace
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
