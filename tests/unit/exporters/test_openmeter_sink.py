"""The OpenMeter sink: what goes on the wire, and how each answer is classified (as a value)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from otlp_meter.exporters.config import Target
from otlp_meter.exporters.openmeter import MAX_DETAIL, OpenMeterSink
from otlp_meter.exporters.retry import Verdict
from tests.support.fake_openmeter import Api
from tests.unit.exporters.helpers import cloud_events
from tests.unit.exporters.mock_openmeter import MockOpenMeter

PAYLOADS = [e.payload for e in cloud_events(3)]
Handler = Callable[[httpx.Request], httpx.Response]


def sink_answering(
    handler: Handler, token: str | None = "t0ken"
) -> tuple[OpenMeterSink, list[httpx.Request]]:
    """A sink whose every request is recorded and answered by ``handler``."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    target = Target("openmeter", "http://om.test/api/v1/events", SecretStr(token) if token else None)
    return OpenMeterSink(target, 5.0, 2, transport=httpx.MockTransport(record)), seen


# -- the request -------------------------------------------------------------------------------


async def test_the_request_is_a_post_of_the_stored_payloads_as_one_json_array() -> None:
    sink, seen = sink_answering(lambda r: httpx.Response(204))
    await sink.send(PAYLOADS)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://om.test/api/v1/events"
    assert request.content == b"[" + b",".join(PAYLOADS) + b"]"  # stored bytes joined, not re-encoded
    assert json.loads(request.content) == [json.loads(p) for p in PAYLOADS]
    await sink.close()


async def test_the_content_type_is_exactly_the_batch_type_without_a_charset() -> None:
    sink, seen = sink_answering(lambda r: httpx.Response(204))
    await sink.send(PAYLOADS)
    assert seen[0].headers.get_list("content-type") == ["application/cloudevents-batch+json"]
    await sink.close()


async def test_the_token_is_sent_as_a_bearer_token() -> None:
    sink, seen = sink_answering(lambda r: httpx.Response(204), token="t0ken")
    await sink.send(PAYLOADS)
    assert seen[0].headers.get_list("authorization") == ["Bearer t0ken"]
    await sink.close()


async def test_without_a_token_there_is_no_authorization_header() -> None:
    sink, seen = sink_answering(lambda r: httpx.Response(204), token=None)
    await sink.send(PAYLOADS)
    assert "authorization" not in seen[0].headers
    await sink.close()


@pytest.mark.parametrize(("api", "path"), [("v1", "/api/v1/events"), ("v3", "/v3/openmeter/events")])
async def test_a_strict_openmeter_accepts_the_batch(api: Api, path: str) -> None:
    openmeter = MockOpenMeter(api)
    sink = openmeter.sink()
    result = await sink.send(PAYLOADS)
    assert result.verdict is Verdict.DELIVERED
    assert result.status == (204 if api == "v1" else 202)
    assert openmeter.requests[0].url.path == path
    assert openmeter.ids == ["e-0", "e-1", "e-2"]
    await sink.close()


# -- the answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_2xx_is_delivered_without_detail(status: int) -> None:
    sink, _ = sink_answering(lambda r: httpx.Response(status, text="ignored"))
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status, result.retry_after, result.detail) == (
        Verdict.DELIVERED,
        status,
        None,
        "",
    )


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.PoolTimeout("no connection available"),
        httpx.RemoteProtocolError("server disconnected without sending a response"),
        httpx.ReadError("connection reset by peer"),
    ],
)
async def test_network_errors_and_timeouts_are_retried_with_the_error_as_detail(
    error: httpx.HTTPError,
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    sink, _ = sink_answering(fail)
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status, result.retry_after) == (Verdict.RETRY, None, None)
    assert result.detail == f"{type(error).__name__}: {error}"


async def test_503_with_retry_after_is_retried_after_that_long() -> None:
    sink, _ = sink_answering(lambda r: httpx.Response(503, headers={"retry-after": "17"}, text="overloaded"))
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status, result.retry_after) == (Verdict.RETRY, 503, 17.0)
    assert result.detail == "overloaded"


async def test_429_without_retry_after_is_retried_on_our_own_schedule() -> None:
    sink, _ = sink_answering(lambda r: httpx.Response(429))
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status, result.retry_after) == (Verdict.RETRY, 429, None)


async def test_400_with_problem_details_is_refused_with_the_servers_answer() -> None:
    problem = {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "invalid event: event[1].time: must be an RFC 3339 date-time",
    }
    sink, _ = sink_answering(
        lambda r: httpx.Response(
            400, headers={"content-type": "application/problem+json"}, content=json.dumps(problem).encode()
        )
    )
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status) == (Verdict.REFUSED, 400)
    assert json.loads(result.detail) == problem


async def test_a_huge_error_body_is_cut_to_a_bounded_detail() -> None:
    sink, _ = sink_answering(lambda r: httpx.Response(422, text="x" * 100_000))
    result = await sink.send(PAYLOADS)
    assert result.verdict is Verdict.REFUSED
    assert len(result.detail) == MAX_DETAIL


async def test_a_wrong_token_is_an_auth_failure() -> None:
    openmeter = MockOpenMeter(token="the-right-one")
    sink = openmeter.sink(token="a-wrong-one")
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status) == (Verdict.AUTH, 401)
    assert openmeter.events == []


async def test_403_is_an_auth_failure() -> None:
    sink, _ = sink_answering(lambda r: httpx.Response(403, text="forbidden"))
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status, result.detail) == (Verdict.AUTH, 403, "forbidden")


async def test_a_redirect_is_not_followed_and_not_taken_for_success() -> None:
    sink, seen = sink_answering(lambda r: httpx.Response(308, headers={"location": "http://elsewhere.test/"}))
    result = await sink.send(PAYLOADS)
    assert (result.verdict, result.status) == (Verdict.RETRY, 308)
    assert len(seen) == 1
