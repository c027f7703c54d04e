"""The Run:ai client against the fake control plane: token grant and refresh, retries, anchored paging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from otlp_meter.sources.base import BackoffConfig, SourceStats
from otlp_meter.sources.runai_client import RunaiApiError, RunaiClient, RunaiNotFoundError, jwt_expiry
from tests.support.fake_runai import FakeRunai, jwt, workload

T = 1_700_000_040.0


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


class Waits:
    """Records the retry waits instead of sleeping."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, stop: asyncio.Event, seconds: float) -> bool:
        self.seconds.append(seconds)
        return stop.is_set()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeRunai]:
    server = FakeRunai(clock=clock, token_lifetime=600)
    server.workloads = [workload(f"w{i}", f"job-{i}", created=T - 1000 + i) for i in range(7)]
    with server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=0.5) as client:
        yield client


@pytest.fixture
def waits() -> Waits:
    return Waits()


def make_client(
    fake: FakeRunai, http: httpx.AsyncClient, clock: Clock, waits: Waits, **kwargs: Any
) -> RunaiClient:
    settings: dict[str, Any] = {
        "http": http,
        "base_url": fake.url,
        "app_id": fake.app_id,
        "app_secret": fake.app_secret,
        "stats": SourceStats("runai", "test"),
        "clock": clock,
        "wait": waits,
        "backoff": BackoffConfig(initial=1, max=8),
    }
    settings.update(kwargs)
    return RunaiClient(**settings)


@pytest.fixture
def client(fake: FakeRunai, http: httpx.AsyncClient, clock: Clock, waits: Waits) -> RunaiClient:
    return make_client(fake, http, clock, waits)


async def test_the_app_token_grant_is_asked_once_and_used_as_bearer(
    fake: FakeRunai, client: RunaiClient
) -> None:
    await client.get_json("/api/v1/clusters")
    await client.get_json("/api/v1/clusters")
    [grant] = fake.calls("/api/v1/token")
    assert grant.method == "POST"
    assert grant.body == {"grantType": "app_token", "appID": "otlp-meter", "appSecret": "app-s3cret"}
    used = {r.authorization for r in fake.calls("/api/v1/clusters")}
    assert len(used) == 1
    assert used.pop().startswith("Bearer ey")  # type: ignore[union-attr]


async def test_client_credentials_is_the_other_grant(
    fake: FakeRunai, http: httpx.AsyncClient, clock: Clock, waits: Waits
) -> None:
    client = make_client(fake, http, clock, waits, grant_type="client_credentials")
    await client.get_json("/api/v1/clusters")
    assert fake.calls("/api/v1/token")[0].body == {
        "grantType": "client_credentials",
        "clientID": "otlp-meter",
        "clientSecret": "app-s3cret",
    }


async def test_the_token_is_refreshed_before_it_expires(
    fake: FakeRunai, client: RunaiClient, clock: Clock
) -> None:
    await client.get_json("/api/v1/clusters")
    clock.now = T + 539  # the token lives 600 s; the margin is 60 s
    await client.get_json("/api/v1/clusters")
    assert fake.tokens_issued == 1
    clock.now = T + 541
    await client.get_json("/api/v1/clusters")
    assert fake.tokens_issued == 2
    assert client.stats.counts["token_refreshes"] == 2


async def test_a_401_gets_a_new_token_and_the_call_goes_through(fake: FakeRunai, client: RunaiClient) -> None:
    await client.get_json("/api/v1/clusters")
    fake.expire_tokens()  # revoked early, or the clocks disagree
    assert await client.get_json("/api/v1/clusters") == []
    assert fake.tokens_issued == 2
    assert [r.path for r in fake.requests] == [
        "/api/v1/token",
        "/api/v1/clusters",
        "/api/v1/clusters",
        "/api/v1/token",
        "/api/v1/clusters",
    ]


async def test_wrong_credentials_fail_without_retrying(
    fake: FakeRunai, http: httpx.AsyncClient, clock: Clock, waits: Waits
) -> None:
    client = make_client(fake, http, clock, waits, app_secret="wrong")
    with pytest.raises(RunaiApiError) as info:
        await client.get_json("/api/v1/clusters")
    assert info.value.status == 401
    assert len(fake.calls("/api/v1/token")) == 1


async def test_429_honours_retry_after_and_5xx_backs_off(
    fake: FakeRunai, client: RunaiClient, waits: Waits
) -> None:
    fake.fail_next("/api/v1/clusters", 429, retry_after="7")
    fake.fail_next("/api/v1/clusters", 503)
    assert await client.get_json("/api/v1/clusters") == []
    assert waits.seconds == [7.0, 2.0]  # Retry-After beats the first backoff (1); the second is 2
    assert client.stats.counts["api_retries"] == 2


async def test_persistent_failures_give_up_after_max_attempts(fake: FakeRunai, client: RunaiClient) -> None:
    fake.fail_next("/api/v1/clusters", 500, count=10)
    with pytest.raises(RunaiApiError, match="after 5 attempts"):
        await client.get_json("/api/v1/clusters")
    assert len(fake.calls("/api/v1/clusters")) == 5


async def test_slow_answers_time_out_and_are_retried(fake: FakeRunai, client: RunaiClient) -> None:
    fake.slow("/api/v1/clusters", 1.0)  # beyond the client's 0.5 s timeout, once
    assert await client.get_json("/api/v1/clusters") == []
    assert client.stats.counts["api_retries"] == 1


async def test_404_is_not_found(client: RunaiClient) -> None:
    with pytest.raises(RunaiNotFoundError):
        await client.get_json("/api/v1/workloads/nope/metrics", [("metricType", "GPU_ALLOCATION")])


async def test_paging_overlaps_pages_and_returns_each_row_once(fake: FakeRunai, client: RunaiClient) -> None:
    rows = await client.list_all("/api/v1/workloads", "workloads", [], page_size=3)
    assert [r["id"] for r in rows] == [f"w{i}" for i in range(7)]
    pages = fake.calls("/api/v1/workloads")
    assert [p.query["offset"] for p in pages] == [["0"], ["2"], ["4"], ["6"]]
    assert {(p.query["sortBy"][0], p.query["sortOrder"][0], p.query["limit"][0]) for p in pages} == {
        ("createdAt", "asc", "3")
    }


@pytest.mark.parametrize(("at_offset", "deleted"), [(2, 1), (4, 4)])
async def test_rows_deleted_while_paging_shift_the_pages_but_lose_nothing(
    fake: FakeRunai, client: RunaiClient, at_offset: int, deleted: int
) -> None:
    # Just before a page is served, rows already listed go away and every later row moves left:
    # read naively, offset 2 would skip w3 (one deleted), offset 4 would skip w5 and w6 (four deleted,
    # more than a page: the anchor is not on the page at all and the client steps back).
    def shift(path: str, offset: int) -> None:
        if offset == at_offset and not any(w["deletedAt"] for w in fake.workloads):
            for i in range(deleted):
                fake.delete_workload(f"w{i}", at=T)

    fake.before_page = shift
    rows = await client.list_all("/api/v1/workloads", "workloads", [], page_size=3)
    assert sorted(r["id"] for r in rows) == [f"w{i}" for i in range(7)]
    assert len(rows) == 7
    assert client.stats.counts["list_shifts"] >= 1


def test_jwt_expiry_is_read_without_verification() -> None:
    assert jwt_expiry(jwt({"exp": 1234})) == 1234
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.b.c") is None
