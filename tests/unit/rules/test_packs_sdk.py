"""The genai and http packs on real SDK output: logs and metrics bill the same events."""

from __future__ import annotations

from typing import Any

from otlp_meter.rules import RulesEngine
from otlp_meter.rules.delta import StreamStates
from tests.unit.rules.otlp import RECEIVED, T0, engine, events
from tests.unit.rules.sdk import SdkApp

CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "server.address": "api.openai.com",
}


class Collector:
    """The packs with one set of stream states, as the pipeline runs them across exports."""

    def __init__(self, *packs: str, initial_value: str = "keep") -> None:
        self.engine: RulesEngine = engine(packs=packs)
        self.engine.initial_value = initial_value  # type: ignore[assignment]
        self.states = StreamStates(None, started_ns=T0)

    def metrics(self, app: SdkApp) -> list[dict[str, Any]]:
        result = self.engine.map_metrics(app.export_metrics(), RECEIVED, self.states)
        assert not result.rejected, result.rejected
        return events(result)

    def logs(self, app: SdkApp) -> list[dict[str, Any]]:
        result = self.engine.map_logs(app.export_logs(), RECEIVED)
        assert not result.rejected, result.rejected
        return events(result)


def token_usage(app: SdkApp) -> Any:
    return app.meters.get_meter("opentelemetry.instrumentation.openai_v2").create_histogram(
        "gen_ai.client.token.usage",
        unit="{token}",
        description="Measures number of input and output tokens used",
    )


def test_token_usage_histogram_bills_prompt_events_per_model_provider_and_type() -> None:
    app = SdkApp({"service.name": "chat-api", "customer.id": "acme"})
    histogram, collector = token_usage(app), Collector("genai")
    histogram.record(1200, {**CHAT, "gen_ai.token.type": "input"})
    histogram.record(300, {**CHAT, "gen_ai.token.type": "input"})
    histogram.record(350, {**CHAT, "gen_ai.token.type": "output"})

    first = collector.metrics(app)
    assert [(e["type"], e["subject"], e["source"], e["data"]) for e in first] == [
        (
            "prompt",
            "acme",
            "chat-api",
            {"tokens": 1500, "model": "gpt-4o", "provider": "openai", "type": "input"},
        ),
        (
            "prompt",
            "acme",
            "chat-api",
            {"tokens": 350, "model": "gpt-4o", "provider": "openai", "type": "output"},
        ),
    ]

    histogram.record(100, {**CHAT, "gen_ai.token.type": "input"})
    second = collector.metrics(app)  # cumulative again: only the increase is billed
    assert [e["data"]["tokens"] for e in second] == [100]
    assert collector.metrics(app) == []  # nothing new


def test_token_usage_histogram_with_delta_temporality_passes_through() -> None:
    app = SdkApp({"service.name": "chat-api", "customer.id": "acme"}, temporality="delta")
    histogram, collector = token_usage(app), Collector("genai", initial_value="drop")
    histogram.record(40, {**CHAT, "gen_ai.token.type": "output"})
    assert [e["data"]["tokens"] for e in collector.metrics(app)] == [40]


def test_logs_and_metrics_report_the_same_tokens_as_the_same_events() -> None:
    app = SdkApp({"service.name": "chat-api", "customer.id": "acme"})
    collector = Collector("genai")
    attributes: dict[str, Any] = {
        **CHAT,
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 350,
    }
    app.loggers.get_logger("opentelemetry.instrumentation.openai_v2").emit(
        event_name="gen_ai.client.inference.operation.details", attributes=attributes
    )
    histogram = token_usage(app)
    histogram.record(1200, {**CHAT, "gen_ai.token.type": "input"})
    histogram.record(350, {**CHAT, "gen_ai.token.type": "output"})

    def shape(e: dict[str, Any]) -> tuple[Any, ...]:
        return e["type"], e["subject"], e["source"], e["data"]

    assert [shape(e) for e in collector.logs(app)] == [shape(e) for e in collector.metrics(app)]


def test_token_usage_without_a_subject_is_rejected_so_nothing_goes_unbilled() -> None:
    app = SdkApp({"service.name": "chat-api"})
    token_usage(app).record(5, {**CHAT, "gen_ai.token.type": "input"})
    result = engine(packs=["genai"]).map_metrics(
        app.export_metrics(), RECEIVED, StreamStates(None, started_ns=0)
    )
    assert [r.rule for r in result.rejected] == ["genai-token-usage-metric"]
    assert result.rejected[0].reason.startswith("subject: no value at attributes.openmeter.subject")


def request_duration(app: SdkApp) -> Any:
    return app.meters.get_meter("opentelemetry.instrumentation.asgi").create_histogram(
        "http.server.request.duration", unit="s", description="Duration of HTTP server requests."
    )


def test_http_server_request_duration_counts_api_calls_per_route_method_and_status() -> None:
    app = SdkApp({"service.name": "gateway", "customer.id": "customer-7"})
    histogram, collector = request_duration(app), Collector("http")
    get_items = {"http.request.method": "GET", "http.route": "/items", "http.response.status_code": 200}
    histogram.record(0.012, get_items)
    histogram.record(0.020, get_items)
    histogram.record(0.5, {**get_items, "http.response.status_code": 500})

    assert [(e["type"], e["subject"], e["data"]) for e in collector.metrics(app)] == [
        ("api-call", "customer-7", {"count": 2, "method": "GET", "route": "/items", "status": 200}),
        ("api-call", "customer-7", {"count": 1, "method": "GET", "route": "/items", "status": 500}),
    ]
    histogram.record(0.01, get_items)
    assert [e["data"]["count"] for e in collector.metrics(app)] == [1]


def test_http_metric_points_without_a_subject_are_not_usage() -> None:
    app = SdkApp({"service.name": "gateway"})
    request_duration(app).record(0.1, {"http.request.method": "GET", "http.route": "/"})
    result = Collector("http").engine.map_metrics(
        app.export_metrics(), RECEIVED, StreamStates(None, started_ns=0)
    )
    assert (result.events, result.rejected, result.unmatched) == ([], [], 1)


def test_http_access_log_from_the_sdk() -> None:
    app = SdkApp({"service.name": "gateway"})
    app.loggers.get_logger("access").emit(
        body="GET /api/v1/items",
        attributes={"method": "GET", "path": "/api/v1/items", "user": "u7", "duration": 42},
    )
    [event] = Collector("http").logs(app)
    assert (event["subject"], event["data"]) == (
        "u7",
        {"count": 1, "duration": 42, "method": "GET", "path": "/api/v1/items"},
    )
