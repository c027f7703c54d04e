"""What the receivers and the pipeline report: request sizes, refusals (counted, and logged at most once
per reason every few seconds, with the client's address), rule rejections by rule and reason
(counted, and logged as dead letters), cumulative points by outcome. Driven through a real stack:
rules engine, pipeline and LMDB queue."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from otlp_meter.receivers.auth import Authenticator, TokenSet
from otlp_meter.receivers.config import AuthConfig, HttpReceiverConfig
from otlp_meter.receivers.otlp_http import otlp_http_app
from otlp_meter.telemetry.logging import configure_logging
from otlp_meter.telemetry.spec import rule_rejection_reason
from tests.unit.receivers.conftest import Stack, genai_logs, mixed_logs
from tests.unit.rules.otlp import log_record, map_one, metric, metrics_request, reasons, rule

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The service's log, as JSON lines in memory (the process-wide setup is restored after)."""
    names = ("otlp_meter", "uvicorn", "uvicorn.error", "uvicorn.access", "grpc")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    for name, (handlers, level) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).setLevel(level)


def events_named(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


async def post_many(stack: Stack, bodies: list[bytes], headers: dict[str, str] | None = None) -> list[int]:
    app = otlp_http_app(HttpReceiverConfig(), stack.core)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://otlp") as client:
        answers = [
            await client.post("/v1/logs", content=body, headers={**PROTOBUF, **(headers or {})})
            for body in bodies
        ]
    return [answer.status_code for answer in answers]


def sample(stack: Stack, name: str, **labels: str) -> float:
    return stack.metrics.registry.get_sample_value(name, labels) or 0.0


# --- receivers ------------------------------------------------------------------------------------


async def test_request_sizes_are_observed_per_transport_and_signal(stack: Stack) -> None:
    body = genai_logs("acme", "globex").SerializeToString()

    await post_many(stack, [body, body])

    labels = {"transport": "http_protobuf", "signal": "logs"}
    assert sample(stack, "otlp_meter_receiver_request_size_bytes_count", **labels) == 2
    assert sample(stack, "otlp_meter_receiver_request_size_bytes_sum", **labels) == 2 * len(body)


async def test_a_flood_of_bad_requests_is_counted_in_full_and_logged_once(
    stack: Stack, log_lines: io.StringIO
) -> None:
    statuses = await post_many(stack, [b"\xff\xff not protobuf"] * 200)

    assert set(statuses) == {400}
    labels = {"transport": "http_protobuf", "signal": "logs", "outcome": "malformed"}
    assert sample(stack, "otlp_meter_receiver_requests_total", **labels) == 200
    [line] = events_named(log_lines, "receiver_refused")
    assert line["level"] == "warn"
    assert line["reason"] == "malformed"
    assert (line["transport"], line["signal"], line["status"]) == ("http_protobuf", "logs", 400)
    assert line["peer"] == "203.0.113.7:40000"
    assert line["error"].startswith("malformed ExportLogsServiceRequest")
    assert line["suppressed"] == 0


async def test_each_refusal_reason_gets_its_own_line(stack: Stack, log_lines: io.StringIO) -> None:
    await post_many(stack, [b"\xff\xff"])
    await post_many(stack, [b"{}"], headers={"content-type": "text/plain"})

    assert [line["reason"] for line in events_named(log_lines, "receiver_refused")] == [
        "malformed",
        "unsupported_media_type",
    ]


async def test_auth_failures_are_logged_by_the_authenticator_not_twice(
    stack: Stack, log_lines: io.StringIO
) -> None:
    auth = Authenticator(TokenSet(AuthConfig(tokens=["right-token-123"])), stack.metrics, "otlp_http")
    app = otlp_http_app(HttpReceiverConfig(), stack.core, auth)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://otlp") as client:
        refused = await client.post(
            "/v1/logs", content=b"", headers={"authorization": "Bearer wrong-token-456"}
        )

    assert refused.status_code == 401
    assert events_named(log_lines, "receiver_refused") == []
    assert len(events_named(log_lines, "auth_failed")) == 1
    assert "wrong-token-456" not in log_lines.getvalue()


# --- rules ------------------------------------------------------------------------------------------


async def test_rejected_records_are_counted_by_rule_and_reason_and_logged_as_dead_letters(
    stack: Stack, log_lines: io.StringIO
) -> None:
    await stack.pipeline.ingest_logs(mixed_logs())
    await stack.pipeline.ingest_logs(mixed_logs())

    [rejections] = [
        s
        for family in stack.metrics.registry.collect()
        for s in family.samples
        if s.name == "otlp_meter_rules_rejected_records_total"
    ]
    assert rejections.labels["reason"] == "invalid_value"
    assert rejections.value == 2
    assert sample(stack, "otlp_meter_rules_unmatched_records_total", signal="logs") == 2
    [line] = events_named(log_lines, "records_dead_lettered")  # the second one is held back
    assert (line["rule"], line["reason"], line["records"]) == (rejections.labels["rule"], "invalid_value", 1)
    assert "many" in line["detail"]


async def test_cumulative_points_are_counted_by_what_the_conversion_did(stack: Stack) -> None:
    stack.pipeline.open_streams()
    requests = metric("api.requests", "sum", {"value": 5, "attrs": {"customer": "acme"}})
    requests.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

    await stack.pipeline.ingest_metrics(metrics_request(requests))

    outcomes = {
        s.labels["outcome"]: s.value
        for family in stack.metrics.registry.collect()
        for s in family.samples
        if s.name == "otlp_meter_rules_cumulative_points_total"
    }
    assert sum(outcomes.values()) == 1


@pytest.mark.parametrize(
    ("event", "record", "reason"),
    [
        ({"subject": {"path": "attributes.customer"}}, log_record({}), "missing_value"),
        ({"data": {"n": {"expr": "null"}}}, log_record({}), "missing_value"),
        ({"data": {"n": {"path": "attributes.n", "as": "int"}}}, log_record({"n": "lots"}), "invalid_value"),
        ({"subject": {"path": "attributes.u"}}, log_record({"u": ""}), "invalid_value"),
    ],
)
def test_rejection_reasons_are_classified_from_the_engines_own_messages(
    event: dict[str, Any], record: Any, reason: str
) -> None:
    [message] = reasons(map_one(rule(event=event), record))

    assert rule_rejection_reason(message) == reason


def test_match_expression_failures_and_internal_errors_have_their_own_reason() -> None:
    [message] = reasons(map_one(rule(match={"expr": 'attributes["tokens"] > 5'}), log_record({})))

    assert rule_rejection_reason(message) == "match_error"
    assert rule_rejection_reason("internal error: KeyError: 'x'") == "internal"
    assert rule_rejection_reason("data: cannot encode as JSON: Integer exceeds 64-bit range") == "not_json"
