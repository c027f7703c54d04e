"""Limits on OTLP records (``receivers.limits``), checked before the rules run.

A request in which any resource, scope, log record or data point has too many attributes, or an
attribute value (nested ones included) too large, is refused whole: INVALID_ARGUMENT / 400 naming
the record and the setting, counted as a limit violation. Nothing of it reaches the queue or the
dead-letter store.
"""

from __future__ import annotations

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otlp_meter.errors import LimitExceededError
from otlp_meter.receivers.config import HttpReceiverConfig, LimitsConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.receivers.limits import check_limits
from otlp_meter.receivers.otlp_http import otlp_http_app
from tests.unit.receivers.conftest import Stack
from tests.unit.rules.otlp import log_record, logs_request, metric, metrics_request

LIMITS = LimitsConfig(max_attributes_per_record=4, max_attribute_value_size=16)
BIG = 1 << 20  # a wire size that makes the value walk happen


def many(n: int) -> dict[str, int]:
    return {f"k{i}": i for i in range(n)}


def refusal(request: object, wire_size: int = BIG) -> str:
    with pytest.raises(LimitExceededError) as refused:
        check_limits(request, wire_size, LIMITS)  # type: ignore[arg-type]
    return str(refused.value)


def test_records_within_the_limits_pass() -> None:
    request = logs_request(log_record(many(3) | {"s": "x" * 16}), resource=many(4))

    check_limits(request, BIG, LIMITS)


@pytest.mark.parametrize(
    ("request_", "where"),
    [
        (
            logs_request(log_record(), log_record(many(5))),
            "resource_logs[0].scope_logs[0].log_records[1] has 5",
        ),
        (logs_request(log_record(), resource=many(9)), "resource_logs[0].resource has 9"),
        (
            metrics_request(metric("m", "sum", {"value": 1}, {"value": 2, "attrs": many(6)})),
            "resource_metrics[0].scope_metrics[0].metrics[0].data_points[1] has 6",
        ),
    ],
)
def test_too_many_attributes_name_the_record_and_the_setting(request_: object, where: str) -> None:
    message = refusal(request_)

    assert message.startswith(where)
    assert "receivers.limits.max_attributes_per_record" in message


@pytest.mark.parametrize(
    "value",
    ["x" * 17, "é" * 9, b"\x00" * 17, ["ok", "x" * 17], {"inner": {"deeper": "x" * 17}}],
    ids=["string", "utf8-bytes", "bytes", "in-array", "in-kvlist"],
)
def test_a_value_too_large_is_refused_wherever_it_is_nested(value: object) -> None:
    message = refusal(logs_request(log_record({"payload": value})))

    assert "attribute 'payload' is larger than 16 bytes" in message
    assert "max_attribute_value_size" in message


def test_values_are_not_walked_when_the_body_is_smaller_than_the_value_limit() -> None:
    request = logs_request(log_record({"payload": "x" * 17}))

    check_limits(request, 16, LIMITS)  # impossible in practice: a value is never larger than its body


async def test_over_http_it_is_400_counted_and_nothing_is_stored(stack: Stack) -> None:
    core = ReceiverCore(stack.pipeline, stack.metrics, LIMITS)
    app = otlp_http_app(HttpReceiverConfig(), core)
    body = logs_request(log_record({"gen_ai.usage.input_tokens": 5}, body="x"), resource=many(5))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://otlp") as client:
        response = await client.post(
            "/v1/logs", content=body.SerializeToString(), headers={"content-type": "application/x-protobuf"}
        )

    assert response.status_code == 400
    assert (
        "resource_logs[0].resource has 5 attributes" in status_pb2.Status.FromString(response.content).message
    )
    assert stack.count("receiver_limit_violations", transport="http_protobuf", limit="attributes") == 1
    assert (
        stack.count("receiver_requests", transport="http_protobuf", signal="logs", outcome="limit_exceeded")
        == 1
    )
    assert stack.queued() == []
    assert stack.queue.stats().dead_letters == 0


async def test_the_default_limits_take_ordinary_requests(stack: Stack) -> None:
    core = ReceiverCore(stack.pipeline, stack.metrics)
    request: ExportLogsServiceRequest = logs_request(
        log_record({"gen_ai.usage.input_tokens": 5, "openmeter.subject": "acme", "prompt": "x" * 100_000}),
        resource=many(200),
    )

    await core.export("logs", "grpc", request)

    assert len(stack.queued()) == 1
