"""End to end: the OpenTelemetry SDK sends to otlp-meter, the CloudEvents arrive at OpenMeter."""

from __future__ import annotations

import gzip

import httpx
import orjson
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from tests.e2e.conftest import TOKEN, ServiceFactory
from tests.e2e.otlp_clients import send_counter, send_logs
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.e2e

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


def genai_record(i: int, customer: str = "customer-1") -> dict[str, object]:
    return {
        "timestamp": T0 + i * 1_000_000_000,
        "body": "chat completion",
        "attributes": {
            "gen_ai.usage.input_tokens": 10 + i,
            "gen_ai.usage.output_tokens": 20 + i,
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.provider.name": "openai",
            "openmeter.subject": customer,
        },
    }


def expected_genai(i: int, customer: str = "customer-1") -> list[dict[str, object]]:
    time = f"2026-01-01T00:00:{i:02d}Z"
    return [
        {
            "type": "prompt",
            "subject": customer,
            "source": "chat-api",
            "time": time,
            "data": {"tokens": 10 + i, "model": "gpt-4o", "provider": "openai", "type": "input"},
        },
        {
            "type": "prompt",
            "subject": customer,
            "source": "chat-api",
            "time": time,
            "data": {"tokens": 20 + i, "model": "gpt-4o", "provider": "openai", "type": "output"},
        },
    ]


def comparable(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """Events without their (hash-derived) ids, in a stable order."""
    stripped = [{k: v for k, v in e.items() if k not in ("id", "specversion")} for e in events]
    return sorted(stripped, key=lambda e: orjson.dumps(e, option=orjson.OPT_SORT_KEYS))


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_logs_become_genai_events_at_openmeter(
    transport: str, service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    endpoint = service.grpc_endpoint if transport == "grpc" else service.http_url
    send_logs(transport, endpoint, [genai_record(0), genai_record(1)])

    events = openmeter.wait_for_events(4)

    assert comparable(events) == comparable(expected_genai(0) + expected_genai(1))
    assert all(e["specversion"] == "1.0" for e in events)
    assert len({e["id"] for e in events}) == 4
    request = openmeter.requests[-1]
    assert request.path == "/api/v1/events"
    assert request.headers["content-type"] == "application/cloudevents-batch+json"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_sdk_counter_becomes_events_through_a_user_rule(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    rule = {
        "name": "api-requests",
        "match": {"signal": "metrics", "metric": "api.requests"},
        "event": {
            "type": "api-requests",
            "subject": {"path": "attributes.customer"},
            "data": {"count": {"path": "point.value", "as": "int"}, "route": {"path": "attributes.route"}},
        },
    }
    with service_factory({"rules": {"inline": [rule]}}) as service:
        send_counter(
            "grpc",
            service.grpc_endpoint,
            "api.requests",
            [(3, {"customer": "acme", "route": "/a"}), (4, {"customer": "globex", "route": "/b"})],
        )
        events = openmeter.wait_for_events(2)
    by_subject = {e["subject"]: e for e in events}
    assert by_subject["acme"]["data"] == {"count": 3, "route": "/a"}
    assert by_subject["globex"]["data"] == {"count": 4, "route": "/b"}
    assert {e["type"] for e in events} == {"api-requests"}


def otlp_json_body(customer: str) -> bytes:
    return orjson.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "gateway"}}]
                    },
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "timeUnixNano": str(T0),
                                    "body": {"stringValue": "GET /v1/things"},
                                    "attributes": [
                                        {"key": "method", "value": {"stringValue": "GET"}},
                                        {"key": "path", "value": {"stringValue": "/v1/things"}},
                                        {"key": "user", "value": {"stringValue": customer}},
                                        {"key": "duration", "value": {"intValue": "42"}},
                                    ],
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    )


def test_otlp_json_over_http_with_gzip_becomes_an_api_call_event(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    response = httpx.post(
        f"{service.http_url}/v1/logs",
        content=gzip.compress(otlp_json_body("user-7")),
        headers={"content-type": "application/json; charset=utf-8", "content-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}

    (event,) = openmeter.wait_for_events(1)
    assert event["type"] == "api-call"
    assert event["subject"] == "user-7"
    assert event["source"] == "gateway"
    assert event["time"] == "2026-01-01T00:00:00Z"
    assert event["data"] == {"count": 1, "duration": 42, "method": "GET", "path": "/v1/things"}


def test_the_same_request_twice_is_delivered_once_with_the_same_ids(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    body = otlp_json_body("user-1")
    for _ in range(2):
        response = httpx.post(
            f"{service.http_url}/v1/logs", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200
    openmeter.wait_for_events(1)
    # A third, different request proves the pipeline moved on; the duplicate never arrives.
    httpx.post(
        f"{service.http_url}/v1/logs",
        content=otlp_json_body("user-2"),
        headers={"content-type": "application/json"},
    )
    events = openmeter.wait_for_events(2)
    assert [e["subject"] for e in events] == ["user-1", "user-2"]
    assert openmeter.duplicates() == []
    assert service.metric("otlp_meter_queue_deduplicated_events_total") == 1


def test_a_record_emitted_again_with_a_new_observed_time_is_not_counted_twice(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    send_logs("grpc", service.grpc_endpoint, [genai_record(5)])
    first = openmeter.wait_for_events(2)
    send_logs("http", service.http_url, [genai_record(5)])  # same record, new SDK, new observed time
    send_logs("grpc", service.grpc_endpoint, [genai_record(6)])
    events = openmeter.wait_for_events(4)
    assert openmeter.duplicates() == []
    assert {e["id"] for e in first} <= {e["id"] for e in events}
    assert len(events) == 4


def test_openmeter_outage_then_recovery_delivers_everything_also_across_a_restart(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.set_down(503, retry_after="0")
    service = service_factory().start()
    send_logs("grpc", service.grpc_endpoint, [genai_record(i) for i in range(5)])
    openmeter.wait_for_requests(2)  # it is trying, and failing
    assert service.stop() == 0  # SIGTERM while OpenMeter is down: events stay on disk
    assert openmeter.events == []

    restarted = service_factory(workdir=service.workdir).start()
    send_logs("http", restarted.http_url, [genai_record(i) for i in range(5, 8)])
    openmeter.set_down(None)
    events = openmeter.wait_for_events(16)
    assert comparable(events) == comparable([e for i in range(8) for e in expected_genai(i)])
    assert openmeter.duplicates() == []
    assert restarted.metric("otlp_meter_exporter_sent_events_total") == 16
    assert restarted.metric("otlp_meter_queue_depth_events") == 0


def test_malformed_requests_get_the_status_table_answer_and_the_service_keeps_serving(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    url = f"{service.http_url}/v1/logs"
    bad_proto = httpx.post(url, content=b"\xff\xff\xff", headers={"content-type": "application/x-protobuf"})
    assert bad_proto.status_code == 400
    assert status_pb2.Status.FromString(bad_proto.content).code == 3  # INVALID_ARGUMENT

    bad_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["code"] == 3

    wrong_type = httpx.post(url, content=b"hello", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415

    wrong_method = httpx.get(url)
    assert wrong_method.status_code == 405

    bad_gzip = httpx.post(
        url, content=b"not gzip", headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert bad_gzip.status_code == 400

    import grpc

    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        with pytest.raises(grpc.RpcError) as refused:
            export(b"\xff\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    good = httpx.post(
        url,
        content=ExportLogsServiceRequest().SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
    )
    assert good.status_code == 200
    assert ExportLogsServiceResponse.FromString(good.content) == ExportLogsServiceResponse()
    send_logs("grpc", service.grpc_endpoint, [genai_record(0)])
    assert len(openmeter.wait_for_events(2)) == 2


def test_records_a_rule_cannot_map_are_rejected_through_partial_success(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    record = genai_record(0)
    attributes = dict(record["attributes"])  # type: ignore[call-overload]
    del attributes["openmeter.subject"]  # no subject anywhere: the genai rule cannot map it
    body = orjson.dumps(
        {
            "resourceLogs": [
                {
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "timeUnixNano": str(T0),
                                    "attributes": [
                                        {
                                            "key": k,
                                            "value": {"stringValue": v}
                                            if isinstance(v, str)
                                            else {"intValue": str(v)},
                                        }
                                        for k, v in attributes.items()
                                    ],
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    )
    response = httpx.post(
        f"{service.http_url}/v1/logs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1"
    assert "subject" in partial["errorMessage"]
    assert service.metric("otlp_meter_queue_dead_letters") == 2  # one per rule that failed
    assert openmeter.events == []


def test_acknowledged_events_survive_sigkill_and_are_delivered_after_restart(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.set_down(503, retry_after="0")
    service = service_factory().start()
    send_logs("grpc", service.grpc_endpoint, [genai_record(i) for i in range(10)])  # acked = durable
    service.kill()  # no shutdown code runs
    assert openmeter.events == []

    openmeter.set_down(None)
    restarted = service_factory(workdir=service.workdir).start()
    events = openmeter.wait_for_events(20)
    assert comparable(events) == comparable([e for i in range(10) for e in expected_genai(i)])
    assert openmeter.duplicates() == []
    assert restarted.stop() == 0


def test_sigterm_exits_cleanly_and_logs_the_shutdown(service: ServiceProcess) -> None:
    assert service.stop() == 0
    names = [e["event"] for e in service.log_events()]
    assert names.index("startup") < names.index("shutdown_started") < names.index("shutdown_complete")
