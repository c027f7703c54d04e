"""Configuration of the exporter, and where it sends: Konnect, a self-hosted OpenMeter, or a file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from otlp_meter.config_types import ByteSize, Duration, Section, check_http_url
from otlp_meter.errors import ConfigError

KONNECT_DEFAULT_URL = "https://us.api.konghq.com/v3/openmeter"


class OpenMeterConfig(Section):
    url: str | None = Field(
        None,
        description=(
            "Base URL of OpenMeter. Self-hosted (e.g. http://localhost:8888) posts to {url}/api/v1/events; "
            "Konnect (https://{region}.api.konghq.com/v3/openmeter) posts to {url}/events. "
            "Unset: $OPENMETER_URL, else Konnect US when a token is set."
        ),
    )
    api: Literal["auto", "v1", "v3"] = Field(
        "auto", description="Ingest API flavour; auto picks v3 for URLs ending in /v3/openmeter."
    )
    token: SecretStr | None = Field(None, description="Bearer token. Unset: $OPENMETER_TOKEN.")
    timeout: Duration = Field(30.0, gt=0, description="Timeout of one ingest request.")
    ca_file: Path | None = Field(
        None,
        description="PEM bundle of CAs to trust for OpenMeter's certificate (a private CA). Unset: the "
        "system's trust store. The certificate is always verified.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        return check_http_url(value) if value else None

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class FileExporterConfig(Section):
    path: Path | None = Field(
        None, description="Write events as JSON lines here instead of sending them (local use, tests)."
    )


class BatchConfig(Section):
    max_events: int = Field(1000, ge=1, description="Most events in one ingest request.")
    max_bytes: ByteSize = Field(4 * 1024 * 1024, description="Most bytes in one ingest request body.")
    flush_interval: Duration = Field(1.0, description="Longest an event waits for its batch to fill.")


class RetryConfig(Section):
    initial_backoff: Duration = Field(1.0, description="First wait after a transient failure.")
    max_backoff: Duration = Field(60.0, description="Cap of the exponential backoff.")
    multiplier: float = Field(2.0, ge=1.0, description="Backoff growth per attempt.")
    jitter: float = Field(0.2, ge=0.0, le=1.0, description="Random fraction added to/removed from each wait.")
    max_elapsed: Duration | None = Field(
        None,
        description="Give up on a batch after this long and dead-letter it. Unset: retry for as long as "
        "the events are buffered (an outage of days drains afterwards).",
    )
    auth_backoff: Duration = Field(
        300.0, description="Wait between attempts while OpenMeter answers 401/403."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.initial_backoff > self.max_backoff:
            raise ValueError("initial_backoff must not exceed max_backoff")
        return self


class ExporterConfig(Section):
    openmeter: OpenMeterConfig = Field(default_factory=OpenMeterConfig, description="OpenMeter target.")
    file: FileExporterConfig = Field(default_factory=FileExporterConfig, description="File target.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batching.")
    max_in_flight: int = Field(4, ge=1, description="Batches delivered concurrently.")
    retry: RetryConfig = Field(
        default_factory=RetryConfig, description="Retry policy for transient failures."
    )


@dataclass(frozen=True, slots=True)
class Target:
    """Where events go, resolved from config and environment."""

    kind: Literal["openmeter", "file"]
    endpoint: str  # full ingest URL, or the file path
    token: SecretStr | None = None
    api: Literal["v1", "v3"] = "v1"

    def describe(self) -> str:
        """A log-safe description: never the token, nor a password written into the URL."""
        if self.kind == "file":
            return f"file {self.endpoint}"
        auth = "with bearer token" if self.token else "without token"
        return f"OpenMeter {self.api} {_without_userinfo(self.endpoint)} ({auth})"


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def resolve_target(config: ExporterConfig, data_directory: Path, env: Mapping[str, str]) -> Target:
    """Pick the target: an explicit file path, else OpenMeter from config/env, else the local events file."""
    if config.file.path is not None:
        return Target("file", str(config.file.path))
    url = config.openmeter.url
    if url is None and env.get("OPENMETER_URL"):
        try:
            url = check_http_url(env["OPENMETER_URL"])
        except ValueError as exc:
            raise ConfigError([("exporter.openmeter.url", f"$OPENMETER_URL {exc}")]) from None
    token = config.openmeter.token
    if token is None and env.get("OPENMETER_TOKEN"):
        token = SecretStr(env["OPENMETER_TOKEN"])
    if url is None and token is not None:
        url = KONNECT_DEFAULT_URL
    if url is None:
        return Target("file", str(data_directory / "events.jsonl"))
    where = "exporter.openmeter.url" if config.openmeter.url is not None else "$OPENMETER_URL"
    endpoint, api = ingest_endpoint(url, config.openmeter.api, where)
    return Target("openmeter", endpoint, token, api)


def ingest_endpoint(
    url: str, api: Literal["auto", "v1", "v3"], where: str = "exporter.openmeter.url"
) -> tuple[str, Literal["v1", "v3"]]:
    """The events endpoint for ``url`` and the API it speaks (``api``: ``auto``, ``v1`` or ``v3``).

    ``url`` is a base URL — self-hosted OpenMeter (``…/api/v1/events`` is added), Konnect's
    ``…/v3/openmeter`` or ``…/v3`` (``…/v3/openmeter/events``) — or already the events URL itself
    (``…/api/v1/events``, ``…/openmeter/events``), taken as it is. A query or fragment is refused:
    it would end up in the middle of the path.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        message = "the OpenMeter URL must have no query or fragment (not echoed: it may hold a secret)"
        raise ConfigError([(where, message)])
    base = url.rstrip("/")
    path = parts.path.rstrip("/")
    if api in ("auto", "v3"):
        if path.endswith("/openmeter/events"):
            return base, "v3"
        if path.endswith("/v3/openmeter"):
            return f"{base}/events", "v3"
        if path.endswith("/v3"):  # Konnect's server URL, as the API reference gives it
            return f"{base}/openmeter/events", "v3"
    if api in ("auto", "v1") and path.endswith("/api/v1/events"):
        return base, "v1"
    if api == "auto":
        return f"{base}/api/v1/events", "v1"
    suffix = "/events" if api == "v3" else "/api/v1/events"
    return (base if path.endswith(suffix) else base + suffix), api
