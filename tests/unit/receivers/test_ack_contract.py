"""The acknowledgement contract (DESIGN.md "Acknowledgement"): a receiver answers success only after
the events of the request are committed to LMDB with sync on.

The proof uses a witness: another *process* that opens the queue's LMDB environment read-only and
counts the stored events when asked (reading the records with lmdb alone). LMDB readers never see
uncommitted data, so whatever the witness counts at the moment the answer is sent is committed.
Commits are slowed down on purpose, so an answer that raced ahead of its commit would be caught, not
merely unlikely.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from otlp_meter.http_server import Message, Receive, Scope, Send
from otlp_meter.queue import writer
from otlp_meter.receivers.config import GrpcReceiverConfig, HttpReceiverConfig
from otlp_meter.receivers.otlp_grpc import OtlpGrpcReceiver
from otlp_meter.receivers.otlp_http import otlp_http_app
from tests.unit.receivers.conftest import Stack, StackFactory, genai_logs

COMMIT_DELAY = 0.3

WITNESS = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, max_dbs=16, subdir=True)
events = env.open_db(b"events", create=False)
print("ready", flush=True)
def events_in(value):  # a group (envelope 3) says how many events it holds; older records hold one
    return int.from_bytes(value[13:17], "big") if value[:1] == b"\\x03" else 1
for _ in sys.stdin:
    with env.begin() as txn:
        print(sum(events_in(value) for _key, value in txn.cursor(db=events)), flush=True)
"""


class Witness:
    """A separate process that counts committed events on request (a line in, a number out)."""

    def __init__(self, queue_path: Path) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", WITNESS, str(queue_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._readline() == "ready"

    def _readline(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def committed_events(self) -> int:
        assert self._process.stdin is not None
        self._process.stdin.write("count\n")
        self._process.stdin.flush()
        return int(self._readline())

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


@pytest.fixture
def synced_stack(make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """A queue with sync on whose commits each take COMMIT_DELAY longer (in the writer thread)."""
    stack = make_stack(sync=True)
    finish = writer.Group.finish

    def slow_finish(self: writer.Group) -> None:
        time.sleep(COMMIT_DELAY)
        finish(self)

    monkeypatch.setattr(writer.Group, "finish", slow_finish)
    return stack


@pytest.fixture
def witness(synced_stack: Stack) -> Iterator[Witness]:
    observer = Witness(synced_stack.queue.config.path)
    yield observer
    observer.close()


async def test_http_answers_only_after_the_events_are_committed(
    synced_stack: Stack, witness: Witness
) -> None:
    app = otlp_http_app(HttpReceiverConfig(), synced_stack.core)
    seen_at_answer: list[int] = []

    async def observed_app(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_and_observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen_at_answer.append(witness.committed_events())
            await send(message)

        await app(scope, receive, send_and_observe)

    body = genai_logs("acme", "globex", "initech").SerializeToString()
    started = time.monotonic()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=observed_app), base_url="http://t") as c:
        response = await c.post("/v1/logs", content=body, headers={"content-type": "application/x-protobuf"})

    assert response.status_code == 200
    assert seen_at_answer == [3]
    assert time.monotonic() - started >= COMMIT_DELAY


async def test_grpc_answers_only_after_the_events_are_committed(
    synced_stack: Stack, witness: Witness
) -> None:
    receiver = OtlpGrpcReceiver(GrpcReceiverConfig(endpoint="127.0.0.1:0"), synced_stack.core)
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
            await channel.channel_ready()
            started = time.monotonic()
            await stub.Export(genai_logs("acme", "globex"), timeout=10)
            answered_after = time.monotonic() - started
            seen_at_answer = witness.committed_events()
    finally:
        await receiver.stop(0)

    assert seen_at_answer == 2
    assert answered_after >= COMMIT_DELAY


async def test_a_refused_request_leaves_nothing_behind(make_stack: StackFactory) -> None:
    stack = make_stack(sync=True, max_bytes=64)
    witness = Witness(stack.queue.config.path)
    try:
        app = otlp_http_app(HttpReceiverConfig(), stack.core)
        body = genai_logs("acme", "globex").SerializeToString()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            response = await c.post(
                "/v1/logs", content=body, headers={"content-type": "application/x-protobuf"}
            )
        assert response.status_code == 503
        assert witness.committed_events() == 0
    finally:
        witness.close()
