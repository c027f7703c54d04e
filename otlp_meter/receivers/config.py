"""Configuration of the OTLP receivers."""

from __future__ import annotations

from pydantic import Field

from otlp_meter.config_types import ByteSize, Section


class GrpcReceiverConfig(Section):
    enabled: bool = Field(True, description="Serve OTLP over gRPC.")
    endpoint: str = Field("0.0.0.0:4317", description="host:port to listen on.")
    max_recv_msg_size: ByteSize = Field(16 * 1024 * 1024, description="Largest request message accepted.")


class HttpReceiverConfig(Section):
    enabled: bool = Field(True, description="Serve OTLP over HTTP (protobuf and JSON).")
    endpoint: str = Field("0.0.0.0:4318", description="host:port to listen on.")
    max_request_body_size: ByteSize = Field(
        20 * 1024 * 1024, description="Largest request body accepted, measured after decompression."
    )


class OtlpReceiverConfig(Section):
    grpc: GrpcReceiverConfig = Field(default_factory=GrpcReceiverConfig, description="OTLP/gRPC server.")
    http: HttpReceiverConfig = Field(default_factory=HttpReceiverConfig, description="OTLP/HTTP server.")


class ReceiversConfig(Section):
    otlp: OtlpReceiverConfig = Field(default_factory=OtlpReceiverConfig, description="OTLP receivers.")
