"""The telemetry endpoint: ``/metrics`` for Prometheus (OpenMetrics when asked), ``/healthz`` for
liveness, ``/readyz`` for readiness with its reason and checks; only GET and HEAD."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from otlp_meter.http_server import HttpServer
from otlp_meter.telemetry.health import Check, ReadinessReport, report
from otlp_meter.telemetry.metrics import Metrics
from otlp_meter.telemetry.server import telemetry_app
from tests.unit.telemetry.stats import queue_stats


class Readiness:
    def __init__(self) -> None:
        self.state = report(True)

    def __call__(self) -> ReadinessReport:
        return self.state


@pytest.fixture
def metrics() -> Metrics:
    metrics = Metrics()
    metrics.receiver_accepted_records.labels("grpc", "logs").inc(7)
    stats = queue_stats(depth=3, bytes=300, capacity_bytes=1000, dead_letters=1, oldest_enqueued_at=97.5)
    metrics.observe_queue(lambda: stats, clock=lambda: 100.0)
    return metrics


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def client(metrics: Metrics, readiness: Readiness) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=telemetry_app(metrics, readiness))
    async with httpx.AsyncClient(transport=transport, base_url="http://telemetry") as http:
        yield http


def samples(text: str, *, openmetrics: bool = False) -> dict[str, float]:
    families = (
        parse_openmetrics(text) if openmetrics else text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    )
    out = {}
    for family in families:
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


async def test_metrics_are_prometheus_text_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    values = samples(response.text)
    assert values["otlp_meter_receiver_accepted_records_total{signal=logs,transport=grpc}"] == 7
    assert values["otlp_meter_queue_depth_events{}"] == 3
    assert values["otlp_meter_queue_capacity_bytes{}"] == 1000
    assert values["otlp_meter_queue_oldest_event_age_seconds{}"] == 2.5


async def test_metrics_are_openmetrics_when_the_scraper_asks(client: httpx.AsyncClient) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

    response = await client.get("/metrics", headers={"accept": accept})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    values = samples(response.text, openmetrics=True)
    assert values["otlp_meter_receiver_accepted_records_total{signal=logs,transport=grpc}"] == 7


async def test_queue_gauges_are_absent_until_the_queue_can_be_read(client: httpx.AsyncClient) -> None:
    metrics = Metrics()
    metrics.observe_queue(lambda: None)
    transport = httpx.ASGITransport(app=telemetry_app(metrics, Readiness()))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
        response = await other.get("/metrics")

    assert "otlp_meter_queue_depth_events" not in response.text
    assert "otlp_meter_receiver_requests" in response.text


async def test_healthz_is_ok_while_the_process_serves(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.state = report(False, "queue full")

    response = await client.get("/healthz")

    assert response.status_code == 200
    assert orjson.loads(response.content) == {"status": "ok"}


async def test_readyz_is_200_when_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(response.content) == {
        "status": "ready",
        "reason": "ok",
        "checks": {"service": {"ok": True}},
    }


@pytest.mark.parametrize("reason", ["starting", "queue full", "shutting down"])
async def test_readyz_is_503_with_the_reason_when_not_ready(
    client: httpx.AsyncClient, readiness: Readiness, reason: str
) -> None:
    readiness.state = report(False, reason)

    response = await client.get("/readyz")

    assert response.status_code == 503
    body = orjson.loads(response.content)
    assert (body["status"], body["reason"]) == ("not ready", reason)


async def test_readyz_explains_every_check_and_names_the_first_that_fails(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.state = ReadinessReport(
        {
            "lifecycle": Check(True, details={"state": "running"}),
            "receivers": Check(True, details={"listening": {"otlp_grpc": "127.0.0.1:4317"}}),
            "queue": Check(False, "queue full", {"open": True, "full": True, "bytes": 10}),
        }
    )

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert orjson.loads(response.content) == {
        "status": "not ready",
        "reason": "queue full",
        "checks": {
            "lifecycle": {"ok": True, "state": "running"},
            "receivers": {"ok": True, "listening": {"otlp_grpc": "127.0.0.1:4317"}},
            "queue": {"ok": False, "reason": "queue full", "open": True, "full": True, "bytes": 10},
        },
    }


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_get_405_with_allow(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/metrics")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_unknown_paths_get_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/metric")

    assert response.status_code == 404


async def test_served_over_a_real_socket_with_head_support(metrics: Metrics, readiness: Readiness) -> None:
    server = HttpServer(telemetry_app(metrics, readiness), "127.0.0.1:0")
    await server.start()
    host, port = server.address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
            get = await http.get("/metrics")
            head = await http.head("/healthz")
    finally:
        await server.stop()

    assert get.status_code == 200
    assert "otlp_meter_receiver_accepted_records_total" in get.text
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "15")
