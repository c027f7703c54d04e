"""The primary's ``/metrics`` covers its intake workers (``service.workers`` > 1).

A worker sends snapshots of its intake metrics over its control pipe; the primary adds the latest
of every worker process to its own series when scraped, and keeps what an ended process counted
as the base of its slot, so the sums never drop when a worker is started again. Here ``Metrics``
instances stand in for the processes; the pipes are real where the pipes are under test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from otlp_meter.telemetry.metrics import Metrics
from otlp_meter.telemetry.peers import PeerMetrics, Snapshot
from otlp_meter.workers import ConfigDocument, WorkerLink, WorkerPool, _Control, _Slot
from tests.unit.telemetry.stats import queue_stats

OK = ("grpc", "logs", "ok")
LABELS = ("transport", "signal", "outcome")


def process(requests: int, *, commits: int = 0, refused: int = 0, seconds: float = 0.002) -> Metrics:
    """One process's metrics after ``requests`` accepted gRPC log requests (each appended once)."""
    metrics = Metrics(process=False, migration_aliases=True)
    metrics.observe_queue(lambda: queue_stats(commits_total=commits))
    for _ in range(requests):
        metrics.receiver_requests.labels(*OK).inc()
        metrics.receiver_accepted_records.labels("grpc", "logs").inc(10)
        metrics.queue_append_duration.observe(seconds)
        metrics.receiver_request_size.labels("grpc", "logs").observe(1000)
    if refused:
        metrics.receiver_requests.labels("http_protobuf", "logs", "malformed").inc(refused)
    return metrics


def wire(metrics: Metrics) -> dict[str, Any]:
    """A snapshot as the primary receives it: through JSON."""
    message: dict[str, Any] = orjson.loads(orjson.dumps(metrics.snapshot()))
    return message


def value(metrics: Metrics, name: str, **labels: str) -> float:
    sample = metrics.registry.get_sample_value(name, labels)
    assert sample is not None, (name, labels)
    return sample


def requests_ok(metrics: Metrics) -> float:
    return value(metrics, "otlp_meter_receiver_requests_total", transport="grpc", signal="logs", outcome="ok")


def test_the_exposition_adds_every_workers_snapshot_to_the_primarys_own_series() -> None:
    primary = process(3, commits=2)
    primary.peers.update(1, 1, wire(process(5, commits=4)))
    primary.peers.update(2, 2, wire(process(7, commits=6, refused=2, seconds=0.2)))

    assert requests_ok(primary) == 3 + 5 + 7
    assert (
        value(primary, "otlp_meter_receiver_accepted_records_total", transport="grpc", signal="logs") == 150
    )
    # A series only a worker has is exposed too.
    malformed = {"transport": "http_protobuf", "signal": "logs", "outcome": "malformed"}
    assert value(primary, "otlp_meter_receiver_requests_total", **malformed) == 2
    # Histograms: every bucket, the count and the sum.
    assert value(primary, "otlp_meter_queue_append_duration_seconds_count") == 15
    assert value(primary, "otlp_meter_queue_append_duration_seconds_bucket", le="0.0025") == 8
    assert value(primary, "otlp_meter_queue_append_duration_seconds_bucket", le="0.25") == 15
    assert value(primary, "otlp_meter_queue_append_duration_seconds_sum") == pytest.approx(
        8 * 0.002 + 7 * 0.2
    )
    size = {"transport": "grpc", "signal": "logs"}
    assert value(primary, "otlp_meter_receiver_request_size_bytes_bucket", le="+Inf", **size) == 15
    # The grouped commits come from the queue collector; the migration alias from the histogram.
    assert value(primary, "otlp_meter_queue_commits_total") == 2 + 4 + 6
    assert value(primary, "buffer_batch_received") == 15
    # The primary's own instruments are untouched: a worker's counts are not its own.
    assert primary.receiver_requests.labels(*OK)._value.get() == 3


def test_a_worker_only_series_has_a_complete_histogram_in_both_formats() -> None:
    primary = Metrics(process=False)
    worker = Metrics(process=False)
    worker.receiver_request_duration.labels("events_api", "events").observe(0.03)
    worker.rules_matched.labels("genai").inc(4)
    primary.peers.update(1, 1, wire(worker))

    text = generate_latest(primary.registry).decode()
    openmetrics = generate_openmetrics(primary.registry).decode()  # type: ignore[no-untyped-call]

    families = {f.name: f for f in parse_openmetrics(openmetrics)}  # type: ignore[no-untyped-call]
    duration = families["otlp_meter_receiver_request_duration_seconds"]
    buckets = [s for s in duration.samples if s.name.endswith("_bucket")]
    assert [b.labels["le"] for b in buckets][-2:] == ["10.0", "+Inf"]
    assert [b.value for b in buckets].count(1) == 9  # 0.03 s: from the 0.05 bucket on
    assert [s.value for s in families["otlp_meter_rules_matched_records"].samples] == [4]
    parsed = {f.name for f in parse_prometheus(text)}
    assert {"otlp_meter_receiver_request_duration_seconds", "otlp_meter_rules_matched_records"} <= parsed
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_counters_stay_monotonic_when_a_worker_is_started_again() -> None:
    primary = process(0)
    primary.peers.update(1, 1, wire(process(10, commits=10)))
    primary.peers.update(2, 2, wire(process(1)))
    assert requests_ok(primary) == 11

    primary.peers.retire(1)  # the process in slot 1 ended: its last snapshot stays counted
    assert requests_ok(primary) == 11
    primary.peers.update(3, 1, wire(process(2, commits=2)))  # slot 1 again, counting from zero
    assert requests_ok(primary) == 13
    assert value(primary, "otlp_meter_queue_commits_total") == 12
    primary.peers.update(3, 1, wire(process(4, commits=4)))  # a later snapshot replaces the last
    assert requests_ok(primary) == 15
    assert value(primary, "otlp_meter_queue_append_duration_seconds_count") == 15


def test_the_order_of_a_new_process_and_the_end_of_the_old_one_does_not_matter() -> None:
    primary = Metrics(process=False)
    primary.peers.update(1, 1, wire(process(10)))
    primary.peers.update(2, 1, wire(process(1)))  # the new process reported before the old pipe ended
    assert requests_ok(primary) == 11
    primary.peers.retire(1)
    primary.peers.retire(1)  # twice is once
    assert requests_ok(primary) == 11
    primary.peers.retire(2)
    assert requests_ok(primary) == 11


@pytest.mark.parametrize(
    "broken",
    [
        {"counters": {"otlp_meter_receiver_requests": [[["grpc", "logs"], 1]]}},  # a label missing
        {"counters": {"otlp_meter_receiver_requests": [[["grpc", "logs", "ok"], -1]]}},
        {"counters": {"otlp_meter_receiver_requests": [[["grpc", "logs", "ok"], True]]}},
        {"counters": {"otlp_meter_receiver_requests": [[["grpc", "logs", "ok"], float("nan")]]}},
        {"counters": {"otlp_meter_receiver_requests": [[["grpc", "logs", 1], 1]]}},
        {"counters": {"otlp_meter_receiver_requests": {"grpc": 1}}},
        {"counters": []},
        {"histograms": {"otlp_meter_queue_append_duration_seconds": [[[], [1, 2], 0.1]]}},
        {"histograms": {"otlp_meter_queue_append_duration_seconds": [[[], [2] + [1] * 14, 0.1]]}},
        {"histograms": {"otlp_meter_queue_append_duration_seconds": [[[], [1] * 15, "x"]]}},
    ],
)
def test_a_snapshot_that_does_not_fit_is_refused_and_the_last_one_kept(broken: dict[str, Any]) -> None:
    primary = Metrics(process=False)
    primary.peers.update(1, 1, wire(process(2)))
    with pytest.raises(ValueError, match=r"."):
        primary.peers.update(1, 1, {"type": "metrics", **broken})
    assert requests_ok(primary) == 2
    generate_latest(primary.registry)  # still a valid exposition


def test_unknown_families_are_ignored() -> None:
    peers = PeerMetrics()
    peers.update(1, 1, {"type": "metrics", "counters": {"otlp_meter_future": [[["x"], 1]]}})
    assert peers.total() == Snapshot()


def test_snapshots_are_compact() -> None:
    message = process(100).snapshot()
    # Integral values go as integers, empty families not at all.
    assert message["counters"]["otlp_meter_receiver_requests"] == [[list(OK), 100]]
    assert "otlp_meter_rules_matched_records" not in message["counters"]
    assert len(orjson.dumps(message)) < 2000


# -- over the pipes ---------------------------------------------------------------------------------


def pool(metrics: Metrics) -> WorkerPool:
    return WorkerPool(1, ConfigDocument("", None), {}, lambda: None, metrics)


def test_the_primary_reads_snapshots_from_the_control_pipe_and_retires_them_at_its_end() -> None:
    primary = Metrics(process=False)
    workers = pool(primary)
    slot = _Slot(1, link=7)
    control = _Control(workers, slot, 7)
    line = orjson.dumps(process(4).snapshot()) + b"\n"
    control.data_received(b'{"type":"ready","pid":1}\n' + line[:10])  # lines arrive in pieces
    assert slot.ready
    ok = dict(zip(LABELS, OK, strict=True))
    assert primary.registry.get_sample_value("otlp_meter_receiver_requests_total", ok) is None
    control.data_received(line[10:])
    assert requests_ok(primary) == 4
    control.data_received(b'{"type":"metrics","counters":{"otlp_meter_receiver_requests":[[[],1]]}}\n')
    assert requests_ok(primary) == 4, "an invalid snapshot is logged and dropped"
    control.connection_lost(None)
    _Control(workers, slot, 8).data_received(orjson.dumps(process(1).snapshot()) + b"\n")
    assert requests_ok(primary) == 5


async def test_a_worker_reports_periodically_and_once_more_when_it_finishes() -> None:
    control_r, control_w = os.pipe()
    wake_r, wake_w = os.pipe()
    metrics = process(1)
    link = WorkerLink(1, control_w, wake_w)
    received = bytearray()
    two_lines = asyncio.Event()
    loop = asyncio.get_running_loop()
    os.set_blocking(control_r, False)
    eof = loop.create_future()

    def readable() -> None:
        data = os.read(control_r, 65536)
        received.extend(data)
        if received.count(b"\n") >= 2:
            two_lines.set()
        if not data and not eof.done():
            eof.set_result(None)

    loop.add_reader(control_r, readable)
    try:
        await link.open()
        link.report(metrics.snapshot, 0.01)
        async with asyncio.timeout(5):
            await two_lines.wait()
        metrics.receiver_requests.labels(*OK).inc(41)
        await link.finish()
        async with asyncio.timeout(5):
            await eof
    finally:
        loop.remove_reader(control_r)
        link.close()
        for fd in (control_r, wake_r):
            os.close(fd)
    messages = [orjson.loads(line) for line in bytes(received).splitlines()]
    assert all(m["type"] == "metrics" for m in messages)
    assert messages[-1]["counters"]["otlp_meter_receiver_requests"] == [[list(OK), 42]]
