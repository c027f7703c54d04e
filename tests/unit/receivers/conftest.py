"""A real receiver stack for the transport tests: rules engine, pipeline and LMDB queue in tmp_path.

``make_stack(**queue_overrides)`` builds one; ``stack`` is the default (shipped packs genai and
http, plus one user rule for the ``api.requests`` counter so that metrics make events too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.pipeline import Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from otlp_meter.telemetry.metrics import Metrics
from tests.support.rules import PER_CUSTOMER_REQUESTS
from tests.unit.rules.otlp import log_record, logs_request, metric, metrics_request

COUNTER_RULE = PER_CUSTOMER_REQUESTS


def genai_logs(*customers: str, tokens: Any = 10) -> ExportLogsServiceRequest:
    """One GenAI log record per customer, each with input tokens only (one event per record)."""
    records = [
        log_record({"gen_ai.usage.input_tokens": tokens, "openmeter.subject": customer, "n": i})
        for i, customer in enumerate(customers)
    ]
    return logs_request(*records, resource={"service.name": "chat-api"})


def mixed_logs() -> ExportLogsServiceRequest:
    """Three records: one good GenAI record, one the genai pack rejects, one no rule matches."""
    return logs_request(
        log_record({"gen_ai.usage.input_tokens": 5, "openmeter.subject": "acme"}),
        log_record({"gen_ai.usage.input_tokens": "many", "openmeter.subject": "acme"}),
        log_record({"unrelated": True}),
        resource={"service.name": "chat-api"},
    )


def counter_metrics(*customers: str) -> ExportMetricsServiceRequest:
    """An ``api.requests`` sum with one point per customer (the user rule makes one event each)."""
    points = [{"value": i + 1, "attrs": {"customer": c}} for i, c in enumerate(customers)]
    return metrics_request(metric("api.requests", "sum", *points), resource={"service.name": "api"})


@dataclass
class Stack:
    """Everything behind a transport, real and wired as the service wires it."""

    queue: LmdbQueue
    pipeline: Pipeline
    core: ReceiverCore
    metrics: Metrics

    def count(self, name: str, **labels: str) -> float:
        """A counter's value (0 when never incremented); ``name`` without ``otlp_meter_``/``_total``."""
        value = self.metrics.registry.get_sample_value(f"otlp_meter_{name}_total", labels)
        return value or 0.0

    def queued(self) -> list[dict[str, Any]]:
        """The events in the queue, oldest first, as JSON objects (leased and released again)."""
        leased = self.queue.lease(10_000, 1 << 30)
        self.queue.release([event.seq for event in leased])
        return [orjson.loads(event.payload) for event in leased]


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    queues: list[LmdbQueue] = []

    def factory(directory: Path | None = None, **queue_overrides: Any) -> Stack:
        settings: dict[str, Any] = {"directory": directory or tmp_path / f"q{len(queues)}", "sync": False}
        settings.update(queue_overrides)
        queue = LmdbQueue(QueueConfig.model_validate(settings))
        queue.open()
        queues.append(queue)
        metrics = Metrics()
        rules = RulesConfig(packs=["genai", "http"], inline=[RuleModel.model_validate(COUNTER_RULE)])
        pipeline = Pipeline(RulesEngine.from_config(rules), queue, metrics)
        return Stack(queue, pipeline, ReceiverCore(pipeline, metrics), metrics)

    yield factory
    for queue in queues:
        queue.close()


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack()
