"""Readiness as one report, and the gRPC health service (``grpc.health.v1.Health``) answering from it:
served in-process by grpc.aio on 127.0.0.1:0 and called through a real channel with the stubs of
``grpcio-health-checking``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from otlp_meter.receivers.otlp_grpc import SERVICE_NAMES
from otlp_meter.telemetry.health import Check, HealthService, ReadinessReport, report

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
LOGS = "opentelemetry.proto.collector.logs.v1.LogsService"


class Switch:
    """A readiness function a test flips."""

    def __init__(self) -> None:
        self.ready = True

    def __call__(self) -> ReadinessReport:
        return report(self.ready, "queue full")


@pytest.fixture
def readiness() -> Switch:
    return Switch()


@pytest.fixture
def health(readiness: Switch) -> HealthService:
    return HealthService(readiness, SERVICE_NAMES, poll_interval=0.01)


@pytest.fixture
async def stub(health: HealthService) -> AsyncIterator[object]:
    server = grpc.aio.server()
    health.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield health_pb2_grpc.HealthStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


# --- the report ------------------------------------------------------------------------------------


def test_ready_only_when_every_check_holds_and_the_reason_is_the_first_failure() -> None:
    checks = {
        "lifecycle": Check(True),
        "receivers": Check(False, "not listening: otlp_http"),
        "queue": Check(False, "queue full"),
    }

    assert ReadinessReport(checks).ready is False
    assert ReadinessReport(checks).reason == "not listening: otlp_http"
    assert ReadinessReport({"lifecycle": Check(True)}).reason == "ok"


def test_the_json_body_shows_what_each_check_saw_and_why_it_failed() -> None:
    body = ReadinessReport(
        {"lifecycle": Check(True, details={"state": "running"}), "queue": Check(False, "queue full")}
    ).to_json()

    assert body == {
        "status": "not ready",
        "reason": "queue full",
        "checks": {
            "lifecycle": {"ok": True, "state": "running"},
            "queue": {"ok": False, "reason": "queue full"},
        },
    }


# --- the gRPC health service -----------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", LOGS])
async def test_check_says_serving_while_ready_and_not_serving_otherwise(
    stub: object, readiness: Switch, service: str
) -> None:
    request = health_pb2.HealthCheckRequest(service=service)

    serving = await stub.Check(request, timeout=5)  # type: ignore[attr-defined]
    readiness.ready = False
    refusing = await stub.Check(request, timeout=5)  # type: ignore[attr-defined]

    assert (serving.status, refusing.status) == (SERVING, NOT_SERVING)


async def test_check_of_an_unknown_service_is_not_found(stub: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)  # type: ignore[attr-defined]

    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_names_the_server_and_every_otlp_service(stub: object) -> None:
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)  # type: ignore[attr-defined]

    assert set(listed.statuses) == {"", *SERVICE_NAMES}
    assert {status.status for status in listed.statuses.values()} == {SERVING}


async def test_watch_sends_the_status_then_every_change_and_ends_at_close(
    stub: object, readiness: Switch, health: HealthService
) -> None:
    seen = []
    async for answer in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10):  # type: ignore[attr-defined]
        seen.append(answer.status)
        if len(seen) == 1:
            readiness.ready = False
        elif len(seen) == 2:
            readiness.ready = True
        elif len(seen) == 3:
            health.close()

    assert seen == [SERVING, NOT_SERVING, SERVING, NOT_SERVING]


async def test_watch_of_an_unknown_service_says_service_unknown(stub: object, health: HealthService) -> None:
    call = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)  # type: ignore[attr-defined]

    first = await call.read()
    health.close()

    assert first.status == SERVICE_UNKNOWN


async def test_after_close_everything_is_not_serving(stub: object, health: HealthService) -> None:
    health.close()

    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # type: ignore[attr-defined]

    assert answer.status == NOT_SERVING
