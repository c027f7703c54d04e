"""The shipped packs, end to end on realistic records, asserting the exact events."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otlp_meter.rules import RulesConfig, RulesEngine
from tests.unit.rules.otlp import RECEIVED, engine, events, log_record, logs_request, reasons

GENAI_RESOURCE = {"service.name": "chat-api", "service.version": "2.3.1", "customer.id": "acme-resource"}


def genai_call(**overrides: object) -> dict[str, object]:
    attrs: dict[str, object] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 350,
        "customer.id": "acme",
    }
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None}


def test_default_config_loads_every_shipped_pack_in_order() -> None:
    assert RulesEngine.from_config(RulesConfig()).rule_names == [
        "genai-input-tokens",
        "genai-output-tokens",
        "genai-token-usage-metric",
        "http-api-call",
        "http-server-requests-metric",
        "kubernetes-pod",
        "prometheus-query",
        "runai-gpu-allocation",
        "s3-unreadable-row",
        "s3-usage-row",
    ]


def test_genai_call_becomes_one_prompt_event_per_token_type() -> None:
    record = log_record(genai_call(), time=1_704_067_200_123_000_000)
    result = engine(packs=["genai"]).map_logs(logs_request(record, resource=GENAI_RESOURCE), RECEIVED)

    input_event, output_event = events(result)
    assert {k: v for k, v in input_event.items() if k != "id"} == {
        "specversion": "1.0",
        "source": "chat-api",
        "type": "prompt",
        "subject": "acme",
        "time": "2024-01-01T00:00:00.123Z",
        "data": {"tokens": 1200, "model": "gpt-4o", "provider": "openai", "type": "input"},
    }
    assert {k: v for k, v in output_event.items() if k != "id"} == {
        "specversion": "1.0",
        "source": "chat-api",
        "type": "prompt",
        "subject": "acme",
        "time": "2024-01-01T00:00:00.123Z",
        "data": {"tokens": 350, "model": "gpt-4o", "provider": "openai", "type": "output"},
    }
    assert input_event["id"] != output_event["id"]
    assert result.matched == {"genai-input-tokens": 1, "genai-output-tokens": 1}
    assert (result.records, result.unmatched, result.rejected) == (1, 0, [])


def test_genai_deprecated_attribute_names_still_count() -> None:
    record = log_record(
        genai_call(
            **{
                "gen_ai.usage.input_tokens": None,
                "gen_ai.usage.output_tokens": None,
                "gen_ai.provider.name": None,
                "gen_ai.request.model": None,
                "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": "20",  # some SDKs send strings
                "gen_ai.system": "anthropic",
            }
        )
    )
    result = engine(packs=["genai"]).map_logs(logs_request(record), RECEIVED)
    assert [e["data"] for e in events(result)] == [
        {"tokens": 10, "model": "gpt-4o-2024-08-06", "provider": "anthropic", "type": "input"},
        {"tokens": 20, "model": "gpt-4o-2024-08-06", "provider": "anthropic", "type": "output"},
    ]


def test_genai_current_names_win_over_deprecated_ones() -> None:
    record = log_record(genai_call(**{"gen_ai.usage.prompt_tokens": 1, "gen_ai.system": "old"}))
    result = engine(packs=["genai"]).map_logs(logs_request(record), RECEIVED)
    assert [e["data"]["tokens"] for e in events(result)] == [1200, 350]
    assert {e["data"]["provider"] for e in events(result)} == {"openai"}


def test_genai_subject_falls_back_to_resource_attributes() -> None:
    record = log_record(genai_call(**{"customer.id": None}))
    result = engine(packs=["genai"]).map_logs(logs_request(record, resource=GENAI_RESOURCE), RECEIVED)
    assert {e["subject"] for e in events(result)} == {"acme-resource"}

    record = log_record(genai_call(**{"customer.id": None, "openmeter.subject": "om-subject"}))
    result = engine(packs=["genai"]).map_logs(logs_request(record, resource=GENAI_RESOURCE), RECEIVED)
    assert {e["subject"] for e in events(result)} == {"om-subject"}


def test_genai_output_only_record_makes_only_the_output_event() -> None:
    record = log_record(genai_call(**{"gen_ai.usage.input_tokens": None}))
    result = engine(packs=["genai"]).map_logs(logs_request(record), RECEIVED)
    assert [e["data"]["type"] for e in events(result)] == ["output"]


def test_genai_model_and_provider_are_optional() -> None:
    record = log_record({"gen_ai.usage.input_tokens": 5, "customer.id": "acme"})
    result = engine(packs=["genai"]).map_logs(logs_request(record), RECEIVED)
    assert [e["data"] for e in events(result)] == [{"tokens": 5, "type": "input"}]


def test_genai_call_without_subject_is_rejected_per_event() -> None:
    request = logs_request(log_record(genai_call(**{"customer.id": None})))
    result = engine(packs=["genai"]).map_logs(request, RECEIVED)
    subject_paths = (
        "attributes.openmeter.subject | attributes.customer.id | "
        "resource.attributes.openmeter.subject | resource.attributes.customer.id"
    )
    assert reasons(result) == [f"subject: no value at {subject_paths}"] * 2
    assert [r.rule for r in result.rejected] == ["genai-input-tokens", "genai-output-tokens"]
    assert ExportLogsServiceRequest.FromString(result.rejected[0].original) == request


def test_http_api_call_from_attributes() -> None:
    record = log_record(
        {"method": "GET", "path": "/api/v1/items", "user": "customer-7", "duration": 42, "status": 200}
    )
    request = logs_request(record, resource={"service.name": "gateway"})
    [event] = events(engine(packs=["http"]).map_logs(request, RECEIVED))
    assert {k: v for k, v in event.items() if k != "id"} == {
        "specversion": "1.0",
        "source": "gateway",
        "type": "api-call",
        "subject": "customer-7",
        "time": "2024-01-01T00:00:00Z",
        "data": {"count": 1, "duration": 42, "method": "GET", "path": "/api/v1/items"},
    }


def test_http_api_call_from_a_map_body() -> None:
    body = {"method": "POST", "path": "/orders", "user": "customer-8", "duration": "40.0"}
    [event] = events(engine(packs=["http"]).map_logs(logs_request(log_record(body=body)), RECEIVED))
    assert event["subject"] == "customer-8"
    assert event["source"] == "otlp-meter"  # no service.name on the resource
    assert event["data"] == {"count": 1, "duration": 40, "method": "POST", "path": "/orders"}


def test_http_duration_keeps_fractions_and_may_be_absent() -> None:
    base = {"method": "GET", "path": "/", "user": "u"}
    result = engine(packs=["http"]).map_logs(
        logs_request(log_record({**base, "duration": 12.5}), log_record(base)), RECEIVED
    )
    assert [e["data"] for e in events(result)] == [
        {"count": 1, "duration": 12.5, "method": "GET", "path": "/"},
        {"count": 1, "method": "GET", "path": "/"},
    ]


def test_http_needs_method_path_and_user() -> None:
    records = [
        log_record({"method": "GET", "path": "/"}),
        log_record({"path": "/", "user": "u"}),
        log_record(body="GET / by u"),
    ]
    result = engine(packs=["http"]).map_logs(logs_request(*records), RECEIVED)
    assert (result.events, result.records, result.unmatched) == ([], 3, 3)


def test_http_bad_duration_is_rejected_with_the_reason() -> None:
    record = log_record({"method": "GET", "path": "/", "user": "u", "duration": "slow"})
    result = engine(packs=["http"]).map_logs(logs_request(record), RECEIVED)
    assert reasons(result) == ["data.duration: cannot convert 'slow' to number"]


def test_packs_leave_unrelated_records_unmatched() -> None:
    request = logs_request(log_record({"http.route": "/"}, body="hello"), log_record())
    result = RulesEngine.from_config(RulesConfig()).map_logs(request, RECEIVED)
    assert (result.events, result.rejected, result.records, result.unmatched) == ([], [], 2, 2)
