"""TLS for our servers, with certificates reloaded when their files change.

cert-manager (or Vault agent, or a person) replaces the files in place; each new connection
uses the newest *valid* set, connections already open keep theirs, and nothing restarts.
Changes are noticed on new connections, checked at most every ``reload_interval``:

* HTTP (uvicorn): the context handed to uvicorn has an ``sni_callback`` — OpenSSL calls it on every
  ClientHello, with or without SNI — that switches the connection to the newest context.
* gRPC: ``grpc.dynamic_ssl_server_credentials`` asks our fetcher on every new connection.

A set that does not load (the key written before the certificate, a truncated file) is skipped
and the previous one kept, with an error logged and ``tls_reloads{outcome="failed"}`` counted; it
is tried again once the files change again. A set that does not load at startup is a ConfigError.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otlp_meter.errors import ConfigError
from otlp_meter.receivers.config import TlsConfig
from otlp_meter.telemetry.logging import get_logger
from otlp_meter.telemetry.metrics import Metrics

log = get_logger("tls")

Stamp = tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class _Material:
    cert: bytes
    key: bytes
    ca: bytes | None
    context: ssl.SSLContext


def _stamp(path: Path | None) -> bytes | None:
    """A digest of the file's content: in-place rewrites within one timestamp tick and with the same
    size are changes too (and reading a few KiB every ``reload_interval`` costs nothing)."""
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


class ServerTls:
    """The certificate set of one server (``server`` names it in logs and metrics)."""

    def __init__(
        self,
        config: TlsConfig,
        server: str,
        metrics: Metrics | None = None,
        *,
        config_key: str = "tls",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.cert_file is None or config.key_file is None:
            raise ValueError("TLS is not configured (cert_file/key_file unset)")
        self._cert_file, self._key_file, self._ca_file = (
            config.cert_file,
            config.key_file,
            config.client_ca_file,
        )
        self._config = config
        self._server = server
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # the gRPC fetcher runs on grpc's threads
        self._stamp = self._stamps()
        try:
            self._material = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([(config_key, f"cannot load the TLS certificate/key/CA: {exc}")]) from None
        self._checked_at = clock()
        self.generation = 0
        """Bumped on every successful reload."""
        self._base = self._new_context()  # what uvicorn wraps connections with; switched per hello
        self._base.sni_callback = self._on_client_hello

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self._ca_file is not None

    def _stamps(self) -> Stamp:
        return (_stamp(self._cert_file), _stamp(self._key_file), _stamp(self._ca_file))

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if self._config.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        context.load_cert_chain(self._cert_file, self._key_file)
        if self._ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self._ca_file))
        return context

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        ca = self._ca_file.read_bytes() if self._ca_file is not None else None
        return self._cert_file.read_bytes(), self._key_file.read_bytes(), ca

    def _load(self) -> _Material:
        """Read the files, prove they load together, and read them again: equal bytes mean the
        set we validated is the set we hold (the files were not being rewritten meanwhile)."""
        before = self._read()
        context = self._new_context()
        if self._read() != before:
            raise ValueError("the files changed while they were being loaded")
        return _Material(before[0], before[1], before[2], context)

    def maybe_reload(self) -> bool:
        """Reload if the files changed (checked at most every ``reload_interval``); True if reloaded."""
        now = self._clock()
        with self._lock:
            if now - self._checked_at < self._config.reload_interval:
                return False
            self._checked_at = now
            stamp = self._stamps()
            if stamp == self._stamp:
                return False
            try:
                material = self._load()
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("tls_reload_failed", server=self._server, error=str(exc), action="kept previous")
                self._count("failed")
                self._stamp = stamp  # retried when the files change again, not on every connection
                return False
            self._stamp = stamp
            self._material = material
            self.generation += 1
        log.info("tls_reloaded", server=self._server, generation=self.generation)
        self._count("ok")
        return True

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.tls_reloads.labels(self._server, outcome).inc()

    # -- HTTP (uvicorn) --

    def ssl_context(self) -> ssl.SSLContext:
        """The context to serve with; every handshake switches to the newest loaded set."""
        return self._base

    def _on_client_hello(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        try:
            self.maybe_reload()
            current = self._material.context
            if current is not context:
                connection.context = current
        except Exception as exc:  # an exception here would abort the handshake of a valid client
            log.error("tls_switch_failed", server=self._server, error=repr(exc))

    # -- gRPC --

    def grpc_credentials(self) -> Any:
        """``grpc.ServerCredentials`` that pick up reloaded sets on new connections."""
        import grpc

        served = {"generation": -1}

        def configuration() -> Any:
            material = self._material
            return grpc.ssl_server_certificate_configuration(
                [(material.key, material.cert)], root_certificates=material.ca
            )

        def fetch() -> Any:
            try:
                self.maybe_reload()
                if served["generation"] == self.generation:
                    return None  # unchanged: grpc keeps what it has
                served["generation"] = self.generation
                return configuration()
            except Exception as exc:  # grpc would log and fail the handshake; keep serving instead
                log.error("tls_switch_failed", server=self._server, error=repr(exc))
                return None

        served["generation"] = self.generation
        return grpc.dynamic_ssl_server_credentials(
            configuration(), fetch, require_client_authentication=self.mutual
        )
