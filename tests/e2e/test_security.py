"""End to end: strangers and slow clients are kept out, the service runs as a non-root user, and
its data directory is private.

* Bearer tokens on every ingest endpoint (OTLP gRPC, OTLP/HTTP, events API), read from the
  environment or from files that are re-read when rotated; /metrics has its own token.
* TLS on every server, certificates rotated in place while the service runs.
* Slow clients (slowloris) are cut off by the head and body timeouts and the connection limit,
  while others are served.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from tests.e2e.conftest import TOKEN, ServiceFactory
from tests.support.certs import CertificateAuthority, der_serial
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import ServiceProcess, wait_until
from tests.unit.receivers.conftest import genai_logs

pytestmark = pytest.mark.e2e

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
BATCH = "application/cloudevents-batch+json"


def cloud_event(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"sec-{i}", "source": "sec", "type": "t", "subject": "acme"}


def grpc_export(channel: grpc.Channel, request: ExportLogsServiceRequest, token: str | None) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    channel.unary_unary(LOGS_EXPORT)(request.SerializeToString(), timeout=10, metadata=metadata)


def http_export(
    url: str, request: ExportLogsServiceRequest, token: str | None, **kwargs: Any
) -> httpx.Response:
    headers = {"content-type": "application/x-protobuf"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v1/logs", content=request.SerializeToString(), headers=headers, **kwargs)


def events_post(url: str, events: list[dict[str, Any]], token: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"content-type": BATCH}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/api/v1/events", content=orjson.dumps(events), headers=headers, **kwargs)


# -- authentication ------------------------------------------------------------------------------


def test_every_ingest_endpoint_requires_a_token_and_metrics_another(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    config = {
        "receivers": {"auth": {"tokens": ["${INGEST_TOKEN_OLD}", "${INGEST_TOKEN_NEW}"]}},
        "telemetry": {"auth": {"tokens": ["${SCRAPE_TOKEN}"]}},
    }
    env = {"INGEST_TOKEN_OLD": "old-1", "INGEST_TOKEN_NEW": "new-2", "SCRAPE_TOKEN": "scrape-3"}
    with service_factory(config, env) as service, grpc.insecure_channel(service.grpc_endpoint) as channel:
        for token in (None, "wrong-token-xyz", "scrape-3"):
            with pytest.raises(grpc.RpcError) as refused:
                grpc_export(channel, genai_logs("a"), token)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert http_export(service.http_url, genai_logs("b"), token).status_code == 401
            assert events_post(service.events_url, [cloud_event(0)], token).status_code == 401

        grpc_export(channel, genai_logs("grpc-customer"), "old-1")  # both tokens work: rotation
        assert http_export(service.http_url, genai_logs("http-customer"), "new-2").status_code == 200
        assert events_post(service.events_url, [cloud_event(1)], "new-2").status_code == 204

        events = openmeter.wait_for_events(3)
        assert {e["subject"] for e in events} == {"grpc-customer", "http-customer", "acme"}

        metrics = f"{service.telemetry_url}/metrics"
        assert httpx.get(metrics).status_code == 401
        assert httpx.get(metrics, headers={"authorization": "Bearer new-2"}).status_code == 401
        scraped = httpx.get(metrics, headers={"authorization": "Bearer scrape-3"})
        assert scraped.status_code == 200
        assert httpx.get(f"{service.telemetry_url}/healthz").status_code == 200  # probes need no token
        assert (
            'otlp_meter_receiver_auth_failures_total{reason="invalid",receiver="events_api"} 2.0'
            in scraped.text
        )
        assert (
            'otlp_meter_receiver_auth_failures_total{reason="missing",receiver="otlp_grpc"} 1.0'
            in scraped.text
        )
        failures = [e for e in service.log_events() if e["event"] == "auth_failed"]
        assert {e["receiver"] for e in failures} == {"otlp_grpc", "otlp_http", "events_api", "telemetry"}
        assert len(failures) == 4  # one line per receiver per 10 s; the rest are counted
        assert "wrong-token-xyz" not in service.logs()


def test_a_rotated_token_file_takes_effect_without_a_restart(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "secrets" / "tokens"
    tokens.parent.mkdir()
    tokens.write_text("first-token\n")
    config = {"receivers": {"auth": {"token_files": [str(tokens)], "reload_interval": "0s"}}}
    with service_factory(config) as service:
        assert events_post(service.events_url, [cloud_event(0)], "first-token").status_code == 204

        staged = tokens.with_name("tokens.new")  # as a Secret volume does: write aside, rename over
        staged.write_text("# rotated\nsecond-token\n")
        staged.replace(tokens)

        assert events_post(service.events_url, [cloud_event(1)], "second-token").status_code == 204
        assert events_post(service.events_url, [cloud_event(2)], "first-token").status_code == 401


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ({"auth": {"token_files": ["{absent}"]}}, "receivers.auth.token_files[0]"),
        (
            {"events_api": {"tls": {"cert_file": "{absent}", "key_file": "{absent}"}}},
            "receivers.events_api.tls",
        ),
    ],
    ids=["token-file", "certificate"],
)
def test_a_secret_that_cannot_be_read_stops_the_start_with_a_config_error(
    service_factory: ServiceFactory, tmp_path: Path, section: dict[str, Any], where: str
) -> None:
    absent = str(tmp_path / "absent")
    config = orjson.loads(orjson.dumps(section).replace(b"{absent}", absent.encode()))
    service = service_factory({"receivers": config})

    with pytest.raises(AssertionError, match="exited with 2"):
        service.start(timeout=20)
    assert where in service.logs()


# -- TLS -----------------------------------------------------------------------------------------


def served_serial(port: int, context: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der_serial(der)


def test_every_server_speaks_tls_and_picks_up_rotated_certificates(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter, tmp_path: Path
) -> None:
    ca = CertificateAuthority()
    cert, key = ca.server().write(tmp_path / "tls", "server")
    tls = {"cert_file": str(cert), "key_file": str(key), "reload_interval": "0s"}
    config = {
        "receivers": {"otlp": {"grpc": {"tls": tls}, "http": {"tls": tls}}, "events_api": {"tls": tls}},
        "telemetry": {"tls": tls},
    }
    with service_factory(config) as service:
        trust = ssl.create_default_context(cadata=ca.cert_pem.decode())
        https = service.http_url.replace("http:", "https:")
        events = service.events_url.replace("http:", "https:")
        telemetry = service.telemetry_url.replace("http:", "https:")
        root = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
        with grpc.secure_channel(service.grpc_endpoint, root) as channel:
            grpc_export(channel, genai_logs("over-grpc"), None)
        assert http_export(https, genai_logs("over-https"), None, verify=trust).status_code == 200
        assert events_post(events, [cloud_event(0)], None, verify=trust).status_code == 204
        assert httpx.get(f"{telemetry}/metrics", verify=trust).status_code == 200
        with pytest.raises(httpx.HTTPError):
            http_export(service.http_url, genai_logs("plain"), None, timeout=5)
        assert len(openmeter.wait_for_events(3)) == 3

        renewed_ca = CertificateAuthority("renewed")  # cert-manager issued from a new CA
        renewed = renewed_ca.server()
        renewed.write(tmp_path / "tls", "server")

        new_trust = ssl.create_default_context(cadata=renewed_ca.cert_pem.decode())
        for port in (service.http_port, service.events_port, service.telemetry_port):
            assert served_serial(port, new_trust) == renewed.serial
        new_root = grpc.ssl_channel_credentials(root_certificates=renewed_ca.cert_pem)
        with grpc.secure_channel(service.grpc_endpoint, new_root) as channel:
            grpc_export(channel, genai_logs("after-rotation"), None)
        assert {e["subject"] for e in openmeter.wait_for_events(4)} >= {"after-rotation"}
        scraped = httpx.get(f"{telemetry}/metrics", verify=new_trust).text
        for server in ("otlp_grpc", "otlp_http", "events_api", "telemetry"):
            assert f'otlp_meter_tls_reloads_total{{outcome="ok",server="{server}"}} 1.0' in scraped


# -- slow clients --------------------------------------------------------------------------------


@pytest.fixture
def guarded(service_factory: ServiceFactory) -> Iterator[ServiceProcess]:
    guard = {"read_header_timeout": "1s", "read_timeout": "1s", "max_connections": 40}
    with service_factory({"receivers": {"events_api": guard}}) as service:
        yield service


def slow_client(port: int) -> socket.socket:
    """A slowloris connection: a request line and one header, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
    return sock


def test_slow_clients_do_not_block_others_and_are_cut_off(guarded: ServiceProcess) -> None:
    slow = [slow_client(guarded.events_port) for _ in range(30)]
    try:
        started = time.monotonic()
        response = events_post(guarded.events_url, [cloud_event(0)], TOKEN, timeout=5)
        assert response.status_code == 204
        assert time.monotonic() - started < 1.0  # served while 30 connections dangle

        for sock in slow:  # each is answered 408 and closed once its head is late
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert sock.recv(4096) == b""
    finally:
        for sock in slow:
            sock.close()
    assert guarded.metric("otlp_meter_server_connections_closed_total", {"reason": "header_timeout"}) == 30


def test_a_body_that_never_finishes_is_503_so_the_sender_retries(guarded: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", guarded.events_port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n[{"
        )
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 5" in answer.lower()
        assert b"connection: close" in answer.lower()


def test_an_endless_head_is_cut_off_with_431(guarded: ServiceProcess) -> None:
    cut_off = False
    with socket.create_connection(("127.0.0.1", guarded.events_port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nx-junk: ")
        try:
            for _ in range(200):  # 800 KiB of one header; the limit is 64 KiB
                sock.sendall(b"a" * 4096)
            cut_off = sock.recv(4096).startswith(b"HTTP/1.1 431 ")
        except (BrokenPipeError, ConnectionResetError):
            cut_off = True  # the server closed with our bytes unread: the kernel reset the connection
    assert cut_off
    closed = guarded.metric("otlp_meter_server_connections_closed_total", {"reason": "header_too_large"})
    assert closed == 1


def kept_alive(port: int, i: int) -> socket.socket:
    """A connection that made one request and stays open (keep-alive): surely counted by the server."""
    body = orjson.dumps([cloud_event(100 + i)])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (BATCH.encode(), len(body), body)
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 204 ")
    return sock


def test_connections_beyond_the_limit_are_closed_at_once(service_factory: ServiceFactory) -> None:
    limits = {"max_connections": 3}
    with service_factory({"receivers": {"events_api": limits}}) as service:
        held = [kept_alive(service.events_port, i) for i in range(3)]  # the three requests are served
        try:
            with socket.create_connection(("127.0.0.1", service.events_port), timeout=5) as extra:
                assert extra.recv(1) == b""  # the fourth is closed without a word
        finally:
            for sock in held:
                sock.close()
        assert (
            service.metric("otlp_meter_server_connections_closed_total", {"reason": "connection_limit"}) >= 1
        )
        wait_until(
            lambda: events_post(service.events_url, [cloud_event(5)], None, timeout=5).status_code == 204,
            what="a new connection is served once the slow ones are gone",
        )


# -- the data directory and the user ------------------------------------------------------------


@pytest.fixture
def nobody_dir() -> Iterator[tuple[Path, str | None]]:
    """A work directory the service's user owns: ``nobody`` when we are root, else ourselves."""
    user = "nobody" if os.geteuid() == 0 else None
    workdir = Path(tempfile.mkdtemp(prefix="otlp-meter-nonroot-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    yield workdir, user
    shutil.rmtree(workdir, ignore_errors=True)


def test_runs_as_a_non_root_user_with_a_private_data_directory(
    nobody_dir: tuple[Path, str | None], openmeter: FakeOpenMeter
) -> None:
    workdir, user = nobody_dir
    env = {"OPENMETER_URL": openmeter.url, "OPENMETER_TOKEN": TOKEN}
    service = ServiceProcess(workdir, env=env, user=user).start()
    try:
        assert events_post(service.events_url, [cloud_event(9)], None).status_code == 204
        assert [e["id"] for e in openmeter.wait_for_events(1)] == ["sec-9"]
        data = workdir / "data"
        mode = stat.S_IMODE(data.stat().st_mode)
        assert mode == 0o700, oct(mode)
        assert stat.S_IMODE((data / "queue").stat().st_mode) == 0o700
        expected_uid = pwd.getpwnam(user).pw_uid if user else os.geteuid()
        assert data.stat().st_uid == expected_uid
        assert service.process is not None
        assert _uid_of(service.process.pid) == expected_uid
    finally:
        assert service.stop() == 0


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")
