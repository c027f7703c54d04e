"""What the fuzz tests share: one real receiver stack per module (rules, pipeline, LMDB queue), an
event loop to drive the ASGI apps on, a direct ASGI call, and strategies for JSON and mutations.

Sizes are CI-friendly (a few hundred examples per test); ``FUZZ_EXAMPLES`` scales them up for a
longer local run. Every example must get an answer from the status table, never an exception,
never the "internal" refusal (our bug), and within the deadline (a hang is a failure).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from otlp_meter.http_server import AsgiApp, Message
from otlp_meter.pipeline import Pipeline
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.receivers.config import LimitsConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.rules import RulesConfig, RulesEngine
from otlp_meter.telemetry.metrics import Metrics

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for ``examples`` (times FUZZ_EXAMPLES) with a 2 s per-example deadline."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=timedelta(seconds=2),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@dataclass
class FuzzStack:
    loop: asyncio.AbstractEventLoop
    queue: LmdbQueue
    core: ReceiverCore
    metrics: Metrics

    def run(
        self, app: AsgiApp, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        return self.loop.run_until_complete(call(app, path, body, headers))

    def internal_errors(self) -> float:
        """Requests refused as "internal" (a bug of ours), over every transport."""
        total = 0.0
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if (
                    sample.name == "otlp_meter_receiver_requests_total"
                    and sample.labels.get("outcome") == "internal"
                ):
                    total += sample.value
        return total


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    directory: Path = tmp_path_factory.mktemp("fuzz-queue")
    queue = LmdbQueue(QueueConfig(directory=directory, sync=False, max_bytes=256 * 1024 * 1024))
    queue.open()
    metrics = Metrics()
    engine = RulesEngine.from_config(RulesConfig(packs=["genai", "http"]))
    pipeline = Pipeline(engine, queue, metrics)
    core = ReceiverCore(
        pipeline, metrics, LimitsConfig(max_attributes_per_record=64, max_attribute_value_size=256)
    )
    loop = asyncio.new_event_loop()
    try:
        yield FuzzStack(loop, queue, core, metrics)
    finally:
        queue.close()
        loop.close()


async def call(
    app: AsgiApp, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One POST straight into an ASGI app; returns (status, headers, body)."""
    delivered = False
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
    }
    await app(scope, receive, send)
    start, *bodies = sent
    response_headers = {k.decode(): v.decode("latin-1") for k, v in start["headers"]}
    return int(start["status"]), response_headers, b"".join(m.get("body", b"") for m in bodies)


def dumps(document: Any) -> bytes:
    """JSON text of ``document``; integers of any size are written as they are (orjson cannot)."""
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "1", "-1", "18446744073709551616", "AAEC", "0102", "nan", "2026-01-01T00:00:00Z"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with some values replaced by arbitrary JSON, some keys dropped or added."""
    if draw(st.integers(0, 11)) == 0:
        return draw(json_values)
    if isinstance(document, dict):
        out = {k: draw(mutated(v)) for k, v in document.items() if draw(st.integers(0, 15)) != 0}
        if draw(st.integers(0, 7)) == 0:
            out[draw(st.text(max_size=12))] = draw(json_values)
        return out
    if isinstance(document, list):
        items = [draw(mutated(v)) for v in document]
        if items and draw(st.integers(0, 7)) == 0:
            items.append(draw(mutated(document[0])))
        return items
    return document


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, cut, or inserted (protobuf wire damage)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del out[at : at + draw(st.integers(1, 8))]
        elif action == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at:]
    return bytes(out)
