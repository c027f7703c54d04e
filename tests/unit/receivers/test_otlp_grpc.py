"""OTLP/gRPC, served in-process with grpc.aio on 127.0.0.1:0 and called through real channels with
the generated OpenTelemetry stubs. Status codes follow the status table; a retryable refusal carries
a ``google.rpc.Status`` with RetryInfo in the ``grpc-status-details-bin`` trailer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otlp_meter.receivers.config import GrpcReceiverConfig
from otlp_meter.receivers.core import ReceiverCore
from otlp_meter.receivers.otlp_grpc import OtlpGrpcReceiver, server_options
from tests.unit.receivers.conftest import Stack, StackFactory, counter_metrics, genai_logs, mixed_logs

LIMIT = 64 * 1024
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


class Served:
    """A running receiver and a channel to it."""

    def __init__(self, receiver: OtlpGrpcReceiver, channel: grpc.aio.Channel) -> None:
        self.receiver = receiver
        self.channel = channel
        self.logs = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
        self.metrics = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        self.traces = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]

    async def raw_logs_export(self, body: bytes) -> bytes:
        call = self.channel.unary_unary(LOGS_EXPORT)  # no serializers: bytes as they are
        result: bytes = await call(body, timeout=10)
        return result


ServeFactory = Callable[[Stack], Coroutine[Any, Any, Served]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    running: list[Served] = []

    async def start(stack: Stack) -> Served:
        config = GrpcReceiverConfig(endpoint="127.0.0.1:0", max_recv_msg_size=LIMIT)
        receiver = OtlpGrpcReceiver(config, stack.core)
        await receiver.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}")
        served = Served(receiver, channel)
        running.append(served)
        return served

    yield start
    for served in running:
        await served.channel.close()
        await served.receiver.stop(0)


@pytest.fixture
async def served(serve: ServeFactory, stack: Stack) -> Served:
    return await serve(stack)


def retry_info_of(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    """RetryInfo from the ``grpc-status-details-bin`` trailer (whose Status must match the call's)."""
    details = [value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"]
    if not details:
        return None
    status = status_pb2.Status.FromString(details[0])
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


# -- the server ------------------------------------------------------------------------------------


async def test_port_zero_reports_the_port_actually_bound(served: Served) -> None:
    port = served.receiver.port
    assert port is not None
    assert port > 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


async def test_a_port_in_use_is_an_oserror_from_start(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        receiver = OtlpGrpcReceiver(GrpcReceiverConfig(endpoint=f"127.0.0.1:{port}"), stack.core)

        with pytest.raises(OSError, match=str(port)):
            await receiver.start()


async def test_two_receivers_cannot_share_a_port(serve: ServeFactory, stack: Stack) -> None:
    first = await serve(stack)
    second = OtlpGrpcReceiver(GrpcReceiverConfig(endpoint=f"127.0.0.1:{first.receiver.port}"), stack.core)

    with pytest.raises(OSError, match="cannot listen"):
        await second.start()


# -- accepted ---------------------------------------------------------------------------------------


async def test_logs_are_queued(served: Served, stack: Stack) -> None:
    response = await served.logs.Export(genai_logs("acme", "globex"), timeout=10)

    assert response == ExportLogsServiceResponse()
    assert sorted(e["subject"] for e in stack.queued()) == ["acme", "globex"]
    assert stack.count("receiver_accepted_records", transport="grpc", signal="logs") == 2
    assert stack.count("receiver_requests", transport="grpc", signal="logs", outcome="ok") == 1


async def test_metrics_are_queued(served: Served, stack: Stack) -> None:
    response = await served.metrics.Export(counter_metrics("acme", "globex"), timeout=10)

    assert response == ExportMetricsServiceResponse()
    assert {e["subject"]: e["data"]["count"] for e in stack.queued()} == {"acme": 1, "globex": 2}
    assert stack.count("receiver_accepted_records", transport="grpc", signal="metrics") == 2


async def test_traces_are_accepted_and_discarded(served: Served, stack: Stack) -> None:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(name="GET /", trace_id=b"\x01" * 16)

    response = await served.traces.Export(request, timeout=10)

    assert response == ExportTraceServiceResponse()
    assert stack.queue.stats().depth == 0


async def test_gzip_compressed_calls_work(served: Served, stack: Stack) -> None:
    response = await served.logs.Export(genai_logs("acme"), compression=grpc.Compression.Gzip, timeout=10)

    assert response == ExportLogsServiceResponse()
    assert len(stack.queued()) == 1


async def test_records_a_rule_rejects_are_reported_in_partial_success(served: Served, stack: Stack) -> None:
    response = await served.logs.Export(mixed_logs(), timeout=10)

    assert response.partial_success.rejected_log_records == 1
    assert "genai-input-tokens" in response.partial_success.error_message
    assert len(stack.queued()) == 1
    assert stack.queue.stats().dead_letters == 1
    assert stack.count(
        "receiver_refused_records", transport="grpc", signal="logs", reason="rejected_by_rules"
    )
    assert stack.count("receiver_requests", transport="grpc", signal="logs", outcome="partial") == 1


# -- refused ---------------------------------------------------------------------------------------


async def test_malformed_bytes_are_invalid_argument_without_retry_info(served: Served, stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.raw_logs_export(b"\xff\xff\xff\xff")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in (caught.value.details() or "")
    assert retry_info_of(caught.value) is None
    assert stack.count("receiver_requests", transport="grpc", signal="logs", outcome="malformed") == 1


async def test_well_formed_raw_bytes_are_the_same_as_a_stub_call(served: Served, stack: Stack) -> None:
    answer = await served.raw_logs_export(genai_logs("acme").SerializeToString())

    assert ExportLogsServiceResponse.FromString(answer) == ExportLogsServiceResponse()
    assert len(stack.queued()) == 1


async def test_a_message_over_max_recv_msg_size_is_resource_exhausted(served: Served, stack: Stack) -> None:
    request = genai_logs(*[f"customer-{i:05d}" for i in range(2000)])
    assert request.ByteSize() > LIMIT

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.logs.Export(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stack.queue.stats().depth == 0


async def test_a_full_queue_is_unavailable_with_retry_info(
    serve: ServeFactory, make_stack: StackFactory
) -> None:
    stack = make_stack(max_bytes=64)
    served = await serve(stack)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.logs.Export(genai_logs("acme", "globex"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue full" in (caught.value.details() or "")
    info = retry_info_of(caught.value)
    assert info is not None
    assert 1 <= info.retry_delay.ToTimedelta().total_seconds() <= 30
    assert stack.queue.stats().depth == 0
    assert stack.count("receiver_refused_records", transport="grpc", signal="logs", reason="queue_full") == 2
    assert stack.count("receiver_requests", transport="grpc", signal="logs", outcome="queue_full") == 1


async def test_after_intake_closes_calls_are_unavailable_with_retry_info(
    served: Served, stack: Stack
) -> None:
    stack.pipeline.close_intake()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.metrics.Export(counter_metrics("acme"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert retry_info_of(caught.value) is not None


async def test_a_bug_in_the_core_is_unavailable_not_internal(serve: ServeFactory, stack: Stack) -> None:
    class BrokenCore(ReceiverCore):
        async def export(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

    served = await serve(
        Stack(stack.queue, stack.pipeline, BrokenCore(stack.pipeline, stack.metrics), stack.metrics)
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.logs.Export(genai_logs("acme"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # nothing stored: the sender keeps it
    assert retry_info_of(caught.value) is not None


def test_connection_lifetime_settings_become_grpc_server_options() -> None:
    config = GrpcReceiverConfig.model_validate(
        {"idle_timeout": "5m", "max_connection_age": "10m", "max_connection_age_grace": "20s"}
    )
    options = dict(server_options(config, reuse_port=False))
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 20_000
    assert options["grpc.so_reuseport"] == 0
    defaults = dict(server_options(GrpcReceiverConfig(), reuse_port=True))
    assert "grpc.max_connection_idle_ms" not in defaults, "never closed for idleness unless asked"
    assert "grpc.max_connection_age_ms" not in defaults
    assert defaults["grpc.so_reuseport"] == 1


async def test_an_idle_connection_is_closed_and_the_client_reconnects(stack: Stack) -> None:
    config = GrpcReceiverConfig(endpoint="127.0.0.1:0", idle_timeout=0.2)
    receiver = OtlpGrpcReceiver(config, stack.core)
    await receiver.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}")
    try:
        logs = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
        await logs.Export(genai_logs("acme"), timeout=10)
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        # The server sends GOAWAY after 0.2 s without RPCs: the channel leaves READY by itself.
        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10)
        assert channel.get_state() != grpc.ChannelConnectivity.READY
        await logs.Export(genai_logs("acme"), timeout=10)  # and reconnects when it next sends
    finally:
        await channel.close()
        await receiver.stop(0)
