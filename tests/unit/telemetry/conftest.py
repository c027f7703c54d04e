"""A real stack for the instrumentation tests: rules engine, pipeline and LMDB queue in tmp_path,
built like the receivers' tests build theirs (same packs and user rule)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_meter.pipeline import Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine
from otlp_meter.telemetry.metrics import Metrics
from tests.unit.receivers.conftest import COUNTER_RULE, Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    queue = LmdbQueue(QueueConfig(directory=tmp_path / "queue", sync=False))
    queue.open()
    metrics = Metrics(process=False)
    rules = RulesConfig(packs=["genai", "http"], inline=[RuleModel.model_validate(COUNTER_RULE)])
    pipeline = Pipeline(RulesEngine.from_config(rules), queue, metrics)
    yield Stack(queue, pipeline, ReceiverCore(pipeline, metrics), metrics)
    queue.close()
