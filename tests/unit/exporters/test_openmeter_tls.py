"""OpenMeter over HTTPS: the certificate is always verified; a private CA is trusted only when configured."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from otlp_meter.errors import ConfigError
from otlp_meter.exporters.config import Target
from otlp_meter.exporters.openmeter import OpenMeterSink
from otlp_meter.exporters.retry import Verdict
from tests.support.certs import CertificateAuthority

EVENT = b'{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c"}'


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def https_openmeter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a certificate from a private CA; yields (ingest URL, CA bundle path)."""
    ca = CertificateAuthority()
    cert, key = ca.server("localhost").write(tmp_path, "server")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://localhost:{server.server_port}/api/v1/events", ca.write(tmp_path / "ca.pem")
    finally:
        server.shutdown()
        server.server_close()


async def test_a_private_ca_is_trusted_when_configured(https_openmeter: tuple[str, Path]) -> None:
    url, ca_file = https_openmeter
    sink = OpenMeterSink(Target("openmeter", url), 5.0, 1, ca_file=ca_file)
    try:
        assert (await sink.send([EVENT])).verdict is Verdict.DELIVERED
    finally:
        await sink.close()


async def test_an_unknown_ca_is_refused_and_the_batch_kept_for_retry(
    https_openmeter: tuple[str, Path],
) -> None:
    url, _ = https_openmeter
    sink = OpenMeterSink(Target("openmeter", url), 5.0, 1)
    try:
        result = await sink.send([EVENT])
    finally:
        await sink.close()
    assert result.verdict is Verdict.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail


def test_an_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exporter\.openmeter\.ca_file"):
        OpenMeterSink(
            Target("openmeter", "https://om.test/api/v1/events"), 5.0, 1, ca_file=tmp_path / "none.pem"
        )
