"""Configuration of the receivers (OTLP gRPC, OTLP/HTTP, the events API) and what guards them:
bearer tokens, TLS, limits on input and on slow clients.

``AuthConfig`` and ``TlsConfig`` are also used by the telemetry endpoint (``telemetry.auth``/``tls``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from otlp_meter.config_types import ByteSize, Duration, Endpoint, Section

MiB = 1024 * 1024


class TlsConfig(Section):
    """TLS for one server. Files are re-read when they change (cert-manager, Vault agent rotation)."""

    cert_file: Path | None = Field(
        None, description="PEM certificate chain of the server. Set together with key_file to enable TLS."
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file (unencrypted).")
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).",
    )
    reload_interval: Duration = Field(
        10.0,
        description="Check the files for changes at most this often (on new connections); a changed, "
        "valid set is used for every connection made after it. 0 checks on every connection.",
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (mutual TLS is TLS first)")
        return self


class AuthConfig(Section):
    """Bearer tokens a client must present (``Authorization: Bearer <token>``). None set: no auth."""

    tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Accepted tokens; use ${ENV} to keep them out of the file. Several tokens allow "
        "rotation: add the new one, move the clients, remove the old one.",
    )
    token_files: list[Path] = Field(
        default_factory=list,
        description="Files with one accepted token per line ('#' comments and blank lines ignored), "
        "e.g. a mounted Kubernetes Secret. Re-read when they change.",
    )
    reload_interval: Duration = Field(
        5.0, description="Check token_files for changes at most this often (on requests)."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.token_files)

    @field_validator("tokens")
    @classmethod
    def _no_blank_tokens(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        # An unset variable expanded to "" must not turn into "no password": fail closed at load.
        for token in tokens:
            value = token.get_secret_value()
            if not value.strip():
                raise ValueError("a token is empty (an environment variable expanded to nothing?)")
            if value != value.strip() or any(c.isspace() for c in value):
                raise ValueError("a token contains whitespace")
        return tokens


class HttpServerConfig(Section):
    """Guards every HTTP server has against slow or greedy clients (slowloris)."""

    read_header_timeout: Duration = Field(
        10.0, gt=0, description="A connection must send a complete request head within this time, else 408."
    )
    read_timeout: Duration = Field(
        60.0, gt=0, description="The whole request body must arrive within this time, else 503 and closed."
    )
    idle_timeout: Duration = Field(30.0, description="Idle keep-alive connections are closed after this.")
    max_header_size: ByteSize = Field(
        64 * 1024, description="Largest request head (request line and headers); larger: 431 and closed."
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections beyond this are closed at once (no file handle starvation)."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS (HTTPS), off unless cert_file is set.")


class GrpcReceiverConfig(Section):
    enabled: bool = Field(True, description="Serve OTLP over gRPC.")
    endpoint: Endpoint = Field("0.0.0.0:4317", description="host:port to listen on.")
    max_recv_msg_size: ByteSize = Field(16 * MiB, gt=0, description="Largest request message accepted.")
    max_concurrent_streams: int = Field(
        100, ge=1, description="Concurrent RPCs per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)."
    )
    idle_timeout: Duration | None = Field(
        None,
        gt=0,
        description="Close a connection after this long without RPCs (HTTP/2 GOAWAY; clients reconnect "
        "when they next send). Default: never.",
    )
    max_connection_age: Duration | None = Field(
        None,
        gt=0,
        description="Ask a client to reconnect after this long (GOAWAY; in-flight RPCs get "
        "max_connection_age_grace), so long-lived connections spread again over service.workers "
        "and over replicas behind a load balancer. Default: never.",
    )
    max_connection_age_grace: Duration = Field(
        30.0, gt=0, description="How long in-flight RPCs may run after max_connection_age."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS, off unless cert_file is set.")


class HttpReceiverConfig(HttpServerConfig):
    enabled: bool = Field(True, description="Serve OTLP over HTTP (protobuf and JSON).")
    endpoint: Endpoint = Field("0.0.0.0:4318", description="host:port to listen on.")
    max_request_body_size: ByteSize = Field(
        20 * MiB, gt=0, description="Largest request body accepted, measured after decompression."
    )


class OtlpReceiverConfig(Section):
    grpc: GrpcReceiverConfig = Field(default_factory=GrpcReceiverConfig, description="OTLP/gRPC server.")
    http: HttpReceiverConfig = Field(default_factory=HttpReceiverConfig, description="OTLP/HTTP server.")


class EventsApiConfig(HttpServerConfig):
    """The OpenMeter-compatible ingest API (``POST /api/v1/events``), on its own endpoint."""

    enabled: bool = Field(True, description="Serve the OpenMeter-compatible events API.")
    endpoint: Endpoint = Field("0.0.0.0:8080", description="host:port to listen on.")
    max_request_body_size: ByteSize = Field(
        20 * MiB, gt=0, description="Largest request body, measured after decompression; larger: 413."
    )
    max_events_per_request: int = Field(
        10_000, ge=1, description="Most events in one request; more: 413 (split the batch)."
    )


class LimitsConfig(Section):
    """Per-record limits on OTLP input, checked before the rules run. A request breaking one is
    refused whole (INVALID_ARGUMENT / 400) naming the record, so hostile input never reaches the
    rules, the queue or the dead-letter store."""

    max_attributes_per_record: int = Field(
        1024, ge=1, description="Most attributes on one log record, data point, resource or scope."
    )
    max_attribute_value_size: ByteSize = Field(
        1 * MiB, ge=1, description="Largest string or bytes attribute value (nested values included)."
    )


class ReceiversConfig(Section):
    otlp: OtlpReceiverConfig = Field(default_factory=OtlpReceiverConfig, description="OTLP receivers.")
    events_api: EventsApiConfig = Field(
        default_factory=EventsApiConfig, description="OpenMeter-compatible CloudEvents ingest API."
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="Bearer tokens required on every ingest endpoint."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Limits on OTLP records.")
