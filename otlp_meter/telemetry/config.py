"""Configuration of logs and the telemetry endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from otlp_meter.config_types import Section


class LogsConfig(Section):
    level: Literal["debug", "info", "warn", "error"] = Field("info", description="Lowest level written.")
    format: Literal["json", "console"] = Field("json", description="json for machines, console for humans.")


class TelemetryConfig(Section):
    endpoint: str = Field("0.0.0.0:8888", description="host:port serving /metrics, /healthz and /readyz.")
    logs: LogsConfig = Field(default_factory=LogsConfig, description="Log output.")
