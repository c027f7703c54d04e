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

from otlp_meter.config_types import Duration, Section, StrictYamlLoader, yaml_problem
from otlp_meter.errors import ConfigError
from otlp_meter.exporters.config import ExporterConfig
from otlp_meter.queue.config import QueueConfig
from otlp_meter.receivers.config import ReceiversConfig
from otlp_meter.rules.model import RulesConfig
from otlp_meter.sources.config import SourcesConfig
from otlp_meter.telemetry.config import TelemetryConfig

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)-([^}]*))?\}")
_VALIDATOR_ERRORS = frozenset({"value_error", "assertion_error"})  # messages written by validators
_MIN_REDACTED_LENGTH = 3  # shorter inputs ("1", "ab") are not secrets and would mangle messages


MAX_WORKERS = 64
"""Beyond this, more processes only contend for LMDB's single writer lock."""


class ServiceConfig(Section):
    """Process lifecycle (the ``service:`` section)."""

    shutdown_timeout: Duration = Field(
        20.0, description="On SIGTERM: how long in-flight requests and deliveries may take before exit."
    )
    workers: int = Field(
        1,
        ge=1,
        le=MAX_WORKERS,
        description="Processes taking intake: the main one plus workers - 1 intake workers sharing the "
        "receivers' ports (SO_REUSEPORT) and the queue. One process still exports.",
    )


class Config(Section):
    """The whole configuration file; every section optional."""

    receivers: ReceiversConfig = Field(default_factory=ReceiversConfig, description="Where data comes in.")
    rules: RulesConfig = Field(default_factory=RulesConfig, description="How records become CloudEvents.")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="The durable on-disk queue.")
    exporter: ExporterConfig = Field(default_factory=ExporterConfig, description="Where events go.")
    sources: SourcesConfig = Field(
        default_factory=SourcesConfig,
        description="Producers inside the service: Kubernetes, Prometheus, S3, Run:ai.",
    )
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Metrics, health, logs.")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Process lifecycle.")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def expand_env(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` in every string (keys are left alone); ``$$`` is a literal ``$``.

    ``${VAR:-default}``: the default when VAR is unset or empty; ``${VAR-default}``: only when
    unset (shell semantics). ``${VAR}`` unset is a ConfigError naming VAR and the YAML path.
    """
    if isinstance(value, str):
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, colon, default = match.group(1), match.group(2), match.group(3)
            value = env.get(name)
            if value is not None and (value or default is None or not colon):
                return value
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


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool | int | float):
        return [str(value)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings_in(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _strings_in(item)]
    return []


def redact(message: str, value: Any) -> str:
    """``message`` with every string of ``value`` (and its repr) replaced by ``<redacted>``.

    A safety net: our validators do not echo values, but a validator anywhere in the tree might
    ("must be an http(s) URL, got 'https://user:secret@…'"), and a secret must never reach
    ``check`` output or logs.
    """
    texts = sorted({t for t in _strings_in(value) if len(t) >= _MIN_REDACTED_LENGTH}, key=len, reverse=True)
    for text in texts:
        message = message.replace(repr(text), "<redacted>").replace(text, "<redacted>")
    return message


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Pydantic errors as (yaml path, message), without the offending values."""
    problems = []
    for error in exc.errors(include_url=False):
        path = prefix
        for part in error["loc"]:
            path = _join(path, part)
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"] in _VALIDATOR_ERRORS:  # pydantic's own messages never quote the input
            message = redact(message, error.get("input"))
        problems.append((path, message))
    return problems


def parse_config(
    document: Any, env: Mapping[str, str], source: str = "", base_dir: Path | None = None
) -> Config:
    """Validate a parsed YAML document (None = empty = defaults) after ``${ENV}`` expansion.

    Relative ``rules.files`` resolve against ``base_dir`` (the config file's directory) when given.
    """
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([("", "the config must be a mapping of sections")], source)
    try:
        expanded = expand_env(document, env)
        config = Config.model_validate(expanded)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc), source) from None
    return config if base_dir is None else _resolve_rule_files(config, base_dir)


def _resolve_rule_files(config: Config, base_dir: Path) -> Config:
    """Rule files named relative to the config file, so ``run`` works from any directory."""
    files = [path if path.is_absolute() else base_dir / path for path in config.rules.files]
    if files == config.rules.files:
        return config
    rules = config.rules.model_copy(update={"files": files})
    return config.model_copy(update={"rules": rules})


def load_config(path: Path | None, env: Mapping[str, str]) -> Config:
    """Load ``path`` (or the embedded defaults when None); problems raise ConfigError.

    Relative paths in ``rules.files`` are relative to the directory of ``path``.
    """
    if path is None:
        return parse_config({}, env, "<defaults>")
    return parse_config_text(read_config_text(path), path, env)


def read_config_text(path: Path) -> str:
    """The text of the config file at ``path``; ConfigError if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read config: {exc.strerror}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"cannot read config: not UTF-8 (byte {exc.start})")], str(path)) from None


def parse_config_text(text: str, path: Path, env: Mapping[str, str]) -> Config:
    """Parse and validate ``text``, read from ``path`` (which names it in messages and anchors
    relative rule files). Intake workers parse the text their primary read, not the file again:
    an edit made since cannot make them run with another config."""
    try:
        document = yaml.load(text, Loader=StrictYamlLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc)], str(path)) from None
    return parse_config(document, env, str(path), base_dir=path.parent)
