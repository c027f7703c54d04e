"""End to end: clients of OpenMeter's ingest API (its Python SDK, curl-style requests) send to the
collector's events API, and the same events, ids and sources intact, arrive at OpenMeter."""

from __future__ import annotations

import datetime
import gzip
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from openmeter import Client
from openmeter.models import Event

from tests.e2e.conftest import ServiceFactory
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def event(i: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "specversion": "1.0",
        "id": f"order-{i}",
        "source": "checkout",
        "type": "api-calls",
        "subject": f"customer-{i % 3}",
        "time": f"2026-01-01T00:00:{i:02d}.500Z",
        "data": {"calls": i + 1, "endpoint": "/v1/orders"},
    }
    return {**base, **overrides}


def ingest(
    service: ServiceProcess, body: Any, content_type: str, path: str = "/api/v1/events"
) -> httpx.Response:
    return httpx.post(
        f"{service.events_url}{path}", content=orjson.dumps(body), headers={"content-type": content_type}
    )


def test_the_openmeter_sdk_ingests_through_the_collector(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    when = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    with Client(endpoint=service.events_url) as client:
        client.events.ingest_event(
            Event(
                id="sdk-1",
                source="sdk-app",
                specversion="1.0",
                type="prompt",
                subject="acme",
                time=when,
                data={"tokens": 12, "model": "gpt-4o"},
            )
        )
        client.events.ingest_events(
            [
                Event(
                    id=f"sdk-{i}",
                    source="sdk-app",
                    specversion="1.0",
                    type="prompt",
                    subject="globex",
                    data={"tokens": i},
                )
                for i in (2, 3)
            ]
        )
        with pytest.raises(HttpResponseError) as refused:  # what OpenMeter refuses, the collector refuses
            client.events.ingest_event(
                Event(id="sdk-4", source="sdk-app", specversion="1.0", type="prompt", subject="")
            )
    assert refused.value.status_code == 400

    events = openmeter.wait_for_events(3)
    by_id = {e["id"]: e for e in events}
    assert sorted(by_id) == ["sdk-1", "sdk-2", "sdk-3"]
    assert by_id["sdk-1"] == {
        "id": "sdk-1",
        "source": "sdk-app",
        "specversion": "1.0",
        "type": "prompt",
        "subject": "acme",
        "time": "2026-01-01T12:00:00Z",
        "data": {"tokens": 12, "model": "gpt-4o"},
    }
    assert by_id["sdk-3"]["data"] == {"tokens": 3}


@pytest.mark.parametrize(
    ("content_type", "body", "path", "status"),
    [
        ("application/cloudevents+json", event(0), "/api/v1/events", 204),
        ("application/cloudevents-batch+json", [event(0), event(1)], "/api/v1/events", 204),
        ("application/json", event(0), "/api/v1/events", 204),
        ("application/json", [event(0), event(1)], "/events", 202),
        ("application/cloudevents-batch+json", [event(0), event(1)], "/v3/openmeter/events", 202),
    ],
)
def test_raw_requests_with_each_content_type_arrive_unchanged(
    service: ServiceProcess, openmeter: FakeOpenMeter, content_type: str, body: Any, path: str, status: int
) -> None:
    response = ingest(service, body, content_type, path)

    assert response.status_code == status
    sent = body if isinstance(body, list) else [body]
    assert openmeter.wait_for_events(len(sent)) == sent


def test_a_batch_with_one_invalid_event_is_refused_whole_naming_it(
    service: ServiceProcess, openmeter: FakeOpenMeter
) -> None:
    bad = [event(0), event(1, time="2026-13-01T00:00:00Z"), event(2)]

    response = ingest(service, bad, "application/cloudevents-batch+json")

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert "event[1].time" in problem["detail"]
    assert [(e["index"], e["field"]) for e in problem["extensions"]["validationErrors"]] == [(1, "time")]

    assert ingest(service, [event(3)], "application/cloudevents-batch+json").status_code == 204
    assert [e["id"] for e in openmeter.wait_for_events(1)] == ["order-3"]  # none of the refused batch


def test_a_resent_event_is_delivered_once(service: ServiceProcess, openmeter: FakeOpenMeter) -> None:
    for _ in range(3):  # a client retrying after a lost answer
        assert ingest(service, [event(7)], "application/cloudevents-batch+json").status_code == 204
    assert ingest(service, [event(8)], "application/cloudevents-batch+json").status_code == 204

    events = openmeter.wait_for_events(2)
    assert [e["id"] for e in events] == ["order-7", "order-8"]
    assert openmeter.duplicates() == []
    assert service.metric("otlp_meter_queue_deduplicated_events_total") == 2


def test_events_wait_on_disk_through_an_openmeter_outage(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.set_down(503, retry_after="0")
    service = service_factory().start()
    assert (
        ingest(service, [event(i) for i in range(5)], "application/cloudevents-batch+json").status_code == 204
    )
    openmeter.wait_for_requests(1)
    assert service.stop() == 0

    openmeter.set_down(None)
    restarted = service_factory(workdir=service.workdir).start()
    assert [e["id"] for e in openmeter.wait_for_events(5)] == [f"order-{i}" for i in range(5)]
    assert restarted.metric("otlp_meter_exporter_sent_events_total") == 5


def test_the_sdk_with_a_token_against_a_collector_that_requires_one(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    service = service_factory(
        {"receivers": {"auth": {"tokens": ["${INGEST_TOKEN}"]}}}, env={"INGEST_TOKEN": "k1"}
    )
    with service:
        ok = Event(id="t-1", source="sdk", specversion="1.0", type="prompt", subject="acme")
        with Client(endpoint=service.events_url, token="k1") as client:
            client.events.ingest_event(ok)
        with (
            Client(endpoint=service.events_url, token="wrong") as client,
            pytest.raises(ClientAuthenticationError),
        ):
            client.events.ingest_event(
                Event(id="t-2", source="sdk", specversion="1.0", type="prompt", subject="x")
            )
        assert [e["id"] for e in openmeter.wait_for_events(1)] == ["t-1"]
        assert service.metric("otlp_meter_receiver_auth_failures_total", {"receiver": "events_api"}) == 1


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` bytes of zeros as gzip: one 1 MiB member (~1 KiB) repeated, which is valid gzip
    (RFC 1952 members concatenate) and costs nothing to build."""
    member = gzip.compress(bytes(MiB), compresslevel=9)
    return member * (inflated // MiB)


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_gzip_bomb_is_refused_quickly_with_bounded_memory(service: ServiceProcess) -> None:
    bomb = gzip_bomb(10 * 1024 * MiB)  # 10 GiB of zeros
    assert 9 * MiB < len(bomb) < 12 * MiB
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bomb[:2048], 4096) == bytes(4096)
    assert service.process is not None
    before = peak_rss_bytes(service.process.pid)

    started = time.monotonic()
    response = httpx.post(
        f"{service.events_url}/api/v1/events",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=30,
    )
    elapsed = time.monotonic() - started

    assert response.status_code == 413
    assert "exceeds" in response.json()["detail"]
    assert elapsed < 5
    # The 10 MiB body and at most the 20 MiB limit inflated, with room for allocator slack.
    assert peak_rss_bytes(service.process.pid) - before < 120 * MiB
    assert ingest(service, [event(1)], "application/cloudevents-batch+json").status_code == 204
