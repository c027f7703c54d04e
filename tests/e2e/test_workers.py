"""``service.workers``: intake over several processes, one exporter, nothing lost or counted twice.

The real service with ``workers: 2`` (the primary and one intake worker sharing the receivers'
ports through SO_REUSEPORT and one LMDB queue), real gRPC channels and HTTP connections, the fake
OpenMeter. Every record carries a unique ``seq`` that the test rule copies into its event, so what
arrived can be checked against what was acknowledged. Which process serves a connection is read
from ``/proc``: the process holding the accepted socket.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.e2e.conftest import ServiceFactory
from tests.e2e.otlp_clients import send_counter
from tests.e2e.test_delivery_guarantees import LogsClient, config, logs, queue_stats, seq_rule, seqs_of
from tests.e2e.test_observability import OPENMETRICS, promtool_check
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.rules import PER_CUSTOMER_REQUESTS
from tests.support.service import ServiceProcess, merge, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc")]

WORKERS = {"service": {"workers": 2}}
CONNECTIONS = 16
"""SO_REUSEPORT spreads connections by a hash of their addresses: with 16 of them, all landing on
one of two processes has a chance of 2 in 65536."""


def Channel(endpoint: str) -> LogsClient:
    """A gRPC OTLP logs client with a TCP connection of its own (SO_REUSEPORT spreads connections)."""
    return LogsClient(endpoint, own_connection=True, timeout=10.0)


def requests_counted(service: ServiceProcess) -> float:
    return service.metric("otlp_meter_receiver_requests_total", {"outcome": "ok"})


def worker_pids(service: ServiceProcess) -> list[int]:
    """The intake workers' pids, as the primary's readiness reports them."""
    body = httpx.get(f"{service.telemetry_url}/readyz", timeout=5).json()
    return list(body["checks"]["workers"]["pids"])


def ready_with_new_worker(service: ServiceProcess, old: int) -> bool:
    response = httpx.get(f"{service.telemetry_url}/readyz", timeout=5)
    return response.status_code == 200 and old not in response.json()["checks"]["workers"]["pids"]


def alive(pid: int) -> bool:
    """Running (a zombie left for a reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def accepted_connections(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to ``port`` each process holds (the accepted sockets)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    held: dict[int, int] = {}
    for pid in pids:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    count += 1
            except OSError:
                continue  # closed meanwhile
        held[pid] = count
    return held


def assert_delivered_exactly_once(openmeter: FakeOpenMeter, service: ServiceProcess, acked: set[int]) -> None:
    wait_until(lambda: acked <= set(seqs_of(openmeter.events)), timeout=30, what="every acked seq delivered")
    wait_until(lambda: service.metric("otlp_meter_queue_depth_events") == 0, timeout=30, what="drained")
    per_seq = Counter(seqs_of(openmeter.events))
    assert set(per_seq) == acked, "nothing lost, nothing unacknowledged made up"
    # One primary, no restart of it: the exporter never sends an event twice.
    assert [seq for seq, n in per_seq.items() if n > 1] == []


def test_two_processes_take_connections_on_shared_ports_and_deliver_every_event_once(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    service = service_factory(config(**WORKERS)).start()
    [worker] = worker_pids(service)
    primary = service.process.pid if service.process else 0
    seqs = itertools.count()
    channels = [Channel(service.grpc_endpoint) for _ in range(CONNECTIONS)]
    clients = [httpx.Client(base_url=service.http_url, timeout=10) for _ in range(CONNECTIONS)]
    acked: set[int] = set()
    try:
        for _ in range(3):
            for channel in channels:
                batch = [next(seqs) for _ in range(10)]
                channel.send(logs(batch))
                acked.update(batch)
            for client in clients:
                batch = [next(seqs) for _ in range(10)]
                response = client.post(
                    "/v1/logs",
                    content=logs(batch).SerializeToString(),
                    headers={"content-type": "application/x-protobuf"},
                )
                assert response.status_code == 200, response.text
                acked.update(batch)
        # Every connection carried requests; both processes hold some of them, so both served.
        for port in (service.grpc_port, service.http_port):
            held = accepted_connections([primary, worker], port)
            assert sum(held.values()) == CONNECTIONS, held
            assert all(held.values()), f"port {port}: connections per process {held}"
    finally:
        for channel in channels:
            channel.close()
        for client in clients:
            client.close()
    assert_delivered_exactly_once(openmeter, service, acked)
    stats = queue_stats(service)
    assert stats["accounting"]["accepted"] == len(acked)
    assert stats["accounting"]["deduplicated"] == 0
    assert service.metric("otlp_meter_workers") == 1
    # The primary's /metrics counts what the worker served too (it reports every second).
    requests = 3 * CONNECTIONS
    expected = {
        ("otlp_meter_receiver_requests_total", "grpc"): requests,
        ("otlp_meter_receiver_requests_total", "http_protobuf"): requests,
        ("otlp_meter_receiver_accepted_records_total", "grpc"): requests * 10,
        ("otlp_meter_receiver_accepted_records_total", "http_protobuf"): requests * 10,
        ("otlp_meter_receiver_request_duration_seconds_count", "grpc"): requests,
        ("otlp_meter_rules_matched_records_total", None): len(acked),
    }

    def counted() -> dict[tuple[str, str | None], float]:
        return {
            (name, transport): service.metric(name, {"transport": transport} if transport else None)
            for name, transport in expected
        }

    wait_until(lambda: counted() == expected, timeout=10, what=f"every request counted: {counted()}")
    assert service.metric("otlp_meter_receiver_requests_total", {"outcome": "ok"}) == 2 * requests
    assert service.metric("otlp_meter_queue_append_duration_seconds_count") == 2 * requests
    assert_valid_exposition(service)


def assert_valid_exposition(service: ServiceProcess) -> None:
    """The merged /metrics parses in both formats (and passes promtool where installed)."""
    text = httpx.get(f"{service.telemetry_url}/metrics", timeout=5).text
    openmetrics = httpx.get(
        f"{service.telemetry_url}/metrics", headers={"accept": OPENMETRICS}, timeout=5
    ).text
    families = parse_openmetrics(openmetrics)  # type: ignore[no-untyped-call]
    assert any(f.name == "otlp_meter_receiver_requests" for f in families)
    if shutil.which("promtool") is not None:
        checked = promtool_check(text)
        assert checked.returncode == 0, checked.stdout + checked.stderr


class Sender(threading.Thread):
    """Sends requests of 10 fresh seqs; retries each until acknowledged (like an SDK)."""

    def __init__(self, endpoint: str, first_seq: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.channel = Channel(endpoint)
        self.next_seq, self.stop = first_seq, stop
        self.acked: set[int] = set()
        self.progress = threading.Condition()

    def run(self) -> None:
        while not self.stop.is_set():
            seqs = range(self.next_seq, self.next_seq + 10)
            self.next_seq += 10
            while True:  # even after stop: an unacknowledged request is finished, not abandoned
                try:
                    self.channel.send(logs(seqs))
                    break
                except grpc.RpcError:
                    self.stop.wait(0.02)
            with self.progress:
                self.acked.update(seqs)
                self.progress.notify_all()
        self.channel.close()

    def wait_acked(self, count: int, timeout: float = 30.0) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.acked) >= count, timeout), "no progress"


def test_a_worker_killed_under_load_is_restarted_and_nothing_acknowledged_is_lost(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    service = service_factory(config(**WORKERS)).start()
    [worker] = worker_pids(service)
    stop = threading.Event()
    senders = [Sender(service.grpc_endpoint, n * 1_000_000, stop) for n in range(8)]
    for sender in senders:
        sender.start()
    try:
        for sender in senders:
            sender.wait_acked(50)
        # Both processes' snapshots in: the worker has reported at least once.
        wait_until(lambda: requests_counted(service) > 0, timeout=10, what="requests counted")
        before = requests_counted(service)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: ready_with_new_worker(service, worker), timeout=20, what="a new worker ready")
        # What the killed worker reported stays counted: the sum never drops.
        assert requests_counted(service) >= before
        for sender in senders:
            sender.wait_acked(len(sender.acked) + 50)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=60)
    acked = set().union(*(s.acked for s in senders))
    sent = len(acked) // 10
    # At most the killed worker's last interval is lost, and a request is counted at most once
    # per attempt (a request cut off with the worker may have been counted before its retry).
    wait_until(lambda: requests_counted(service) >= before, timeout=10, what="monotonic")
    assert requests_counted(service) <= sent + len(senders)
    assert_delivered_exactly_once(openmeter, service, acked)
    assert service.metric("otlp_meter_worker_exits_total") == 1
    [exited] = [e for e in service.log_events() if e["event"] == "worker_exited"]
    assert (exited["pid"], exited["signal"]) == (worker, "SIGKILL")
    stats = queue_stats(service)
    # Requests cut off with the worker were retried: committed twice at most, stored once.
    assert stats["accounting"]["accepted"] - stats["accounting"]["deduplicated"] == len(acked)


def test_sigterm_stops_the_workers_first_and_exits_cleanly(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    service = service_factory(config(**WORKERS)).start()
    [worker] = worker_pids(service)
    channel = Channel(service.grpc_endpoint)
    channel.send(logs(range(10)))
    channel.close()
    assert service.stop() == 0
    assert not alive(worker)
    events = service.log_events()
    done = [e for e in events if e["event"] == "shutdown_complete"]
    assert {e.get("worker") for e in done} == {None, 1}, "the worker shut down, then the primary"
    assert done[-1].get("worker") is None
    stopped = [e for e in events if e["event"] == "worker_stopped"]
    assert [(e["pid"], e["exit_code"]) for e in stopped] == [(worker, 0)]
    assert not [e for e in events if e["event"] == "worker_exited"]


def test_workers_exit_by_themselves_when_the_primary_is_killed(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    service = service_factory(config(**WORKERS)).start()
    [worker] = worker_pids(service)
    service.kill()
    wait_until(lambda: not alive(worker), timeout=10, what="the orphaned worker exiting")
    # Nothing is left holding the ports, the queue's owner lock or the LMDB environment.
    service.start()
    [again] = worker_pids(service)
    assert again != worker
    channel = Channel(service.grpc_endpoint)
    channel.send(logs(range(10)))
    channel.close()
    assert_delivered_exactly_once(openmeter, service, set(range(10)))


def test_one_worker_is_the_default_and_nothing_is_spawned(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    service = service_factory(config()).start()
    body: dict[str, Any] = httpx.get(f"{service.telemetry_url}/readyz", timeout=5).json()
    assert "workers" not in body["checks"]
    assert service.process is not None
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children").read_text().split()
    assert children == []
    assert service.metric("otlp_meter_workers") == 0


def test_every_process_converts_cumulative_points_but_only_the_primary_forgets_stale_streams(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    """Stream expiry deletes state every process reads: it runs in the primary alone, which tells
    the workers' commits through the state they expect. Each round's stream lands on whichever process the
    connection hashes to and is forgotten a second later; a worker that also ran expiry would log
    about half of them (all rounds passing it by: 1 in 16)."""
    rules = {"rules": {"packs": [], "inline": [PER_CUSTOMER_REQUESTS], "cumulative": {"max_staleness": "1s"}}}
    service = service_factory(merge(WORKERS, rules)).start()

    def expiries() -> list[dict[str, Any]]:
        return [e for e in service.log_events() if e["event"] == "cumulative_streams_expired"]

    for n in range(4):
        send_counter("grpc", service.grpc_endpoint, "api.requests", [(n + 1, {"customer": f"c{n}"})])
        wait_until(lambda n=n: len(expiries()) > n, timeout=20, what=f"stream c{n} forgotten")  # type: ignore[misc]
    assert [e.get("worker") for e in expiries()] == [None] * len(expiries())
    assert sorted(e["data"]["count"] for e in openmeter.wait_for_events(4)) == [1, 2, 3, 4]


def test_a_restarted_worker_runs_the_rule_files_the_primary_read_at_start(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter, tmp_path: Path
) -> None:
    """Rule files are read once, by the primary: an edit after the start (valid or not) reaches no
    process, not even a worker started again later, so every process bills by the same rules."""
    rule_file = tmp_path / "usage.yaml"
    rule_file.write_text(yaml.safe_dump({"rules": [seq_rule()]}))
    rules = {"rules": {"packs": [], "inline": [], "files": [str(rule_file)]}}
    service = service_factory(merge(WORKERS, rules)).start()
    [worker] = worker_pids(service)
    edited = seq_rule()
    edited["event"]["type"] = "edited"
    rule_file.write_text(yaml.safe_dump({"rules": [edited]}))
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: ready_with_new_worker(service, worker), timeout=20, what="a new worker ready")
    [again] = worker_pids(service)
    primary = service.process.pid if service.process else 0
    channels = [Channel(service.grpc_endpoint) for _ in range(CONNECTIONS)]
    try:
        for n, channel in enumerate(channels):
            channel.send(logs([n]))
        held = accepted_connections([primary, again], service.grpc_port)
        assert held[again] > 0, f"the new worker took no connection: {held}"
    finally:
        for channel in channels:
            channel.close()
    events = openmeter.wait_for_events(CONNECTIONS)
    assert {e["type"] for e in events} == {"usage"}
    rule_file.write_text("rules: [")  # not even a broken file stops a worker from starting again
    os.kill(again, signal.SIGKILL)
    wait_until(lambda: ready_with_new_worker(service, again), timeout=20, what="a worker ready again")
