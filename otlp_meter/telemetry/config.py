"""Configuration of logs and the telemetry endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from otlp_meter.config_types import Endpoint, Section
from otlp_meter.receivers.config import AuthConfig, TlsConfig


class LogsConfig(Section):
    level: Literal["debug", "info", "warn", "error"] = Field("info", description="Lowest level written.")
    format: Literal["json", "console"] = Field("json", description="json for machines, console for humans.")


class MetricsConfig(Section):
    migration_aliases: bool = Field(
        False,
        description="Also export Redpanda Connect's generic names (batch_created, batch_sent, "
        "buffer_batch_received, buffer_batch_sent, buffer_latency_ns) for dashboards built on the "
        "OpenMeter collector; see docs/metrics.md.",
    )


class TelemetryConfig(Section):
    endpoint: Endpoint = Field(
        "0.0.0.0:8888", description="host:port serving /metrics, /healthz and /readyz."
    )
    logs: LogsConfig = Field(default_factory=LogsConfig, description="Log output.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="What /metrics exports.")
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="Bearer tokens for /metrics (separate from the ingest tokens). /healthz and /readyz "
        "stay open so that probes need no secret.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS for the telemetry endpoint.")
