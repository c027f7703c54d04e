"""TLS on the HTTP servers and on OTLP/gRPC, with certificates the tests make.

Rotation is what cert-manager does: the files are replaced in place and every connection made
afterwards gets the new certificate, with no restart. A set that does not load (a key that does
not match its certificate) is skipped, counted, and the previous one kept. With ``client_ca_file``
clients must present a certificate that CA signed (mutual TLS).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from otlp_meter.errors import ConfigError
from otlp_meter.http_server import HttpServer, Receive, Scope, Send, respond
from otlp_meter.receivers.config import GrpcReceiverConfig, TlsConfig
from otlp_meter.receivers.otlp_grpc import OtlpGrpcReceiver
from otlp_meter.receivers.tls import ServerTls
from otlp_meter.telemetry.metrics import Metrics
from tests.support.certs import CertificateAuthority, Issued, der_serial
from tests.unit.receivers.conftest import Stack, genai_logs


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await respond(send, 200, b"hello", "text/plain")


@dataclass
class Files:
    directory: Path
    cert: Path
    key: Path

    def install(self, issued: Issued) -> None:
        """Replace the certificate and key in place, as a rotation does."""
        issued.write(self.directory, "server")


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def files(tmp_path: Path, ca: CertificateAuthority) -> Files:
    cert, key = ca.server().write(tmp_path / "tls", "server")
    return Files(tmp_path / "tls", cert, key)


def tls_config(files: Files, **extra: object) -> TlsConfig:
    return TlsConfig.model_validate(
        {"cert_file": files.cert, "key_file": files.key, "reload_interval": 0, **extra}
    )


def client_context(
    ca: CertificateAuthority, client: Issued | None = None, tmp: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None and tmp is not None:
        cert, key = client.write(tmp, "client")
        context.load_cert_chain(cert, key)
    return context


def served_serial(port: int, context: ssl.SSLContext) -> int:
    """Connect, finish the handshake, and return the serial of the certificate the server showed."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der_serial(der)


@pytest.fixture
async def https(files: Files) -> AsyncIterator[tuple[HttpServer, Metrics]]:
    metrics = Metrics()
    server = HttpServer(
        hello, "127.0.0.1:0", tls=ServerTls(tls_config(files), "test", metrics), metrics=metrics
    )
    await server.start()
    yield server, metrics
    await server.stop()


# -- HTTP ------------------------------------------------------------------------------------------


async def test_https_serves_the_configured_certificate(
    https: tuple[HttpServer, Metrics], ca: CertificateAuthority, files: Files
) -> None:
    server, _ = https
    port = server.address[1]
    async with httpx.AsyncClient(verify=client_context(ca)) as client:
        response = await client.get(f"https://127.0.0.1:{port}/")
    assert response.text == "hello"

    with pytest.raises(httpx.HTTPError):  # plain HTTP on a TLS port gets nowhere
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/", timeout=5)


async def test_a_rotated_certificate_is_served_to_new_connections(
    https: tuple[HttpServer, Metrics], ca: CertificateAuthority, files: Files
) -> None:
    server, metrics = https
    port = server.address[1]
    first = await asyncio.to_thread(served_serial, port, client_context(ca))

    renewed = ca.server()
    files.install(renewed)

    assert await asyncio.to_thread(served_serial, port, client_context(ca)) == renewed.serial != first
    assert (
        metrics.registry.get_sample_value("otlp_meter_tls_reloads_total", {"server": "test", "outcome": "ok"})
        == 1
    )


async def test_a_broken_rotation_keeps_the_previous_certificate(
    https: tuple[HttpServer, Metrics], ca: CertificateAuthority, files: Files
) -> None:
    server, metrics = https
    port = server.address[1]
    first = await asyncio.to_thread(served_serial, port, client_context(ca))

    files.cert.write_bytes(ca.server().cert_pem)  # the new certificate, but still the old key

    assert await asyncio.to_thread(served_serial, port, client_context(ca)) == first
    failed = {"server": "test", "outcome": "failed"}
    assert metrics.registry.get_sample_value("otlp_meter_tls_reloads_total", failed) == 1


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    tmp_path: Path, ca: CertificateAuthority, files: Files
) -> None:
    client_ca = CertificateAuthority("clients")
    config = tls_config(files, client_ca_file=client_ca.write(tmp_path / "clients.crt"))
    server = HttpServer(hello, "127.0.0.1:0", tls=ServerTls(config, "test"))
    await server.start()
    url = f"https://127.0.0.1:{server.address[1]}/"
    try:
        async with httpx.AsyncClient(
            verify=client_context(ca, client_ca.client(), tmp_path / "good")
        ) as client:
            assert (await client.get(url)).text == "hello"
        for context in (
            client_context(ca),
            client_context(ca, CertificateAuthority().client(), tmp_path / "bad"),
        ):
            with pytest.raises(httpx.HTTPError):
                async with httpx.AsyncClient(verify=context) as client:
                    await client.get(url, timeout=5)
    finally:
        await server.stop()


# -- configuration -------------------------------------------------------------------------------


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="together"):
        TlsConfig.model_validate({"cert_file": "/x.crt"})
    with pytest.raises(ValueError, match="client_ca_file needs"):
        TlsConfig.model_validate({"client_ca_file": "/ca.crt"})


def test_files_that_do_not_load_at_startup_are_a_config_error(tmp_path: Path, files: Files) -> None:
    files.key.write_text("not a key")
    with pytest.raises(ConfigError, match=r"receivers\.events_api\.tls"):
        ServerTls(tls_config(files), "events_api", config_key="receivers.events_api.tls")
    with pytest.raises(ConfigError):
        ServerTls(TlsConfig(cert_file=tmp_path / "missing.crt", key_file=files.key), "x")


# -- gRPC ------------------------------------------------------------------------------------------


async def export_over_tls(port: int, root: bytes, client: Issued | None = None) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.Export(genai_logs("acme"), timeout=5)


async def test_grpc_over_tls_picks_up_a_rotated_certificate(
    stack: Stack, ca: CertificateAuthority, files: Files
) -> None:
    receiver = OtlpGrpcReceiver(
        GrpcReceiverConfig(endpoint="127.0.0.1:0"), stack.core, tls=ServerTls(tls_config(files), "otlp_grpc")
    )
    await receiver.start()
    assert receiver.port is not None
    try:
        await export_over_tls(receiver.port, ca.cert_pem)

        other_ca = CertificateAuthority("the next CA")  # rotate to a chain only the new root verifies
        files.install(other_ca.server())

        await export_over_tls(receiver.port, other_ca.cert_pem)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await export_over_tls(receiver.port, ca.cert_pem)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await receiver.stop(0)
    assert len(stack.queued()) == 1  # each export is the same record: deduplicated


async def test_grpc_mutual_tls_refuses_clients_without_a_certificate(
    tmp_path: Path, stack: Stack, ca: CertificateAuthority, files: Files
) -> None:
    client_ca = CertificateAuthority("clients")
    config = tls_config(files, client_ca_file=client_ca.write(tmp_path / "clients.crt"))
    receiver = OtlpGrpcReceiver(
        GrpcReceiverConfig(endpoint="127.0.0.1:0"), stack.core, tls=ServerTls(config, "otlp_grpc")
    )
    await receiver.start()
    assert receiver.port is not None
    try:
        await export_over_tls(receiver.port, ca.cert_pem, client_ca.client())
        with pytest.raises(grpc.aio.AioRpcError):
            await export_over_tls(receiver.port, ca.cert_pem)
    finally:
        await receiver.stop(0)
