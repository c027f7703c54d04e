"""Fuzz OTLP/HTTP (JSON and protobuf) through the ASGI app, with the real rules, pipeline and queue.

Property: whatever the body, the answer is one of the status table's (200, 400, 413, 415), its body
decodes in the request's encoding, and nothing is refused as "internal" (an exception of ours).
"""

from __future__ import annotations

import gzip

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from otlp_meter.receivers.config import HttpReceiverConfig
from otlp_meter.receivers.otlp_http import otlp_http_app
from tests.unit.fuzz.harness import FuzzStack, dumps, fuzz_settings, json_values, mutated, mutated_bytes
from tests.unit.receivers.conftest import counter_metrics, genai_logs, mixed_logs

ANSWERS = {200, 400, 413, 415}
LIMIT = 64 * 1024
SEEDS: dict[str, list[Message]] = {
    "/v1/logs": [genai_logs("acme", "globex"), mixed_logs()],
    "/v1/metrics": [counter_metrics("acme", "globex")],
}
JSON_SEEDS = [
    (path, orjson.loads(json_format.MessageToJson(seed, use_integers_for_enums=True)))
    for path, seeds in SEEDS.items()
    for seed in seeds
]
PROTO_SEEDS = [(path, seed.SerializeToString()) for path, seeds in SEEDS.items() for seed in seeds]


def check(stack: FuzzStack, path: str, body: bytes, content_type: str, **headers: str) -> int:
    app = otlp_http_app(HttpReceiverConfig(max_request_body_size=LIMIT), stack.core)
    internal = stack.internal_errors()
    status, answer_headers, answer = stack.run(app, path, body, {"content-type": content_type, **headers})
    assert status in ANSWERS, (status, answer[:300])
    if content_type == "application/x-protobuf":
        assert answer_headers["content-type"] == "application/x-protobuf"
        if status == 200:
            response = ExportLogsServiceResponse if path == "/v1/logs" else ExportMetricsServiceResponse
            response.FromString(answer)
        else:
            assert status_pb2.Status.FromString(answer).message
    else:
        decoded = orjson.loads(answer)
        assert isinstance(decoded, dict)
        if status != 200:
            assert decoded["message"]
    assert stack.internal_errors() == internal
    return status


@fuzz_settings(300)
@given(seed=st.sampled_from(JSON_SEEDS), data=st.data())
def test_mutated_otlp_json_gets_a_status_table_answer(
    fuzz_stack: FuzzStack, seed: tuple[str, object], data: st.DataObject
) -> None:
    path, document = seed
    body = dumps(data.draw(mutated(document)))

    check(fuzz_stack, path, body, "application/json")


@fuzz_settings(150)
@given(path=st.sampled_from(["/v1/logs", "/v1/metrics", "/v1/traces"]), document=json_values)
def test_arbitrary_json_gets_a_status_table_answer(
    fuzz_stack: FuzzStack, path: str, document: object
) -> None:
    check(fuzz_stack, path, dumps(document), "application/json")


@fuzz_settings(300)
@given(seed=st.sampled_from(PROTO_SEEDS), data=st.data())
def test_damaged_protobuf_gets_a_status_table_answer(
    fuzz_stack: FuzzStack, seed: tuple[str, bytes], data: st.DataObject
) -> None:
    path, wire = seed
    body = data.draw(mutated_bytes(wire))

    check(fuzz_stack, path, body, "application/x-protobuf")


@fuzz_settings(150)
@given(
    path=st.sampled_from(["/v1/logs", "/v1/metrics"]),
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(["application/x-protobuf", "application/json", "text/plain"]),
    gzipped=st.booleans(),
)
def test_random_bytes_get_a_status_table_answer(
    fuzz_stack: FuzzStack, path: str, body: bytes, content_type: str, gzipped: bool
) -> None:
    if gzipped:
        check(fuzz_stack, path, gzip.compress(body), content_type, **{"content-encoding": "gzip"})
    else:
        check(fuzz_stack, path, body, content_type)
