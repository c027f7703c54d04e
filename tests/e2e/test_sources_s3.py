"""The s3 source in the running service, against a real S3 API (moto's server on loopback).

Objects are uploaded with boto3 in every format; the service reads them with its own boto3 client
and its events reach the fake OpenMeter. The crash test kills the service with SIGKILL in the
middle of a large object and checks that every row is billed exactly once.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.e2e.conftest import ServiceFactory
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.s3 import S3Server
from tests.support.service import ServiceProcess, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def row(n: int, subject: str = "acme", kind: str = "api-calls") -> dict[str, Any]:
    return {"type": kind, "subject": subject, "n": n}


def source(s3: S3Server, bucket: str, name: str, file_format: str, **overrides: Any) -> dict[str, Any]:
    return s3.source_config(
        bucket,
        name=name,
        prefix=f"{name}/",
        format=file_format,
        poll_interval="100ms",
        backoff={"initial": "100ms", "max": "500ms"},
        **overrides,
    )


def log_events(service: ServiceProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") == event]


def test_usage_files_in_every_format_become_events_once(
    s3: S3Server, service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    bucket = s3.new_bucket()
    cloudevent = {"specversion": "1.0", "id": "ce-1", "source": "billing-export", "type": "tokens",
                  "subject": "initech", "time": "2024-06-01T00:00:00Z", "data": {"tokens": 42}}  # fmt: skip
    s3.put(bucket, "jsonl/2024-06-01.jsonl", jsonl([row(1), row(2, "globex")]) + b"{not json\n")
    s3.put(bucket, "json/2024-06-01.json.gz", gzip.compress(orjson.dumps([row(3), row(4, "globex")])))
    s3.put(bucket, "csv/2024-06-01.csv", b"type,subject,n\napi-calls,acme,5\napi-calls,globex,6\n")
    s3.put(bucket, "ce/2024-06-01.jsonl", jsonl([cloudevent]))
    sources = [
        source(s3, bucket, "jsonl", "jsonl"),
        source(s3, bucket, "json", "json"),
        source(s3, bucket, "csv", "csv"),
        source(s3, bucket, "ce", "cloudevents"),
    ]
    with service_factory({"rules": {"packs": ["s3"]}, "sources": {"s3": sources}}) as service:
        openmeter.wait_for_events(7, timeout=15)
        s3.put(bucket, "jsonl/2024-06-02.jsonl", jsonl([row(7)]))  # a new file: read on the next poll
        events = openmeter.wait_for_events(8, timeout=15)
        wait_until(lambda: len(log_events(service, "s3_object_done")) == 5, what="every object done")
        dlq = subprocess.run(
            [sys.executable, "-m", "otlp_meter", "dlq", "list", "--config", str(service.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    rows = sorted((e["subject"], e["data"].get("n")) for e in events if e["type"] == "api-calls")
    assert rows == [
        ("acme", 1),
        ("acme", 3),
        ("acme", 5),
        ("acme", 7),
        ("globex", 2),
        ("globex", 4),
        ("globex", 6),
    ]
    [passed_through] = [e for e in events if e["type"] == "tokens"]
    assert passed_through == cloudevent  # queued as it was, its own id and source
    assert openmeter.duplicates() == []
    assert "jsonl/2024-06-01.jsonl line 3: invalid JSON" in dlq.stdout, dlq.stdout + dlq.stderr


def test_a_sigkill_in_the_middle_of_a_large_object_bills_every_row_exactly_once(
    s3: S3Server, service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    total = 6000
    bucket = s3.new_bucket()
    s3.put(bucket, "big/2024-06-01.jsonl", jsonl([row(n, f"customer-{n % 7}") for n in range(total)]))
    config = {
        "rules": {"packs": ["s3"]},
        # A small queue and an OpenMeter that is down: the source fills the queue and then waits,
        # half-way through the object, retrying its next commit. That is when the service is killed.
        "queue": {"max_bytes": "256KiB"},
        "sources": {"s3": [source(s3, bucket, "big", "jsonl", batch_rows=100)]},
    }
    openmeter.set_down(503)
    service = service_factory(config).start()
    blocked = "the source blocked mid-object"
    wait_until(lambda: bool(log_events(service, "s3_commit_retry")), timeout=20, what=blocked)
    service.kill()

    openmeter.clear_faults()
    service.start()
    wait_until(lambda: len(openmeter.unique_ids()) >= total, timeout=25, what="every row delivered")
    wait_until(lambda: bool(log_events(service, "s3_object_done")), timeout=10, what="the object done")
    service.stop()

    [resumed] = log_events(service, "s3_object_resumed")
    assert 0 < resumed["rows_done"] < total  # the restart continued the object where its commit left it
    unique = {e["id"]: e for e in openmeter.events}
    assert len(unique) == total
    assert Counter(e["data"]["n"] for e in unique.values()) == Counter(range(total))  # each row once
