"""The fake OpenMeter answers like OpenMeter: what it accepts, what it refuses and how, and its test hooks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_openmeter import FakeOpenMeter, rfc3339_problem

BATCH = "application/cloudevents-batch+json"
SINGLE = "application/cloudevents+json"
AUTH = {"Authorization": "Bearer test-token"}
_MISSING: Any = object()  # an override that removes the attribute


def event(n: int = 1, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-{n}",
        "source": "otlp-meter/test",
        "type": "api-calls",
        "subject": "customer-1",
        "time": "2024-05-01T12:00:00.123Z",
        "data": {"tokens": n},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _MISSING}


@pytest.fixture
def fake() -> Iterator[FakeOpenMeter]:
    with FakeOpenMeter() as server:
        yield server


@pytest.fixture
def fake_v3() -> Iterator[FakeOpenMeter]:
    with FakeOpenMeter(api="v3") as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def post(
    client: httpx.Client,
    fake: FakeOpenMeter,
    body: Any,
    content_type: str = BATCH,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        fake.events_url, content=content, headers={"Content-Type": content_type, **AUTH, **(headers or {})}
    )


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    doc: dict[str, Any] = response.json()
    assert doc["status"] == response.status_code
    assert doc["title"]
    assert doc["instance"]
    assert isinstance(doc["detail"], str)
    return doc


# -- accepted ---------------------------------------------------------------------------------------


def test_v1_accepts_single_batch_and_json_bodies(fake: FakeOpenMeter, client: httpx.Client) -> None:
    assert fake.url == f"http://127.0.0.1:{fake.port}"
    responses = [
        post(client, fake, event(1), SINGLE),
        post(client, fake, [event(2), event(3)], BATCH),
        post(client, fake, event(4), "application/json"),
        post(client, fake, [event(5)], "application/json"),
    ]
    assert [r.status_code for r in responses] == [204] * 4
    assert all(r.content == b"" for r in responses)
    assert [e["id"] for e in fake.events] == ["evt-1", "evt-2", "evt-3", "evt-4", "evt-5"]
    assert [[e["id"] for e in b] for b in fake.batches] == [
        ["evt-1"],
        ["evt-2", "evt-3"],
        ["evt-4"],
        ["evt-5"],
    ]
    assert fake.events[0] == event(1)
    assert type(fake.events[0]) is dict
    recorded = fake.requests[1]
    assert (recorded.method, recorded.path, recorded.status) == ("POST", "/api/v1/events", 204)
    assert recorded.headers["content-type"] == BATCH
    assert recorded.json() == [event(2), event(3)]


def test_v3_is_konnect_shaped_and_answers_202(fake_v3: FakeOpenMeter, client: httpx.Client) -> None:
    assert fake_v3.url == f"http://127.0.0.1:{fake_v3.port}/v3/openmeter"
    response = client.post(fake_v3.url + "/events", json=[event(1), event(2)], headers=AUTH)
    assert response.status_code == 202
    assert response.content == b""
    assert len(fake_v3.events) == 2


def test_accepts_every_valid_shape_of_optional_attributes(fake: FakeOpenMeter, client: httpx.Client) -> None:
    batch = [
        event(1, time=None, data=None, datacontenttype=None, dataschema=None),
        event(2, time=_MISSING, data=_MISSING),
        event(3, time="2024-05-01T12:00:00Z", datacontenttype="application/json"),
        event(4, time="2024-05-01T12:00:00.123456789+05:30", dataschema="https://example.com/schema"),
        event(5, time="2024-02-29T23:59:59-08:00", source="//k8s/ns/pod%20a", data={}),
        event(6, tenant="acme", region2="eu", seq=7, flag=True, gone=None, whole=3.0),
    ]
    assert post(client, fake, batch).status_code == 204
    assert len(fake.events) == 6


def test_an_empty_cloudevents_batch_is_accepted_as_zero_events(
    fake: FakeOpenMeter, client: httpx.Client
) -> None:
    assert post(client, fake, []).status_code == 204  # OpenMeter ingests nothing and says 204
    assert fake.events == []
    assert fake.batches == [[]]


def test_a_chunked_body_is_read(fake: FakeOpenMeter, client: httpx.Client) -> None:
    body = json.dumps([event(1), event(2)]).encode()
    chunks = iter([body[:10], body[10:]])
    response = client.post(fake.events_url, content=chunks, headers={"Content-Type": BATCH, **AUTH})
    assert response.status_code == 204
    assert len(fake.events) == 2


def test_no_token_means_no_authorization_needed(client: httpx.Client) -> None:
    with FakeOpenMeter(token=None) as open_fake:
        response = client.post(open_fake.events_url, json=event(1))
        assert response.status_code == 204


# -- refused before the body ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/event", "/api/v1/events/", "/v3/openmeter/events", "/"])
def test_unknown_path_is_404(fake: FakeOpenMeter, client: httpx.Client, path: str) -> None:
    response = client.post(f"http://127.0.0.1:{fake.port}{path}", json=event(1), headers=AUTH)
    assert response.status_code == 404
    assert "no route" in problem(response)["detail"]


def test_v1_path_on_a_v3_fake_is_404(fake_v3: FakeOpenMeter, client: httpx.Client) -> None:
    response = client.post(f"http://127.0.0.1:{fake_v3.port}/api/v1/events", json=event(1), headers=AUTH)
    assert response.status_code == 404
    assert fake_v3.events == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_405(fake: FakeOpenMeter, client: httpx.Client, method: str) -> None:
    response = client.request(method, fake.events_url, headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    if method != "HEAD":
        problem(response)


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic dGVzdC10b2tlbg==", "test-token", "Bearer"]
)
def test_missing_or_wrong_token_is_401(
    fake: FakeOpenMeter, client: httpx.Client, authorization: str | None
) -> None:
    headers = {"Content-Type": BATCH} | ({"Authorization": authorization} if authorization else {})
    response = client.post(fake.events_url, content=b"not even json", headers=headers)
    assert response.status_code == 401
    assert problem(response)["detail"] == "Invalid credentials"
    assert fake.events == []
    assert fake.requests[0].status == 401


def test_v3_401_is_kong_shaped(fake_v3: FakeOpenMeter, client: httpx.Client) -> None:
    doc = problem(client.post(fake_v3.events_url, json=event(1)))
    assert doc["type"] == "https://httpstatuses.com/401"
    assert doc["instance"].startswith("kong:trace:")


# -- content type -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-ndjson", "application/cloudevents", ""]
)
def test_unsupported_content_type_is_400_like_openmeter(
    fake: FakeOpenMeter, client: httpx.Client, content_type: str
) -> None:
    response = post(client, fake, [event(1)], content_type)
    assert response.status_code == 400
    assert problem(response)["detail"].startswith("invalid content type")
    assert fake.events == []


def test_v1_compares_content_type_exactly_like_openmeter_v1(
    fake: FakeOpenMeter, client: httpx.Client
) -> None:
    response = post(client, fake, [event(1)], f"{BATCH}; charset=utf-8")
    assert response.status_code == 400
    assert "invalid content type" in problem(response)["detail"]


def test_v3_ignores_content_type_parameters(fake_v3: FakeOpenMeter, client: httpx.Client) -> None:
    assert post(client, fake_v3, [event(1)], f"{BATCH}; charset=utf-8").status_code == 202
    assert post(client, fake_v3, event(2), "Application/JSON ; charset=UTF-8").status_code == 202


def test_content_type_parameters_can_be_allowed_on_v1(client: httpx.Client) -> None:
    with FakeOpenMeter(allow_content_type_params=True) as lenient:
        assert post(client, lenient, [event(1)], f"{BATCH}; charset=utf-8").status_code == 204


# -- body -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"{not json", BATCH, "not valid JSON"),
        (b"[]  trailing", BATCH, "not valid JSON"),
        (b'[{"id": NaN}]', BATCH, "not valid JSON"),
        (b"\xff\xfe[]", BATCH, "not valid JSON"),
        (b"", SINGLE, "not valid JSON"),
        (b"[]", SINGLE, "must be one event object, got array"),
        (json.dumps(event(1)).encode(), BATCH, "must be an array of events, got object"),
        (b'"event"', "application/json", "got string"),
        (b"[]", "application/json", "no events found"),
    ],
)
def test_malformed_body_is_400(
    fake: FakeOpenMeter, client: httpx.Client, body: bytes, content_type: str, fragment: str
) -> None:
    response = post(client, fake, body, content_type)
    assert response.status_code == 400
    assert fragment in problem(response)["detail"]
    assert fake.events == []


INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing id", {"id": _MISSING}, "id", "is required"),
    ("empty source", {"source": ""}, "source", "must not be empty"),
    ("numeric type", {"type": 7}, "type", "must be a string, got number"),
    ("missing subject", {"subject": _MISSING}, "subject", "is required"),
    ("null subject", {"subject": None}, "subject", "must be a string, got null"),
    ("old specversion", {"specversion": "0.3"}, "specversion", 'must be "1.0"'),
    ("missing specversion", {"specversion": _MISSING}, "specversion", "is required"),
    ("source control char", {"source": "a\nb"}, "source", "control character"),
    ("source bad escape", {"source": "svc%zz"}, "source", "percent-escape"),
    ("source leading colon", {"source": ":svc"}, "source", "missing scheme"),
    ("time with space", {"time": "2024-05-01 12:00:00Z"}, "time", "RFC 3339"),
    ("time without zone", {"time": "2024-05-01T12:00:00"}, "time", "RFC 3339"),
    ("time lowercase z", {"time": "2024-05-01T12:00:00z"}, "time", "RFC 3339"),
    ("time date only", {"time": "2024-05-01"}, "time", "RFC 3339"),
    ("time epoch number", {"time": 1714564800}, "time", "must be a string, got number"),
    ("time impossible day", {"time": "2023-02-29T00:00:00Z"}, "time", "valid RFC 3339"),
    ("time hour 24", {"time": "2024-05-01T24:00:00Z"}, "time", "valid RFC 3339"),
    ("time offset 24h", {"time": "2024-05-01T12:00:00+24:00"}, "time", "valid RFC 3339"),
    ("time offset no colon", {"time": "2024-05-01T12:00:00+0100"}, "time", "RFC 3339"),
    ("data string", {"data": "tokens=5"}, "data", "must be a JSON object, got string"),
    ("data array", {"data": [1, 2]}, "data", "must be a JSON object, got array"),
    ("data number", {"data": 5}, "data", "must be a JSON object, got number"),
    ("datacontenttype text", {"datacontenttype": "text/plain"}, "datacontenttype", "application/json"),
    ("dataschema relative", {"dataschema": "schema.json"}, "dataschema", "absolute URI"),
    ("extension upper case", {"tenantId": "x"}, "tenantId", "only a-z and 0-9"),
    ("data_base64", {"data_base64": "e30="}, "data_base64", "only a-z and 0-9"),
    ("extension object", {"tenant": {"id": 1}}, "tenant", "got object"),
    ("extension fraction", {"ratio": 0.5}, "ratio", "32-bit integer"),
    ("extension overflow", {"big": 2**31}, "big", "32-bit integer"),
    ("extension huge", {"huge": 10**400}, "huge", "32-bit integer"),
]


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_an_invalid_event_refuses_the_whole_batch_naming_index_and_field(
    fake: FakeOpenMeter, client: httpx.Client, overrides: dict[str, Any], field: str, fragment: str
) -> None:
    response = post(client, fake, [event(1), event(2), event(3, **overrides)])
    assert response.status_code == 400, response.text
    doc = problem(response)
    assert f"event[2].{field}" in doc["detail"]
    assert fragment in doc["detail"]
    [error] = doc["extensions"]["validationErrors"]
    assert (error["index"], error["field"]) == (2, field)
    assert fake.events == []
    assert fake.batches == []


def test_a_single_event_problem_names_the_field(fake: FakeOpenMeter, client: httpx.Client) -> None:
    response = post(client, fake, event(1, time="yesterday"), SINGLE)
    assert response.status_code == 400
    assert "event.time" in problem(response)["detail"]


def test_every_problem_is_listed(fake: FakeOpenMeter, client: httpx.Client) -> None:
    response = post(client, fake, [event(1, id=""), 42, event(3, time="x", data="y")])
    errors = problem(response)["extensions"]["validationErrors"]
    assert [(e["index"], e["field"]) for e in errors] == [(0, "id"), (1, ""), (2, "time"), (2, "data")]
    assert "(+3 more)" in response.json()["detail"]


def test_a_duplicate_top_level_key_is_refused(fake: FakeOpenMeter, client: httpx.Client) -> None:
    body = b'[{"specversion":"1.0","id":"a","id":"b","source":"s","type":"t","subject":"c"}]'
    response = post(client, fake, body)
    assert response.status_code == 400
    assert "event[0].id: duplicate key" in problem(response)["detail"]


def test_v3_refuses_attributes_outside_the_schema(fake_v3: FakeOpenMeter, client: httpx.Client) -> None:
    response = post(client, fake_v3, [event(1), event(2, tenant="acme")])
    assert response.status_code == 400
    doc = problem(response)
    assert doc["invalid_parameters"] == [
        {"field": "event[1].tenant", "reason": doc["invalid_parameters"][0]["reason"], "source": "body"}
    ]
    assert "additionalProperties" in doc["invalid_parameters"][0]["reason"]


@pytest.mark.parametrize(
    "value", ["2024-05-01T12:00:00Z", "1999-12-31T23:59:59.1+14:00", "2024-05-01T00:00:00.000000000-00:00"]
)
def test_rfc3339_accepts(value: str) -> None:
    assert rfc3339_problem(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "2024-5-01T12:00:00Z",
        "2024-05-01T12:00Z",
        "2024-05-01T12:00:60Z",
        "\uff12\uff10\uff12\uff14-05-01T12:00:00Z",
    ],
)
def test_rfc3339_refuses(value: str) -> None:
    assert rfc3339_problem(value) is not None


# -- failure injection ------------------------------------------------------------------------------


def test_fail_next_answers_n_valid_requests_then_recovers(fake: FakeOpenMeter, client: httpx.Client) -> None:
    fake.fail_next(2, status=503, retry_after="7")
    assert post(client, fake, [event(1)], "text/plain").status_code == 400  # invalid: does not use a failure
    first, second = post(client, fake, [event(1)]), post(client, fake, [event(1)])
    assert (first.status_code, first.headers["retry-after"]) == (503, "7")
    assert problem(second)["detail"] == "injected failure (fail_next)"
    assert fake.events == []
    assert post(client, fake, [event(1)]).status_code == 204
    assert [r.status for r in fake.requests] == [400, 503, 503, 204]
    assert [e["id"] for e in fake.events] == ["evt-1"]


def test_fail_next_queues_and_takes_a_custom_body(fake: FakeOpenMeter, client: httpx.Client) -> None:
    fake.fail_next(1, status=429)
    fake.fail_next(1, status=500, body={"title": "boom", "status": 500, "detail": "x", "instance": "i"})
    first, second = post(client, fake, [event(1)]), post(client, fake, [event(1)])
    assert first.status_code == 429
    assert "retry-after" not in first.headers
    assert second.status_code == 500
    assert second.json()["title"] == "boom"
    assert post(client, fake, [event(1)]).status_code == 204


def test_set_down_answers_everything_until_cleared(fake: FakeOpenMeter, client: httpx.Client) -> None:
    fake.set_down(503, retry_after="1")
    assert post(client, fake, [event(1)]).status_code == 503
    assert client.get(f"http://127.0.0.1:{fake.port}/nowhere").status_code == 503
    assert (
        post(client, fake, [event(1)], headers={"Authorization": "Bearer wrong"}).headers["retry-after"]
        == "1"
    )
    fake.set_down(None)
    assert post(client, fake, [event(1)]).status_code == 204
    assert len(fake.events) == 1


def test_reject_events_refuses_the_whole_request_naming_the_event(
    fake: FakeOpenMeter, client: httpx.Client
) -> None:
    fake.reject_events(lambda e: e["data"]["tokens"] == 2)
    response = post(client, fake, [event(1), event(2), event(3)])
    assert response.status_code == 400
    doc = problem(response)
    assert "event[1]" in doc["detail"]
    assert "'evt-2'" in doc["detail"]
    assert fake.events == []
    assert post(client, fake, [event(1), event(3)]).status_code == 204  # the split halves pass
    assert post(client, fake, [event(2)]).status_code == 400
    assert [e["id"] for e in fake.events] == ["evt-1", "evt-3"]
    fake.reject_events(None)
    assert post(client, fake, [event(2)]).status_code == 204


def test_reject_events_with_another_status_on_v3(fake_v3: FakeOpenMeter, client: httpx.Client) -> None:
    fake_v3.reject_events(lambda e: e["id"] == "evt-9", status=422)
    response = post(client, fake_v3, [event(9)])
    assert response.status_code == 422
    assert "evt-9" in problem(response)["detail"]


def test_injected_statuses_must_be_errors(fake: FakeOpenMeter) -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        fake.fail_next(1, status=204)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        fake.set_down(302)


def test_a_raising_predicate_answers_500_and_fails_the_test(client: httpx.Client) -> None:
    def predicate(event: dict[str, Any]) -> bool:
        raise KeyError("oops")

    broken = FakeOpenMeter().start()
    broken.reject_events(predicate)
    assert post(client, broken, [event(1)]).status_code == 500
    assert "KeyError('oops')" in broken.requests[0].detail if broken.requests[0].detail else False
    with pytest.raises(AssertionError, match="hit errors while serving"):
        broken.__exit__(None, None, None)


def test_set_delay_delays_and_stop_interrupts_it(client: httpx.Client) -> None:
    with FakeOpenMeter() as slow:
        slow.set_delay(0.2)
        started = time.monotonic()
        assert post(client, slow, [event(1)]).status_code == 204
        assert time.monotonic() - started >= 0.2
        slow.set_delay(60)
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(post(client, slow, [event(2)]).status_code)
            except httpx.TransportError as exc:
                outcome.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        assert slow.wait_for_received(2) == 2
        assert len(slow.requests) == 1  # the second is held by the delay
        started = time.monotonic()
    sender.join(timeout=5)
    assert time.monotonic() - started < 2  # stop() did not wait out the 60 s delay
    [dropped] = outcome
    assert isinstance(dropped, httpx.RemoteProtocolError)  # dropped unanswered ...
    assert [e["id"] for e in slow.events] == ["evt-1"]  # ... and not accepted
    assert slow.received == 2


# -- waiting and bookkeeping ------------------------------------------------------------------------


def test_wait_for_events_returns_as_soon_as_they_arrive(fake: FakeOpenMeter) -> None:
    def send() -> None:
        with httpx.Client() as c:
            for n in range(3):
                c.post(fake.events_url, json=[event(n)], headers=AUTH)

    sender = threading.Thread(target=send)
    sender.start()
    events = fake.wait_for_events(3, timeout=5)
    sender.join()
    assert sorted(e["id"] for e in events) == ["evt-0", "evt-1", "evt-2"]
    started = time.monotonic()
    assert len(fake.wait_for_events(2, timeout=5)) == 3  # already there: no wait
    assert len(fake.wait_for_requests(3, timeout=5)) == 3
    assert time.monotonic() - started < 1  # far below the 5 s timeout: nothing waited


def test_wait_for_events_times_out_saying_what_arrived(fake: FakeOpenMeter, client: httpx.Client) -> None:
    post(client, fake, [event(1)])
    post(client, fake, [event(2, time="soon")])
    with pytest.raises(AssertionError) as failure:
        fake.wait_for_events(5, timeout=0.05)
    message = str(failure.value)
    assert "expected >= 5 accepted event(s) within 0.05s, got 1" in message
    assert "evt-1" in message
    assert "-> 400 (invalid event: event[0].time" in message


def test_wait_for_requests_times_out(fake: FakeOpenMeter) -> None:
    with pytest.raises(AssertionError, match=r"expected >= 1 answered request\(s\) within 0.05s, got 0"):
        fake.wait_for_requests(1, timeout=0.05)


def test_duplicates_and_unique_ids(fake: FakeOpenMeter, client: httpx.Client) -> None:
    post(client, fake, [event(1), event(2)])
    post(client, fake, [event(2), event(3), event(3, source="other")])
    assert fake.duplicates() == [("otlp-meter/test", "evt-2")]
    assert fake.unique_ids() == {
        ("otlp-meter/test", "evt-1"),
        ("otlp-meter/test", "evt-2"),
        ("otlp-meter/test", "evt-3"),
        ("other", "evt-3"),
    }


async def test_usable_from_asyncio_without_blocking_the_loop(fake_v3: FakeOpenMeter) -> None:
    async with httpx.AsyncClient() as c:
        waiter = asyncio.create_task(fake_v3.wait_for_events_async(2, timeout=5))
        await asyncio.sleep(0)  # the waiter is parked in its thread; the loop still runs the client
        response = await c.post(fake_v3.url + "/events", json=[event(1), event(2)], headers=AUTH)
        assert response.status_code == 202
        assert len(await waiter) == 2


def test_stop_is_fast_with_idle_keep_alive_connections() -> None:
    server = FakeOpenMeter().start()
    with httpx.Client() as c:
        assert (
            c.post(server.events_url, json=event(1), headers=AUTH).status_code == 204
        )  # connection stays open
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1
        with pytest.raises(httpx.TransportError):
            c.post(server.events_url, json=event(1), headers=AUTH)
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        server.start()
