"""End to end: what an operator sees of a running otlp-meter.

* ``/metrics`` after real traffic passes ``promtool check metrics`` (Debian's prometheus package),
  parses as OpenMetrics when asked for it, and a real Prometheus server scrapes it.
* The log says what happened — startup, exporter failures with status, batch size and next retry,
  refusals (one line per reason, however many requests), shutdown — and never a secret.
* ``/readyz`` explains itself, and the gRPC health service on the OTLP port agrees with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.e2e.conftest import ServiceFactory
from tests.e2e.otlp_clients import send_counter, send_logs
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.prometheus import PrometheusServer
from tests.support.service import ServiceProcess, wait_until
from tests.unit.receivers.conftest import genai_logs

pytestmark = pytest.mark.e2e

LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
T0 = 1_767_225_600_000_000_000
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def require_promtool() -> str:
    """promtool's path; a missing binary skips on a developer machine and fails in CI."""
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return binary


def genai_record(i: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.usage.input_tokens": 10 + i, "gen_ai.usage.output_tokens": 20 + i}
    attributes |= {"gen_ai.request.model": "gpt-4o", "openmeter.subject": f"customer-{i % 3}"}
    return {"timestamp": T0 + i * 1_000_000_000, "body": "chat", "attributes": attributes}


def traffic(service: ServiceProcess, openmeter: FakeOpenMeter) -> None:
    """Some of everything, so that labelled series exist: logs and metrics over both transports,
    events, a request the rules partly reject, and refused requests."""
    send_logs("grpc", service.grpc_endpoint, [genai_record(i) for i in range(3)])
    send_logs("http", service.http_url, [genai_record(i) for i in range(3, 6)])
    send_counter("grpc", service.grpc_endpoint, "http.server.request.count", [(2, {"customer": "acme"})])
    event = {"specversion": "1.0", "id": "obs-1", "source": "obs", "type": "t", "subject": "acme"}
    assert httpx.post(f"{service.events_url}/api/v1/events", json=event).status_code == 204
    bad = genai_logs("acme", tokens="many")  # the genai pack rejects it: a dead letter
    protobuf = {"content-type": "application/x-protobuf"}
    assert httpx.post(
        f"{service.http_url}/v1/logs", content=bad.SerializeToString(), headers=protobuf
    ).is_success
    assert httpx.post(f"{service.http_url}/v1/logs", content=b"\xff", headers=protobuf).status_code == 400
    openmeter.wait_for_events(13)


def scrape(service: ServiceProcess, accept: str | None = None) -> str:
    headers = {"accept": accept} if accept else {}
    response = httpx.get(f"{service.telemetry_url}/metrics", headers=headers, timeout=5.0)
    assert response.status_code == 200
    return response.text


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_after_traffic_pass_promtool(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    require_promtool()
    with service_factory() as service:
        traffic(service, openmeter)
        text = scrape(service)

    checked = promtool_check(text)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'otlp_meter_receiver_accepted_records_total{signal="logs",transport="grpc"}' in text
    assert 'otlp_meter_receiver_refused_records_total{reason="rejected_by_rules"' in text
    assert 'otlp_meter_rules_rejected_records_total{reason="invalid_value"' in text
    assert "otlp_meter_exporter_sent_events_total" in text
    assert "process_resident_memory_bytes" in text


def test_migration_aliases_parse_and_only_their_inherited_unit_is_linted(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    require_promtool()
    with service_factory({"telemetry": {"metrics": {"migration_aliases": True}}}) as service:
        traffic(service, openmeter)
        text = scrape(service)
        batches_sent = service.metric("batch_sent")

    checked = promtool_check(text)

    # 1 would be a format error; 3 is lint only, and the one finding is the name kept on purpose.
    assert checked.returncode == 3, checked.stdout + checked.stderr
    findings = (checked.stdout + checked.stderr).strip().splitlines()
    assert findings == ["buffer_latency_ns metric names should not contain abbreviated units"]
    assert batches_sent >= 1
    assert "# TYPE batch_created untyped" in text


def test_openmetrics_is_served_when_asked_for_and_parses(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    with service_factory({"telemetry": {"metrics": {"migration_aliases": True}}}) as service:
        traffic(service, openmeter)
        text = scrape(service, OPENMETRICS)

    parsed = parse_openmetrics(text)  # type: ignore[no-untyped-call]
    families = {family.name: family for family in parsed}  # parsing raises on any format error

    assert text.endswith("# EOF\n")
    accepted = families["otlp_meter_receiver_accepted_records"]
    assert accepted.type == "counter"
    assert sum(s.value for s in accepted.samples if s.name.endswith("_total")) >= 6
    assert families["otlp_meter_queue_depth_events"].type == "gauge"
    assert families["batch_created"].type == "unknown"
    assert families["buffer_latency_ns"].type == "histogram"


def test_a_real_prometheus_scrapes_the_telemetry_endpoint(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter, tmp_path: Path
) -> None:
    with service_factory({"telemetry": {"metrics": {"migration_aliases": True}}}) as service:
        traffic(service, openmeter)
        target = service.telemetry_url.removeprefix("http://")
        with PrometheusServer(tmp_path / "prometheus", [target], scrape="1s") as prometheus:
            deadline = time.monotonic() + 30
            while True:
                targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()
                active = targets["data"]["activeTargets"]  # empty until discovery has run
                if active and active[0]["health"] == "up":
                    break
                assert time.monotonic() < deadline, f"target never up: {active}\n{prometheus.logs()}"
                time.sleep(0.2)  # scrapes happen on Prometheus's schedule
            prometheus.wait_for_series("otlp_meter_receiver_accepted_records_total", timeout=30)
            accepted = prometheus.query("sum(otlp_meter_receiver_accepted_records_total)")
            aliases = prometheus.query("batch_sent")

    assert [(t["scrapeUrl"], t["lastError"]) for t in active] == [(f"{service.telemetry_url}/metrics", "")]
    assert float(accepted[0]["value"][1]) >= 6
    assert float(aliases[0]["value"][1]) >= 1


# -- logs ------------------------------------------------------------------------------------------

EXPORT_TOKEN = "om-export-secret-4f9a1c"
INGEST_TOKEN = "ingest-secret-7d2e8b"
SCRAPE_TOKEN = "scrape-secret-0b6c3e"
WRONG_TOKEN = "presented-wrong-secret-5a1f"


def logged(service: ServiceProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in service.log_events() if line["event"] == event]


def test_the_log_tells_what_happened_and_never_a_secret(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    config = {
        "receivers": {"auth": {"tokens": ["${INGEST_TOKEN}"]}},
        "telemetry": {"auth": {"tokens": ["${SCRAPE_TOKEN}"]}},
    }
    env = {"OPENMETER_TOKEN": EXPORT_TOKEN, "INGEST_TOKEN": INGEST_TOKEN, "SCRAPE_TOKEN": SCRAPE_TOKEN}
    protobuf = {"content-type": "application/x-protobuf"}
    ingest = {**protobuf, "authorization": f"Bearer {INGEST_TOKEN}"}
    openmeter.set_down(503)
    service = service_factory(config, env).start()
    logs_url = f"{service.http_url}/v1/logs"

    body = genai_logs("acme", "globex").SerializeToString()
    assert httpx.post(logs_url, content=body, headers=ingest).status_code == 200
    wait_until(lambda: bool(logged(service, "exporter_retry")), what="exporter_retry logged")
    openmeter.set_down(None)  # up again, but it refuses our token: 401
    wait_until(lambda: bool(logged(service, "exporter_unauthorized")), what="exporter_unauthorized logged")
    wrong = {**protobuf, "authorization": f"Bearer {WRONG_TOKEN}"}
    assert httpx.post(logs_url, content=body, headers=wrong).status_code == 401
    statuses = {httpx.post(logs_url, content=b"\xff", headers=ingest).status_code for _ in range(50)}
    scraped = httpx.get(
        f"{service.telemetry_url}/metrics", headers={"authorization": f"Bearer {SCRAPE_TOKEN}"}
    )
    assert service.stop() == 0

    assert statuses == {400}
    assert scraped.status_code == 200
    text = service.logs()
    for secret in (EXPORT_TOKEN, INGEST_TOKEN, SCRAPE_TOKEN, WRONG_TOKEN):
        assert secret not in text, f"{secret} was logged"
    [startup] = logged(service, "startup")
    assert startup["otlp_grpc"] == service.grpc_endpoint
    assert startup["telemetry"] == service.telemetry_url.removeprefix("http://")
    assert startup["ingest_auth"] == "bearer token"
    assert "(with bearer token)" in startup["exporter"]
    retry = logged(service, "exporter_retry")[0]
    assert (retry["status"], retry["events"]) == (503, 2)
    assert retry["retry_in"] > 0
    assert logged(service, "exporter_unauthorized")[0]["status"] == 401
    [refused] = logged(service, "receiver_refused")  # 50 bad requests, one line
    assert (refused["reason"], refused["status"], refused["transport"]) == ("malformed", 400, "http_protobuf")
    assert refused["peer"].startswith("127.0.0.1:")
    assert len(logged(service, "auth_failed")) == 1
    events = [e["event"] for e in service.log_events()]
    assert "shutdown_started" in events
    assert events[-1] == "shutdown_complete"


def test_a_config_error_is_logged_without_the_secrets_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "receivers:\n  auth:\n    tokens: ingest-secret-as-a-string-not-a-list\n"
        "exporter:\n  openmeter:\n    token: {nested: export-secret-in-a-map}\n"
        f"queue:\n  directory: {tmp_path / 'data'}\n"
    )

    run = subprocess.run(
        [sys.executable, "-m", "otlp_meter", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 2
    output = run.stdout + run.stderr
    assert '"event":"config_invalid"' in output
    assert "receivers.auth.tokens" in output
    assert "ingest-secret-as-a-string" not in output
    assert "export-secret-in-a-map" not in output


# -- health ----------------------------------------------------------------------------------------


def grpc_health(service: ServiceProcess, name: str = "") -> int:
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=5
        )
    status: int = answer.status
    return status


def test_readyz_explains_the_state_and_grpc_health_agrees(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    config = {"queue": {"max_bytes": "64KiB"}, "receivers": {"auth": {"tokens": ["${INGEST_TOKEN}"]}}}
    openmeter.set_down(503)
    service = service_factory(config, {"INGEST_TOKEN": INGEST_TOKEN}).start()
    ready = httpx.get(f"{service.telemetry_url}/readyz").json()
    health_while_ready = (grpc_health(service), grpc_health(service, LOGS_SERVICE))
    headers = {"content-type": "application/x-protobuf", "authorization": f"Bearer {INGEST_TOKEN}"}
    for n in range(200):  # OpenMeter is down: the queue fills until intake is refused
        body = genai_logs(*[f"customer-{n}-{i}" for i in range(40)]).SerializeToString()
        if httpx.post(f"{service.http_url}/v1/logs", content=body, headers=headers).status_code == 503:
            break
    full = httpx.get(f"{service.telemetry_url}/readyz")
    health_while_full = grpc_health(service)
    openmeter.set_down(None)
    wait_until(lambda: httpx.get(f"{service.telemetry_url}/readyz").status_code == 200, 30, "drained")
    health_after = grpc_health(service)

    assert ready["status"] == "ready"
    assert ready["checks"]["lifecycle"] == {"ok": True, "state": "running"}
    assert ready["checks"]["receivers"] == {
        "ok": True,
        "listening": {
            "otlp_grpc": service.grpc_endpoint,
            "otlp_http": service.http_url.removeprefix("http://"),
            "events_api": service.events_url.removeprefix("http://"),
        },
        "not_listening": [],
    }
    assert ready["checks"]["queue"]["ok"] is True
    assert health_while_ready == (SERVING, SERVING)  # no token needed: probes carry no secret
    assert full.status_code == 503
    assert (full.json()["reason"], full.json()["checks"]["queue"]["full"]) == ("queue full", True)
    assert health_while_full == NOT_SERVING
    assert health_after == SERVING


def test_grpc_health_watchers_hear_not_serving_at_shutdown_and_do_not_delay_it(
    service: ServiceProcess,
) -> None:
    assert service.process is not None
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        seen = [next(watch).status]
        service.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        with contextlib.suppress(grpc.RpcError):  # checked below: how the stream ended
            seen.extend(answer.status for answer in watch)
        assert service.process.wait(20) == 0
        took = time.monotonic() - started
        # Ended by us (OK) or by the server going away right after, never by a deadline.
        assert watch.code() in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    assert seen[0] == SERVING
    assert seen[-1] == NOT_SERVING
    assert took < 5  # well inside the 5 s shutdown_timeout: the open stream held nothing up
