"""The events API, driven in-process over ASGI with the real pipeline and LMDB queue behind it.

It answers like OpenMeter's ingest API: 204 (v1 path) or 202 (v3 paths) after the events are
committed; 400 ``application/problem+json`` naming ``event[<index>].<field>`` when any event is
invalid, and then nothing of the request is stored; 503 + Retry-After when the queue cannot take it.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from otlp_meter.errors import StorageError
from otlp_meter.receivers.config import EventsApiConfig
from otlp_meter.receivers.events_api import events_api_app
from tests.unit.receivers.conftest import Stack

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"


def event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-{i}",
        "source": "billing-app",
        "type": "prompt",
        "subject": f"customer-{i}",
        "time": "2026-01-01T00:00:00.001Z",
        "data": {"tokens": 10 + i, "model": "gpt-4o"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def client_for(stack: Stack, strict: bool = False, **config: Any) -> httpx.AsyncClient:
    app = events_api_app(EventsApiConfig(**config), stack.core, strict=strict)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://events")


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(stack) as http:
        yield http


async def post(
    client: httpx.AsyncClient,
    body: Any,
    content_type: str = BATCH,
    path: str = "/api/v1/events",
    **headers: str,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(path, content=content, headers={"content-type": content_type, **headers})


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == response.status_code
    assert all(doc[key] for key in ("title", "detail", "instance"))
    return doc


# -- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (SINGLE, event(0)),
        (BATCH, [event(0)]),
        (JSON, event(0)),
        (JSON, [event(0)]),
        (f"{JSON}; charset=utf-8", [event(0)]),
    ],
)
async def test_each_content_type_is_accepted_with_204_and_the_event_queued_as_sent(
    client: httpx.AsyncClient, stack: Stack, content_type: str, body: Any
) -> None:
    response = await post(client, body, content_type)

    assert response.status_code == 204
    assert response.content == b""
    assert stack.queued() == [event(0)]


async def test_a_batch_is_queued_in_order_with_each_events_own_id_and_source(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    batch = [event(i, source=f"app-{i % 2}") for i in range(5)]

    assert (await post(client, batch)).status_code == 204

    assert stack.queued() == batch
    assert stack.count("receiver_accepted_records", transport="events_api", signal="events") == 5
    assert stack.count("receiver_requests", transport="events_api", signal="events", outcome="ok") == 1


async def test_attributes_keep_their_order_and_values_extensions_and_nulls_included(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    sent = event(0, data={"z": 1, "a": [1.5, None, {"b": True}]}, dataschema=None, region="eu", retries=3)

    assert (await post(client, sent, SINGLE)).status_code == 204

    leased = stack.queue.lease(10, 1 << 20)
    assert leased[0].payload == orjson.dumps(sent)  # compact JSON, attribute order kept


async def test_an_empty_cloudevents_batch_is_zero_events(client: httpx.AsyncClient, stack: Stack) -> None:
    assert (await post(client, [], BATCH)).status_code == 204
    assert stack.queued() == []


@pytest.mark.parametrize(
    "path", ["/events", "/openmeter/events", "/v3/openmeter/events", "/api/v3/openmeter/events"]
)
async def test_v3_paths_answer_202_like_the_v3_api(
    client: httpx.AsyncClient, stack: Stack, path: str
) -> None:
    response = await post(client, [event(0)], path=path)

    assert response.status_code == 202
    assert len(stack.queued()) == 1


async def test_a_resent_event_is_acknowledged_again_and_stored_once(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    assert (await post(client, [event(1)])).status_code == 204
    assert (await post(client, [event(1), event(2)])).status_code == 204  # a client retry, plus one

    assert [e["id"] for e in stack.queued()] == ["evt-1", "evt-2"]
    assert stack.count("queue_deduplicated_events") == 1


async def test_gzip_bodies_are_inflated(client: httpx.AsyncClient, stack: Stack) -> None:
    body = gzip.compress(orjson.dumps([event(0), event(1)]))

    response = await post(client, body, BATCH, **{"content-encoding": "gzip"})

    assert response.status_code == 204
    assert len(stack.queued()) == 2


# -- refused --------------------------------------------------------------------------------------


async def test_one_invalid_event_refuses_the_whole_batch_naming_its_index_and_field(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    batch = [event(0), event(1, subject=""), event(2)]

    response = await post(client, batch)

    assert response.status_code == 400
    doc = problem(response)
    assert "event[1].subject" in doc["detail"]
    assert doc["extensions"]["validationErrors"] == [
        {
            "code": "validation_error",
            "message": "event[1].subject: must not be empty",
            "index": 1,
            "field": "subject",
        }
    ]
    assert stack.queued() == []  # nothing of it was stored
    assert stack.count("receiver_requests", transport="events_api", signal="events", outcome="malformed") == 1


async def test_every_problem_is_listed(client: httpx.AsyncClient) -> None:
    batch = [event(0, id=..., time="yesterday"), event(1, data=[1], specversion="0.3")]

    doc = problem(await post(client, batch))

    fields = [(e["index"], e["field"]) for e in doc["extensions"]["validationErrors"]]
    assert fields == [(0, "id"), (0, "time"), (1, "specversion"), (1, "data")]


async def test_a_single_event_body_names_the_field_without_an_index(client: httpx.AsyncClient) -> None:
    doc = problem(await post(client, event(0, source="a b:c"), SINGLE))

    assert doc["detail"].startswith("invalid event: event.source: must be a URI-reference")


async def test_v3_paths_answer_problems_with_invalid_parameters_and_take_no_extensions(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    response = await post(client, [event(0, region="eu")], path="/v3/openmeter/events")

    assert response.status_code == 400
    assert problem(response)["invalid_parameters"] == [
        {
            "field": "event[0].region",
            "reason": "is not allowed (MeteringEvent has additionalProperties: false)",
            "source": "body",
        }
    ]
    assert stack.queued() == []


async def test_with_a_v3_exporter_extensions_are_refused_on_the_v1_path_too(stack: Stack) -> None:
    async with client_for(stack, strict=True) as client:
        response = await post(client, [event(0, region="eu")])

    assert response.status_code == 400
    assert problem(response)["extensions"]["validationErrors"][0]["field"] == "region"


@pytest.mark.parametrize(
    ("content_type", "body", "detail"),
    [
        (SINGLE, [event(0)], "must be one event object"),
        (BATCH, event(0), "must be an array of events"),
        (JSON, [], "no events found"),
        (JSON, b"3", "must be an event or an array"),
        (JSON, b"{not json", "not valid JSON"),
        (JSON, b'{"id": NaN}', "not valid JSON"),
        (JSON, b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bodies_of_the_wrong_shape_are_400(
    client: httpx.AsyncClient, content_type: str, body: Any, detail: str
) -> None:
    response = await post(client, body, content_type)

    assert response.status_code == 400
    assert detail in problem(response)["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-protobuf", ""])
async def test_another_content_type_is_400_as_openmeter_answers_it(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await post(client, [event(0)], content_type)

    assert response.status_code == 400
    assert "invalid content type" in problem(response)["detail"]


async def test_more_events_than_allowed_is_413_and_counted(stack: Stack) -> None:
    async with client_for(stack, max_events_per_request=3) as client:
        response = await post(client, [event(i) for i in range(4)])

    assert response.status_code == 413
    assert "max_events_per_request" in problem(response)["detail"]
    assert stack.count("receiver_limit_violations", transport="events_api", limit="events") == 1
    assert stack.queued() == []


async def test_a_body_over_the_limit_is_413_before_or_after_inflating(stack: Stack) -> None:
    big = orjson.dumps([event(i) for i in range(200)])
    async with client_for(stack, max_request_body_size=4096) as client:
        plain = await post(client, big)
        inflated = await post(client, gzip.compress(big), **{"content-encoding": "gzip"})

    assert (plain.status_code, inflated.status_code) == (413, 413)
    assert plain.headers["connection"] == "close"  # the rest of the body is not read


async def test_unknown_paths_are_404_and_other_methods_405(client: httpx.AsyncClient) -> None:
    assert (await post(client, [event(0)], path="/v1/logs")).status_code == 404
    wrong = await client.get("/api/v1/events")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


async def test_when_the_queue_cannot_take_it_the_answer_is_503_with_retry_after(
    client: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(*args: object, **kwargs: object) -> object:
        raise StorageError("disk on fire", retry_after=7.0)

    monkeypatch.setattr(stack.queue, "append", failing)

    response = await post(client, [event(0)])

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert problem(response)["detail"] == "disk on fire"


async def test_a_full_queue_is_503_and_nothing_is_half_stored(make_stack: Any) -> None:
    stack = make_stack(max_bytes=2048)
    async with client_for(stack) as client:
        first = await post(client, [event(i) for i in range(5)])
        second = await post(client, [event(i) for i in range(5, 40)])

    assert first.status_code == 204
    assert second.status_code == 503
    assert "retry-after" in second.headers
    assert [e["id"] for e in stack.queued()] == [f"evt-{i}" for i in range(5)]


async def test_shutting_down_is_503(client: httpx.AsyncClient, stack: Stack) -> None:
    stack.pipeline.close_intake()

    response = await post(client, [event(0)])

    assert response.status_code == 503
    assert (
        stack.count("receiver_requests", transport="events_api", signal="events", outcome="shutting_down")
        == 1
    )
