"""Bearer-token authentication on every ingest endpoint, and on /metrics with its own tokens.

* Several tokens are accepted at once (rotation), inline (from ``${ENV}``) or from files that are
  re-read when they change; an empty token or an unreadable/empty token file at startup is a
  configuration error (fail closed).
* A refused request is UNAUTHENTICATED / 401 (``WWW-Authenticate: Bearer``), counted by receiver
  and reason, and logged at most once per 10 s per receiver with the number of lines held back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from otlp_meter.config import parse_config
from otlp_meter.errors import AuthenticationError, ConfigError
from otlp_meter.receivers.auth import Authenticator, RateLimitedLog, TokenSet, bearer_token
from otlp_meter.receivers.config import AuthConfig, EventsApiConfig, GrpcReceiverConfig, HttpReceiverConfig
from otlp_meter.receivers.events_api import events_api_app
from otlp_meter.receivers.otlp_grpc import OtlpGrpcReceiver
from otlp_meter.receivers.otlp_http import otlp_http_app
from otlp_meter.telemetry.health import report
from otlp_meter.telemetry.metrics import Metrics
from otlp_meter.telemetry.server import telemetry_app
from tests.unit.receivers.conftest import Stack, genai_logs

PROTOBUF = "application/x-protobuf"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tokens(*values: str, files: list[Path] | None = None, clock: Clock | None = None) -> TokenSet:
    config = AuthConfig.model_validate(
        {"tokens": list(values), "token_files": files or [], "reload_interval": 1}
    )
    return TokenSet(config, clock=clock or Clock())


def authenticator(stack: Stack, *values: str, receiver: str = "otlp_http") -> Authenticator:
    return Authenticator(tokens(*values), stack.metrics, receiver)


# -- tokens ---------------------------------------------------------------------------------------


def test_every_configured_token_is_accepted_and_nothing_else() -> None:
    accepted = tokens("old-token", "new-token")

    assert accepted.matches("old-token")
    assert accepted.matches("new-token")
    assert not accepted.matches("new-toke")
    assert not accepted.matches("new-tokenX")
    assert not accepted.matches("")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        (None, None),
    ],
)
def test_the_authorization_header_must_be_a_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("value", ["", "   ", "two words"])
def test_a_blank_token_is_a_config_error_not_an_open_door(value: str) -> None:
    with pytest.raises(ConfigError, match=r"receivers\.auth\.tokens"):
        parse_config({"receivers": {"auth": {"tokens": ["${INGEST_TOKEN}"]}}}, {"INGEST_TOKEN": value})


def test_tokens_come_from_the_environment_and_never_appear_in_errors() -> None:
    config = parse_config({"receivers": {"auth": {"tokens": ["${T}"]}}}, {"T": "s3cr3t-value"})

    assert TokenSet(config.receivers.auth).matches("s3cr3t-value")
    assert "s3cr3t-value" not in repr(config)


def test_token_files_hold_one_token_per_line_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated 2026-01-01\nfirst\n\n  second  \n")

    accepted = tokens(files=[path])

    assert accepted.matches("first")
    assert accepted.matches("second")
    assert not accepted.matches("# rotated 2026-01-01")


@pytest.mark.parametrize("content", [None, "", "# only a comment\n"])
def test_a_missing_or_empty_token_file_at_startup_is_a_config_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError, match=r"token_files\[0\]"):
        tokens(files=[path])


def test_a_changed_token_file_is_reread_after_the_reload_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("old\n")
    clock = Clock()
    accepted = tokens(files=[path], clock=clock)

    path.write_text("new\n")
    os.utime(path, ns=(1, 1))  # a different mtime even within the filesystem's timestamp granularity
    assert accepted.matches("old")  # not checked again before the interval

    clock.now += 1.0
    assert accepted.matches("new")
    assert not accepted.matches("old")


def test_a_token_file_that_becomes_unreadable_or_empty_keeps_its_last_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("kept\n")
    clock = Clock()
    accepted = tokens(files=[path], clock=clock)

    path.write_text("")  # a rotation caught between truncate and write
    clock.now += 1.0
    assert accepted.matches("kept")

    path.unlink()
    clock.now += 1.0
    assert accepted.matches("kept")


# -- failures are counted and logged, rate-limited ---------------------------------------------


def test_failures_are_counted_by_receiver_and_reason(stack: Stack) -> None:
    auth = authenticator(stack, "right", receiver="events_api")

    auth.check("Bearer right")
    for header in (None, "Bearer wrong", "Basic x"):
        with pytest.raises(AuthenticationError):
            auth.check(header)

    assert stack.count("receiver_auth_failures", receiver="events_api", reason="missing") == 2
    assert stack.count("receiver_auth_failures", receiver="events_api", reason="invalid") == 1


def test_failure_logs_are_rate_limited_with_a_count_of_what_was_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="otlp_meter.auth")
    clock = Clock()
    limited = RateLimitedLog("auth_failed", interval=10.0, clock=clock)

    sent = [limited.warning(receiver="otlp_grpc") for _ in range(5)]
    clock.now += 10.0
    sent.append(limited.warning(receiver="otlp_grpc"))

    assert sent == [True, False, False, False, False, True]
    suppressed = [getattr(r, "fields", {})["suppressed"] for r in caplog.records]
    assert suppressed == [0, 4]


def test_the_token_never_reaches_the_log(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="otlp_meter")
    auth = authenticator(stack, "right-token")

    with pytest.raises(AuthenticationError):
        auth.check("Bearer wrong-token-value", peer="10.0.0.1:5555")

    assert "wrong-token-value" not in caplog.text
    assert "right-token" not in caplog.text


# -- on each endpoint ---------------------------------------------------------------------------


@pytest.fixture
async def otlp_http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    app = otlp_http_app(HttpReceiverConfig(), stack.core, authenticator(stack, "t0k3n"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://otlp") as client:
        yield client


async def test_otlp_http_without_a_valid_token_is_401_with_an_unauthenticated_status(
    otlp_http: httpx.AsyncClient, stack: Stack
) -> None:
    body = genai_logs("acme").SerializeToString()
    for headers in ({}, {"authorization": "Bearer nope"}):
        response = await otlp_http.post(
            "/v1/logs", content=body, headers={"content-type": PROTOBUF, **headers}
        )

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["connection"] == "close"  # the body was not read
        assert status_pb2.Status.FromString(response.content).code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert stack.queued() == []
    assert (
        stack.count("receiver_requests", transport="http_protobuf", signal="logs", outcome="unauthenticated")
        == 2
    )


async def test_otlp_http_with_the_token_is_accepted(otlp_http: httpx.AsyncClient, stack: Stack) -> None:
    response = await otlp_http.post(
        "/v1/logs",
        content=genai_logs("acme").SerializeToString(),
        headers={"content-type": PROTOBUF, "authorization": "Bearer t0k3n"},
    )

    assert response.status_code == 200
    assert len(stack.queued()) == 1


async def test_events_api_without_a_valid_token_is_401_problem(stack: Stack) -> None:
    app = events_api_app(
        EventsApiConfig(), stack.core, auth=authenticator(stack, "t0k3n", receiver="events_api")
    )
    event: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "x"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as client:
        refused = await client.post("/api/v1/events", json=event, headers={"authorization": "Bearer x"})
        accepted = await client.post("/api/v1/events", json=event, headers={"authorization": "Bearer t0k3n"})

    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Unauthorized"
    assert accepted.status_code == 204
    assert len(stack.queued()) == 1


async def test_otlp_grpc_checks_the_authorization_metadata(stack: Stack) -> None:
    receiver = OtlpGrpcReceiver(
        GrpcReceiverConfig(endpoint="127.0.0.1:0"),
        stack.core,
        authenticator(stack, "t0k3n", receiver="otlp_grpc"),
    )
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Export(genai_logs("acme"), timeout=10, metadata=(("authorization", "Bearer bad"),))
            await stub.Export(genai_logs("acme"), timeout=10, metadata=(("authorization", "Bearer t0k3n"),))
    finally:
        await receiver.stop(0)

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(stack.queued()) == 1
    assert stack.count("receiver_auth_failures", receiver="otlp_grpc", reason="invalid") == 1


async def test_telemetry_metrics_need_their_own_token_while_probes_stay_open() -> None:
    metrics = Metrics()
    auth = Authenticator(tokens("scrape-token"), metrics, "telemetry")
    app = telemetry_app(metrics, lambda: report(True), auth)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        anonymous = await client.get("/metrics")
        scraper = await client.get("/metrics", headers={"authorization": "Bearer scrape-token"})
        health = await client.get("/healthz")
        ready = await client.get("/readyz")

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert scraper.status_code == 200
    assert "otlp_meter_receiver_auth_failures_total" in scraper.text
    assert (health.status_code, ready.status_code) == (200, 200)
