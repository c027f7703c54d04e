"""OTLP/HTTP (``POST /v1/logs``, ``/v1/metrics``, ``/v1/traces``), driven in-process over ASGI.

Behind the app is the real stack: shipped rule packs, the pipeline, an LMDB queue in tmp_path.
The answer is always in the request's encoding: an ``Export*ServiceResponse`` on success, a
``google.rpc.Status`` otherwise, with the status code the status table gives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otlp_meter.errors import StorageError
from otlp_meter.receivers.config import HttpReceiverConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.receivers.otlp_http import otlp_http_app
from tests.unit.receivers.conftest import Stack, counter_metrics, genai_logs, mixed_logs

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
LIMIT = 256 * 1024


def as_json(message: Message) -> bytes:
    """OTLP/JSON as an SDK writes it (integer enums, lowerCamelCase keys)."""
    return json_format.MessageToJson(message, use_integers_for_enums=True).encode()


def client_for(stack: Stack, limit: int = LIMIT) -> httpx.AsyncClient:
    app = otlp_http_app(HttpReceiverConfig(max_request_body_size=limit), stack.core)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://otlp")


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(stack) as http:
        yield http


async def post(
    client: httpx.AsyncClient, path: str, body: bytes, content_type: str | None, **headers: str
) -> httpx.Response:
    if content_type is not None:
        headers["content-type"] = content_type
    return await client.post(path, content=body, headers=headers)


def status_of(response: httpx.Response) -> status_pb2.Status:
    """The google.rpc.Status body, decoded from the response's own content type."""
    if response.headers["content-type"] == JSON:
        return json_format.Parse(response.content, status_pb2.Status())
    assert response.headers["content-type"] == PROTOBUF
    return status_pb2.Status.FromString(response.content)


def retry_delay(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


# -- accepted ---------------------------------------------------------------------------------------


async def test_protobuf_logs_are_queued_and_answered_in_protobuf(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    response = await post(client, "/v1/logs", genai_logs("acme", "globex").SerializeToString(), PROTOBUF)

    assert response.status_code == 200
    assert response.headers["content-type"] == PROTOBUF
    assert ExportLogsServiceResponse.FromString(response.content) == ExportLogsServiceResponse()
    assert sorted(e["subject"] for e in stack.queued()) == ["acme", "globex"]
    assert stack.count("receiver_accepted_records", transport="http_protobuf", signal="logs") == 2
    assert stack.count("receiver_requests", transport="http_protobuf", signal="logs", outcome="ok") == 1


async def test_json_logs_are_queued_and_answered_in_json(client: httpx.AsyncClient, stack: Stack) -> None:
    response = await post(client, "/v1/logs", as_json(genai_logs("acme")), JSON)

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert orjson.loads(response.content) == {}
    [event] = stack.queued()
    assert (event["type"], event["subject"], event["data"]["tokens"]) == ("prompt", "acme", 10)
    assert stack.count("receiver_accepted_records", transport="http_json", signal="logs") == 1


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_metrics_are_queued_in_either_encoding(
    client: httpx.AsyncClient, stack: Stack, encoding: str
) -> None:
    request = counter_metrics("acme", "globex")
    body, ctype = (
        (request.SerializeToString(), PROTOBUF) if encoding == "protobuf" else (as_json(request), JSON)
    )

    response = await post(client, "/v1/metrics", body, ctype)

    assert response.status_code == 200
    if encoding == "protobuf":
        assert ExportMetricsServiceResponse.FromString(response.content) == ExportMetricsServiceResponse()
    else:
        assert orjson.loads(response.content) == {}
    assert {e["subject"]: e["data"]["count"] for e in stack.queued()} == {"acme": 1, "globex": 2}


@pytest.mark.parametrize(
    ("content_type", "answered_as"),
    [
        ("application/json; charset=utf-8", JSON),
        ("Application/JSON", JSON),
        ("application/protobuf", PROTOBUF),
        ("application/x-protobuf; proto=opentelemetry.proto.collector.logs.v1", PROTOBUF),
    ],
)
async def test_media_type_parameters_case_and_the_protobuf_alias_are_accepted(
    client: httpx.AsyncClient, stack: Stack, content_type: str, answered_as: str
) -> None:
    request = genai_logs("acme")
    body = as_json(request) if answered_as == JSON else request.SerializeToString()

    response = await post(client, "/v1/logs", body, content_type)

    assert response.status_code == 200
    assert response.headers["content-type"] == answered_as
    assert len(stack.queued()) == 1


async def test_traces_are_accepted_and_discarded(client: httpx.AsyncClient, stack: Stack) -> None:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(name="GET /", trace_id=b"\x01" * 16)

    response = await post(client, "/v1/traces", request.SerializeToString(), PROTOBUF)
    as_json_response = await post(client, "/v1/traces", as_json(request), JSON)

    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content) == ExportTraceServiceResponse()
    assert as_json_response.status_code == 200
    assert stack.queue.stats().depth == 0


async def test_records_no_rule_matches_are_accepted_but_make_no_events(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    other = counter_metrics("acme")
    other.resource_metrics[0].scope_metrics[0].metrics[0].name = "not.billed"

    response = await post(client, "/v1/metrics", other.SerializeToString(), PROTOBUF)

    assert response.status_code == 200
    assert stack.queue.stats().depth == 0
    assert stack.count("receiver_accepted_records", transport="http_protobuf", signal="metrics") == 1


# -- partial success --------------------------------------------------------------------------------


async def test_records_a_rule_rejects_are_counted_in_partial_success_and_dead_lettered(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    response = await post(client, "/v1/logs", mixed_logs().SerializeToString(), PROTOBUF)

    assert response.status_code == 200
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1
    assert "genai-input-tokens" in partial.error_message
    assert len(stack.queued()) == 1
    assert stack.queue.stats().dead_letters == 1
    labels = {"transport": "http_protobuf", "signal": "logs"}
    assert stack.count("receiver_accepted_records", **labels) == 2  # the good one and the unmatched one
    assert stack.count("receiver_refused_records", **labels, reason="rejected_by_rules") == 1
    assert stack.count("receiver_requests", **labels, outcome="partial") == 1


async def test_partial_success_in_json_uses_otlp_json_field_names(client: httpx.AsyncClient) -> None:
    response = await post(client, "/v1/logs", as_json(mixed_logs()), JSON)

    assert response.status_code == 200
    partial = orjson.loads(response.content)["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1"  # int64 as a string, per protojson
    assert "genai-input-tokens" in partial["errorMessage"]


# -- refused: the request is wrong ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xff\xff\xff", PROTOBUF),
        (b"\x0a\x05\x0a\x03", PROTOBUF),  # a field longer than the message
        (b'{"resourceLogs": [', JSON),
        (b'{"resourceLogs": "not a list"}', JSON),
        (b"\xff\xfe", "application/json; charset=utf-8"),
    ],
)
async def test_malformed_bodies_get_400_with_a_status_in_the_request_encoding(
    client: httpx.AsyncClient, stack: Stack, body: bytes, content_type: str
) -> None:
    response = await post(client, "/v1/logs", body, content_type)

    assert response.status_code == 400
    expected_type = JSON if content_type.startswith(JSON) else PROTOBUF
    assert response.headers["content-type"] == expected_type
    status = status_of(response)
    assert status.code == 3  # INVALID_ARGUMENT
    assert status.message
    assert retry_delay(status) is None
    assert "retry-after" not in response.headers
    labels = {"transport": "http_json" if expected_type == JSON else "http_protobuf", "signal": "logs"}
    assert stack.count("receiver_requests", **labels, outcome="malformed") == 1
    assert stack.queue.stats().depth == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", "", None])
async def test_unsupported_content_types_get_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    response = await post(client, "/v1/logs", b"{}", content_type)

    assert response.status_code == 415
    assert status_of(response).code == 3
    assert "application/x-protobuf" in status_of(response).message


async def test_an_unsupported_content_encoding_gets_415(client: httpx.AsyncClient, stack: Stack) -> None:
    body = genai_logs("acme").SerializeToString()

    response = await post(client, "/v1/logs", body, PROTOBUF, **{"content-encoding": "br"})

    assert response.status_code == 415
    assert "br" in status_of(response).message
    assert stack.queue.stats().depth == 0


async def test_get_gets_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/logs")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/", "/v1/log", "/v1/logs/extra", "/v2/logs", "/api/v1/events"])
async def test_unknown_paths_get_404(client: httpx.AsyncClient, path: str) -> None:
    response = await post(client, path, b"{}", JSON)

    assert response.status_code == 404
    assert response.headers["content-type"] == JSON


async def test_a_body_over_the_limit_gets_413_and_nothing_is_queued(stack: Stack) -> None:
    body = genai_logs(*[f"customer-{i}" for i in range(100)]).SerializeToString()
    assert len(body) > 2048
    async with client_for(stack, limit=2048) as client:
        response = await post(client, "/v1/logs", body, PROTOBUF)

    assert response.status_code == 413
    status = status_of(response)
    assert status.code == 8  # RESOURCE_EXHAUSTED
    assert retry_delay(status) is None
    assert (
        stack.count("receiver_requests", transport="http_protobuf", signal="logs", outcome="too_large") == 1
    )
    assert stack.queue.stats().depth == 0


async def test_a_body_exactly_at_the_limit_is_accepted(stack: Stack) -> None:
    body = genai_logs("acme").SerializeToString()
    async with client_for(stack, limit=len(body)) as client:
        response = await post(client, "/v1/logs", body, PROTOBUF)

    assert response.status_code == 200


# -- refused: come back later ----------------------------------------------------------------------


def assert_retry_later(response: httpx.Response) -> status_pb2.Status:
    assert response.status_code == 503
    assert 1 <= int(response.headers["retry-after"]) <= 30
    status = status_of(response)
    assert status.code == 14  # UNAVAILABLE
    delay = retry_delay(status)
    assert delay is not None
    assert 1 <= delay <= 30
    return status


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_a_full_queue_gets_503_with_retry_after_and_retry_info(make_stack: Any, encoding: str) -> None:
    stack: Stack = make_stack(max_bytes=64)
    request = genai_logs("acme", "globex")
    body, ctype = (
        (request.SerializeToString(), PROTOBUF) if encoding == "protobuf" else (as_json(request), JSON)
    )
    async with client_for(stack) as client:
        response = await post(client, "/v1/logs", body, ctype)

    status = assert_retry_later(response)
    assert "queue full" in status.message
    assert stack.queue.stats().depth == 0
    labels = {"transport": f"http_{encoding}", "signal": "logs"}
    assert stack.count("receiver_refused_records", **labels, reason="queue_full") == 2
    assert stack.count("receiver_requests", **labels, outcome="queue_full") == 1
    assert stack.count("receiver_accepted_records", **labels) == 0


async def test_after_intake_closes_requests_get_503(client: httpx.AsyncClient, stack: Stack) -> None:
    stack.pipeline.close_intake()

    response = await post(client, "/v1/logs", genai_logs("acme").SerializeToString(), PROTOBUF)

    assert_retry_later(response)
    assert stack.queue.stats().depth == 0
    labels = {"transport": "http_protobuf", "signal": "logs"}
    assert stack.count("receiver_requests", **labels, outcome="shutting_down") == 1
    assert stack.count("receiver_refused_records", **labels, reason="shutting_down") == 1


async def test_retry_after_is_rounded_up_to_whole_seconds(stack: Stack) -> None:
    class BusyCore(ReceiverCore):
        async def export(self, *args: Any, **kwargs: Any) -> Any:
            raise StorageError("busy", retry_after=2.5)

    app = otlp_http_app(HttpReceiverConfig(), BusyCore(stack.pipeline, stack.metrics))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://otlp") as client:
        response = await post(client, "/v1/logs", genai_logs("acme").SerializeToString(), PROTOBUF)

    assert response.headers["retry-after"] == "3"
    assert retry_delay(assert_retry_later(response)) == 2.5


async def test_a_client_that_disconnects_mid_body_gets_nothing_and_nothing_is_taken(stack: Stack) -> None:
    body = genai_logs("acme", "globex").SerializeToString()
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:-3], "more_body": True},  # may even decode
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/logs",
        "headers": [(b"content-type", PROTOBUF.encode())],
    }
    await otlp_http_app(HttpReceiverConfig(), stack.core)(scope, receive, send)

    assert sent == []
    assert stack.queue.stats().depth == 0
