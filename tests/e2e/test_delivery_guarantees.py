"""Delivery under faults, end to end: the real service as a process, real LMDB, the fake OpenMeter.

An acknowledged event is never lost and never counted twice: not when the service is SIGKILLed
again and again while OpenMeter flaps, not when one event is poison, the queue fills, OpenMeter is
down for long, or a record rots on disk. Every record carries a unique ``seq`` attribute, which the
test rule copies into the event, so what arrived can be checked against what was acknowledged.
"""

from __future__ import annotations

import bisect
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import httpx
import lmdb
import orjson
import pytest
import yaml
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from tests.e2e.conftest import ServiceFactory
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import ServiceProcess, merge, wait_until

pytestmark = pytest.mark.e2e

ADMIN = [sys.executable, "-m", "otlp_meter"]
"""The queue/dlq commands (the same handlers ``otlp-meter queue|dlq`` dispatches to)."""
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def seq_rule(subject: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "usage",
        "match": {"signal": "logs", "where": [{"path": "attributes.seq", "exists": True}]},
        "event": {
            "type": "usage",
            "source": "chaos-client",
            "subject": subject or {"path": "attributes.customer"},
            "data": {"seq": {"path": "attributes.seq", "as": "int"}},
        },
    }


def config(**sections: Any) -> dict[str, Any]:
    """The service config of these tests: only the seq rule, no shipped packs."""
    return merge({"rules": {"packs": [], "inline": [seq_rule()]}}, sections)


def logs(seqs: Iterable[int], customer: str | None = "acme", pad: int = 0) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    scope_logs = request.resource_logs.add().scope_logs.add()
    for seq in seqs:
        record = scope_logs.log_records.add(time_unix_nano=T0 + seq * 1_000_000)
        record.attributes.add(key="seq").value.int_value = seq
        if customer is not None:
            record.attributes.add(key="customer").value.string_value = customer
        if pad:
            record.attributes.add(key="pad").value.string_value = "x" * pad
    return request


class LogsClient:
    """A raw gRPC OTLP logs client that reconnects fast (the service restarts under it).

    ``own_connection``: a TCP connection of its own, not a subchannel shared with other clients.
    """

    def __init__(self, endpoint: str, *, own_connection: bool = False, timeout: float = 5.0) -> None:
        options = [
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200),
        ]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.timeout = timeout
        self.channel = grpc.insecure_channel(endpoint, options=options)
        self.export = self.channel.unary_unary(
            EXPORT,
            request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString,
        )

    def send(self, request: ExportLogsServiceRequest) -> ExportLogsServiceResponse:
        response: ExportLogsServiceResponse = self.export(request, timeout=self.timeout)
        return response

    def close(self) -> None:
        self.channel.close()


def admin(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADMIN, *argv], capture_output=True, text=True, timeout=60)


def queue_stats(service: ServiceProcess) -> dict[str, Any]:
    done = admin("queue", "stats", "--json", "--config", str(service.config_path))
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = orjson.loads(done.stdout)
    acc = document["accounting"]
    assert (acc["unaccounted_events"], acc["unaccounted_dead_letters"]) == (0, 0), acc
    return document


def seqs_of(events: Iterable[dict[str, Any]]) -> list[int]:
    return [int(e["data"]["seq"]) for e in events]


# -- SIGKILL, again and again ------------------------------------------------------------------


class Sender(threading.Thread):
    """Sends requests of 10 records with fresh seqs; retries each until acknowledged (like an SDK)."""

    def __init__(self, client: LogsClient, first_seq: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.next_seq, self.stop = client, first_seq, stop
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.refusals = 0
        self.progress = threading.Condition()

    def run(self) -> None:
        while not self.stop.is_set():
            seqs = range(self.next_seq, self.next_seq + 10)
            self.next_seq += 10
            request = logs(seqs)
            self.sent.update(seqs)
            while True:  # even after stop: an unacked request is finished, not abandoned
                try:
                    self.client.send(request)
                    break
                except grpc.RpcError:
                    self.refusals += 1
                    self.stop.wait(0.02)  # the client's own retry backoff
            with self.progress:
                self.acked.update(seqs)
                self.progress.notify_all()

    def wait_acked(self, count: int, timeout: float = 30.0) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.acked) >= count, timeout), "no progress"


class Flapper(threading.Thread):
    """OpenMeter alternates between failing (503) and accepting a few requests at a time."""

    def __init__(self, openmeter: FakeOpenMeter, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.openmeter, self.rng, self.stop = openmeter, rng, stop

    def run(self) -> None:
        while not self.stop.is_set():
            failing, passing = self.rng.randint(1, 4), self.rng.randint(1, 4)
            self.openmeter.fail_next(failing, 503)
            target = len(self.openmeter.requests) + failing + passing
            while not self.stop.is_set():
                try:
                    self.openmeter.wait_for_requests(target, timeout=0.2)
                    break
                except AssertionError:
                    continue  # the service is down or backing off; look at the stop flag again


def test_repeated_sigkill_while_sending_and_openmeter_flaps_loses_nothing_and_counts_nothing_twice(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    rng = random.Random(4)
    kills = 8
    service = service_factory(config(exporter={"batch": {"max_events": 50}})).start()
    stop_sending, stop_flapping = threading.Event(), threading.Event()
    clients = [LogsClient(service.grpc_endpoint) for _ in range(2)]
    senders = [Sender(client, first_seq=n * 1_000_000, stop=stop_sending) for n, client in enumerate(clients)]
    flapper = Flapper(openmeter, rng, stop_flapping)
    incarnations: list[int] = []  # index of the first request of each restarted service
    for thread in (*senders, flapper):
        thread.start()
    try:
        for _ in range(kills):
            # Kill at a random moment: after some more acknowledged requests, or just as OpenMeter
            # has a batch in hand (acked on the wire, maybe not yet in the queue).
            if rng.random() < 0.5:
                sender = rng.choice(senders)
                sender.wait_acked(len(sender.acked) + 10 * rng.randint(3, 25))
            else:
                openmeter.wait_for_received(openmeter.received + rng.randint(1, 3), timeout=30)
            service.kill()
            # Requests from here on come from the next incarnation (it needs far longer to start
            # than the fake needs to answer what the killed one had sent).
            incarnations.append(len(openmeter.requests))
            service.start()
    finally:
        stop_sending.set()
        for sender in senders:
            sender.join(timeout=60)
        stop_flapping.set()
        flapper.join(timeout=10)
        for client in clients:
            client.close()
    openmeter.clear_faults()

    acked = set().union(*(s.acked for s in senders))
    sent = set().union(*(s.sent for s in senders))
    assert acked == sent  # every sender finished its last request
    wait_until(lambda: acked <= set(seqs_of(openmeter.events)), timeout=30, what="every acked seq delivered")
    wait_until(lambda: service.metric("otlp_meter_queue_depth_events") == 0, timeout=30, what="drained")
    assert service.stop() == 0

    events = openmeter.events
    ids_per_seq: dict[int, set[tuple[str, str]]] = {}
    for event in events:
        ids_per_seq.setdefault(int(event["data"]["seq"]), set()).add((event["source"], event["id"]))
    lost = acked - ids_per_seq.keys()
    assert not lost
    assert ids_per_seq.keys() <= sent
    assert all(len(ids) == 1 for ids in ids_per_seq.values())  # one id per record: no double count
    duplicates = sum(n - 1 for n in Counter((e["source"], e["id"]) for e in events).values())
    # A copy on the wire only ever comes from a lease re-sent after a restart: no incarnation of
    # the service delivered the same event twice.
    delivered_by: dict[tuple[str, str], list[int]] = {}
    for index, request in enumerate(openmeter.requests):
        for event in request.events:
            delivered_by.setdefault((event["source"], event["id"]), []).append(
                bisect.bisect_right(incarnations, index)
            )
    assert all(len(set(runs)) == len(runs) for runs in delivered_by.values())
    stats = queue_stats(service)
    assert (
        stats["accounting"]["delivered"]
        == len(acked)
        == stats["accounting"]["accepted"] - stats["accounting"]["deduplicated"]
    )
    print(
        f"\nchaos: kills={kills} acked_events={len(acked)} delivered_unique={len(ids_per_seq)} "
        f"lost={len(lost)} wire_duplicates={duplicates} requests_to_openmeter={len(openmeter.requests)} "
        f"client_retries={sum(s.refusals for s in senders)} deduplicated_at_intake="
        f"{stats['accounting']['deduplicated']}"
    )


# -- one poison event ----------------------------------------------------------------------------


def test_one_poison_event_in_a_batch_of_1000_is_dead_lettered_with_the_reason_and_999_are_delivered(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.reject_events(lambda e: e["data"]["seq"] == 537, status=400)
    service = service_factory(config()).start()
    client = LogsClient(service.grpc_endpoint)
    try:
        client.send(logs(range(1000)))  # one request, one commit: the exporter leases one batch of 1000
    finally:
        client.close()

    delivered = openmeter.wait_for_events(999)
    wait_until(lambda: service.metric("otlp_meter_exporter_dead_lettered_events_total") == 1, what="poison")
    assert sorted(seqs_of(delivered)) == [n for n in range(1000) if n != 537]
    first = openmeter.requests[0]
    assert (first.status, len(first.json())) == (400, 1000)  # one batch of all 1000

    listing = admin("dlq", "list", "--json", "--config", str(service.config_path))
    assert listing.returncode == 0, listing.stderr
    [dead] = [orjson.loads(line) for line in listing.stdout.splitlines()]
    assert (dead["kind"], dead["event"]["data"]["seq"]) == ("event", 537)
    assert dead["reason"].startswith("refused by OpenMeter with 400")
    assert "rejected (source='chaos-client'" in dead["reason"]  # the server's own answer

    # Fixed on the OpenMeter side: put it back; the running service delivers it.
    openmeter.reject_events(None)
    replay = admin("dlq", "replay", "--to-queue", "--config", str(service.config_path))
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 dead letters: 1 events queued" in replay.stdout
    assert sorted(seqs_of(openmeter.wait_for_events(1000))) == list(range(1000))
    assert openmeter.duplicates() == []
    stats = queue_stats(service)
    assert (stats["dead_letters"]["count"], stats["accounting"]["replayed"]) == (0, 1)


# -- backpressure --------------------------------------------------------------------------------


def test_a_full_queue_refuses_retryably_turns_unready_and_recovers_once_the_exporter_drains(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.set_down(503)
    service = service_factory(config(queue={"max_bytes": "64KiB"})).start()
    client = LogsClient(service.grpc_endpoint)
    acked: list[int] = []
    try:
        refused: grpc.RpcError | None = None
        for n in range(100):
            seqs = range(n * 20, n * 20 + 20)
            try:
                client.send(logs(seqs, pad=200))
            except grpc.RpcError as exc:
                refused = exc
                break
            acked.extend(seqs)
        assert isinstance(refused, grpc.Call), "the queue never filled"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        details = dict(refused.trailing_metadata() or ())["grpc-status-details-bin"]
        [detail] = status_pb2.Status.FromString(details).details
        retry = error_details_pb2.RetryInfo()
        assert detail.Unpack(retry)
        assert 1 <= retry.retry_delay.seconds <= 30

        over_http = httpx.post(
            f"{service.http_url}/v1/logs",
            content=logs(range(5000, 5020), pad=200).SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
        )
        assert over_http.status_code == 503
        assert 1 <= int(over_http.headers["retry-after"]) <= 30
        ready = httpx.get(f"{service.telemetry_url}/readyz")
        assert (ready.status_code, ready.json()["reason"]) == (503, "queue full")

        openmeter.set_down(None)
        wait_until(lambda: httpx.get(f"{service.telemetry_url}/readyz").status_code == 200, what="ready")
        client.send(logs(range(5000, 5020), pad=200))  # what was refused is taken now
        acked.extend(range(5000, 5020))
    finally:
        client.close()
    delivered = openmeter.wait_for_events(len(acked))
    assert sorted(seqs_of(delivered)) == sorted(acked)
    assert openmeter.duplicates() == []


def test_a_long_outage_drains_completely_afterwards(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.set_down(503)
    service = service_factory(config(exporter={"batch": {"max_events": 100}, "max_in_flight": 4})).start()
    client = LogsClient(service.grpc_endpoint)
    try:
        for n in range(20):
            client.send(logs(range(n * 100, n * 100 + 100)))
    finally:
        client.close()
    openmeter.wait_for_requests(80, timeout=30)  # every batch in flight has been retried many times
    assert openmeter.events == []

    openmeter.set_down(None)
    delivered = openmeter.wait_for_events(2000, timeout=30)

    assert sorted(seqs_of(delivered)) == list(range(2000))
    assert openmeter.duplicates() == []
    assert service.metric("otlp_meter_exporter_retries_total") >= 76
    wait_until(lambda: service.metric("otlp_meter_queue_depth_events") == 0, what="drained")
    assert queue_stats(service)["accounting"]["delivered"] == 2000


# -- a record rotten on disk ---------------------------------------------------------------------


def test_a_record_corrupted_on_disk_is_moved_aside_and_counted_and_the_rest_is_delivered(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter
) -> None:
    openmeter.set_down(503)
    service = service_factory(config()).start()
    client = LogsClient(service.grpc_endpoint)
    try:
        for n in range(20):  # a request each: a stored record (a group of events) each
            client.send(logs([n]))
    finally:
        client.close()
    assert service.stop() == 0

    env = lmdb.open(str(Path(service.config["queue"]["directory"]) / "queue"), max_dbs=8, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(b"events")) as txn:
            key, value = list(txn.cursor())[7]
            txn.put(key, b"\x01\xff\xfe garbage".ljust(len(value), b"\x00"))
    finally:
        env.close()
    openmeter.set_down(None)
    service.start()

    delivered = openmeter.wait_for_events(19)
    wait_until(lambda: service.metric("otlp_meter_queue_depth_events") == 0, what="drained")
    assert len(set(seqs_of(delivered))) == 19
    assert any(e["event"] == "queue_record_corrupt" for e in service.log_events())
    stats = queue_stats(service)  # read-only, next to the running service
    assert stats["service_running"]
    assert (stats["corrupt_records"], stats["accounting"]["corrupt"], stats["accounting"]["delivered"]) == (
        1,
        1,
        19,
    )


# -- replay after fixing the rules -----------------------------------------------------------------


def test_a_record_the_rules_rejected_is_delivered_after_replay_through_corrected_rules(
    service_factory: ServiceFactory, openmeter: FakeOpenMeter, tmp_path: Path
) -> None:
    service = service_factory(config()).start()
    client = LogsClient(service.grpc_endpoint)
    try:
        response = client.send(logs([1, 2], customer=None))  # no subject: the rule rejects both
        client.send(logs([3]))
    finally:
        client.close()
    assert response.partial_success.rejected_log_records == 2
    openmeter.wait_for_events(1)
    assert queue_stats(service)["dead_letters"]["count"] == 2

    fixed = merge(
        service.config, {"rules": {"inline": [seq_rule({"path": "attributes.customer", "default": "n/a"})]}}
    )
    fixed_path = tmp_path / "fixed.yaml"
    fixed_path.write_text(yaml.safe_dump(fixed))
    replay = admin("dlq", "replay", "--through-rules", "--config", str(fixed_path))

    assert replay.returncode == 0, replay.stderr
    assert "replayed 2 dead letters: 2 events queued" in replay.stdout
    events = openmeter.wait_for_events(3)  # the running service picks the replayed events up
    assert {e["data"]["seq"]: e["subject"] for e in events} == {1: "n/a", 2: "n/a", 3: "acme"}
    assert queue_stats(service)["dead_letters"]["count"] == 0
