"""The OpenMeter sink: POST batches of CloudEvents to the ingest API. The only module that imports httpx."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

import httpx

from otlp_meter import __version__
from otlp_meter.errors import ConfigError
from otlp_meter.exporters.config import Target
from otlp_meter.exporters.http11 import Http11Transport, proxied_by_environment
from otlp_meter.exporters.retry import Verdict, parse_retry_after, verdict_for_status
from otlp_meter.exporters.sink import SendResult, encode_batch

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_DETAIL = 2048


def trust(ca_file: Path | None) -> ssl.SSLContext:
    """The TLS context for OpenMeter: the system store, or ``ca_file``; certificates always verified."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([("exporter.openmeter.ca_file", f"cannot load the CA bundle: {exc}")]) from None


class OpenMeterSink:
    """POSTs each batch to the ingest endpoint and classifies the answer (never raises for it).

    One pooled client, ``max_connections`` wide (one per batch in flight); no redirects followed, so
    a misconfigured URL shows up as failures instead of silently posting elsewhere. ``transport``
    is for tests (``httpx.MockTransport``). Without one, direct connections use the lean
    :class:`Http11Transport` (httpcore costs ~0.4 ms of CPU per request); when the environment
    routes the endpoint through a proxy (``HTTP(S)_PROXY``/``ALL_PROXY`` not excluded by
    ``NO_PROXY``, httpx's own matching), httpx's default transport and its proxy support are kept.
    """

    name = "openmeter"

    def __init__(
        self,
        target: Target,
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self._url = target.endpoint
        headers = {"content-type": BATCH_CONTENT_TYPE, "user-agent": f"otlp-meter/{__version__}"}
        if target.token is not None:
            headers["authorization"] = f"Bearer {target.token.get_secret_value()}"
        context = trust(ca_file)
        if transport is None and not proxied_by_environment(self._url):
            transport = Http11Transport(context, max_connections)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            verify=context,
        )

    async def send(self, payloads: Sequence[bytes]) -> SendResult:
        """One attempt: DELIVERED on 2xx, otherwise the verdict, Retry-After and the server's answer."""
        try:
            response = await self._client.post(self._url, content=encode_batch(payloads))
        except httpx.HTTPError as exc:  # network errors and timeouts: transient
            return SendResult(Verdict.RETRY, None, None, f"{type(exc).__name__}: {exc}")
        verdict = verdict_for_status(response.status_code)
        if verdict is Verdict.DELIVERED:
            return SendResult(verdict, response.status_code)
        return SendResult(
            verdict,
            response.status_code,
            parse_retry_after(response.headers.get("retry-after")),
            response.text[:MAX_DETAIL],
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
