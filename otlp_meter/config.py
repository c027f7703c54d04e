"""The root configuration: each stage's own model composed, loaded from YAML with ``${ENV}`` expansion.

Every mistake is reported with its YAML path (``exporter.batch.max_events: …``). Values are never
echoed back in messages, so secrets cannot leak through ``check`` output or logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from otlp_meter.config_types import Duration, Section
from otlp_meter.errors import ConfigError
from otlp_meter.exporters.config import ExporterConfig
from otlp_meter.queue.config import QueueConfig
from otlp_meter.receivers.config import ReceiversConfig
from otlp_meter.rules.model import RulesConfig
from otlp_meter.telemetry.config import TelemetryConfig

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


class ServiceConfig(Section):
    shutdown_timeout: Duration = Field(
        20.0, description="On SIGTERM: how long in-flight requests and deliveries may take before exit."
    )


class Config(Section):
    receivers: ReceiversConfig = Field(default_factory=ReceiversConfig, description="Where data comes in.")
    rules: RulesConfig = Field(default_factory=RulesConfig, description="How records become CloudEvents.")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="The durable on-disk queue.")
    exporter: ExporterConfig = Field(default_factory=ExporterConfig, description="Where events go.")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Metrics, health, logs.")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Process lifecycle.")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def expand_env(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``."""
    if isinstance(value, str):
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env and (env[name] or default is None):
                return env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        expanded = _ENV_RE.sub(substitute, value)
        if missing:
            raise ConfigError(
                [(path, f"environment variable {missing[0]} is not set (use ${{{missing[0]}:-default}})")]
            )
        return expanded
    if isinstance(value, dict):
        return {k: expand_env(v, env, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, _join(path, i)) for i, v in enumerate(value)]
    return value


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Pydantic errors as (yaml path, message), without the offending values."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        path = prefix
        for part in error["loc"]:
            path = _join(path, part)
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append((path, message))
    return problems


def parse_config(document: Any, env: Mapping[str, str], source: str = "") -> Config:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([("", "the config must be a mapping of sections")], source)
    try:
        expanded = expand_env(document, env)
        return Config.model_validate(expanded)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc), source) from None


def load_config(path: Path | None, env: Mapping[str, str]) -> Config:
    """Load ``path`` (or the embedded defaults when None)."""
    if path is None:
        return parse_config({}, env, "<defaults>")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read config: {exc.strerror}")], str(path)) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(where, f"invalid YAML: {problem}")], str(path)) from None
    return parse_config(document, env, str(path))
