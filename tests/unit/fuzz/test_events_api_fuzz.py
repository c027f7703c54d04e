"""Fuzz the events API through its ASGI app, and hold it to the strict fake OpenMeter.

Properties: every body gets 204, 400 or 413 (never an exception, never "internal"); and a body is
accepted exactly when OpenMeter (the fake, which encodes its rules) would accept it, so the
collector never acknowledges what OpenMeter will refuse, nor refuses what it would take.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from otlp_meter.receivers.config import EventsApiConfig
from otlp_meter.receivers.events_api import events_api_app
from tests.support.fake_openmeter import FakeOpenMeter, _Rejected
from tests.unit.fuzz.harness import FuzzStack, dumps, fuzz_settings, json_values, mutated

CONTENT_TYPES = ["application/cloudevents+json", "application/cloudevents-batch+json", "application/json"]
EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "svc",
    "type": "prompt",
    "subject": "customer-1",
    "time": "2026-01-01T00:00:00Z",
    "data": {"tokens": 3, "model": "m"},
}
SEEDS: list[Any] = [EVENT, [EVENT, {**EVENT, "id": "e-2", "region": "eu"}], []]
FAKES = {"v1": FakeOpenMeter(api="v1", allow_content_type_params=True), "v3": FakeOpenMeter(api="v3")}
PATHS = {"v1": "/api/v1/events", "v3": "/v3/openmeter/events"}


def openmeter_accepts(api: str, content_type: str, body: bytes) -> bool:
    try:
        FAKES[api]._decode(content_type, body)
    except _Rejected:
        return False
    return True


def check(stack: FuzzStack, api: str, body: bytes, content_type: str, max_events: int = 10_000) -> int:
    app = events_api_app(
        EventsApiConfig(max_request_body_size=64 * 1024, max_events_per_request=max_events), stack.core
    )
    internal = stack.internal_errors()
    status, headers, answer = stack.run(app, PATHS[api], body, {"content-type": content_type})
    assert status in {202 if api == "v3" else 204, 400, 413}, (status, answer[:300])
    if status >= 400:
        assert headers["content-type"] == "application/problem+json"
        assert orjson.loads(answer)["status"] == status
    assert stack.internal_errors() == internal
    return status


@fuzz_settings(400)
@given(
    seed=st.sampled_from(SEEDS),
    content_type=st.sampled_from(CONTENT_TYPES),
    api=st.sampled_from(["v1", "v3"]),
    data=st.data(),
)
def test_mutated_events_are_accepted_exactly_when_openmeter_accepts_them(
    fuzz_stack: FuzzStack, seed: Any, content_type: str, api: str, data: st.DataObject
) -> None:
    body = dumps(data.draw(mutated(seed)))

    status = check(fuzz_stack, api, body, content_type)

    assert (status < 300) == openmeter_accepts(api, content_type, body)


@fuzz_settings(150)
@given(document=json_values, content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_json_gets_a_status_table_answer(
    fuzz_stack: FuzzStack, document: Any, content_type: str
) -> None:
    body = dumps(document)

    status = check(fuzz_stack, "v1", body, content_type)

    assert (status < 300) == openmeter_accepts("v1", content_type, body)


@fuzz_settings(150)
@given(body=st.binary(max_size=1024), content_type=st.sampled_from([*CONTENT_TYPES, "text/plain", ""]))
def test_random_bytes_get_a_status_table_answer(
    fuzz_stack: FuzzStack, body: bytes, content_type: str
) -> None:
    check(fuzz_stack, "v1", body, content_type)
