"""Durable ingest throughput of the real service: OTLP/gRPC requests in, OpenMeter answering instantly.

``python -m benchmarks.ingest [--seconds N] [--records 1000] [--clients 4]`` starts otlp-meter as a
process (sync on), a stub OpenMeter that answers 204 at once, and load generators in other
processes; each generator sends distinct GenAI log records (no dedupe hits) and waits for every
answer (an answer means the events are committed to disk). It prints one table row.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support.service import free_port

T0 = 1_767_225_600_000_000_000
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


class _Instant(BaseHTTPRequestHandler):
    delivered = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).delivered += body.count(b'"specversion"')
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def build_request(client: int, sequence: int, records: int) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name", value=AnyValue(string_value="chat-api"))
    scope_logs = resource_logs.scope_logs.add()
    for i in range(records):
        record = scope_logs.log_records.add(time_unix_nano=T0 + (client << 40) + sequence * records + i)
        record.body.string_value = "chat completion"
        record.attributes.extend(
            [
                KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=100 + i)),
                KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=200 + i)),
                KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o")),
                KeyValue(key="gen_ai.provider.name", value=AnyValue(string_value="openai")),
                KeyValue(key="openmeter.subject", value=AnyValue(string_value=f"customer-{i % 50}")),
            ]
        )
    return request.SerializeToString()


def _generate(endpoint: str, client: int, records: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    bodies = [build_request(client, s, records) for s in range(int(seconds * 400 / records) + 50)]
    latencies: list[float] = []
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(EXPORT)
        deadline = time.monotonic() + seconds
        for body in bodies:
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            export(body, timeout=30)
            latencies.append(time.perf_counter() - started)
    out.put(latencies)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Result:
    records_per_s: float
    cpu_us_per_record: float
    rss_mib: float
    p50_ms: float
    p99_ms: float
    delivered: int


def run(seconds: float, records: int, clients: int) -> Result:
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Instant)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        grpc_port, telemetry_port = free_port(), free_port()
        config = {
            "receivers": {
                "otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}, "http": {"enabled": False}}
            },
            "queue": {"directory": f"{tmp}/data", "sync": True},
            "exporter": {"openmeter": {"url": f"http://127.0.0.1:{stub.server_port}"}},
            "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "logs": {"level": "warn"}},
        }
        Path(f"{tmp}/config.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENMETER_")}
        service = subprocess.Popen(
            [sys.executable, "-m", "otlp_meter", "run", "--config", f"{tmp}/config.yaml"], env=env
        )
        try:
            for _ in range(500):
                try:
                    if httpx.get(f"http://127.0.0.1:{telemetry_port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            procs = [
                multiprocessing.Process(
                    target=_generate, args=(f"127.0.0.1:{grpc_port}", c, records, seconds, out)
                )
                for c in range(clients)
            ]
            cpu_before = _cpu_seconds(service.pid)
            started = time.perf_counter()
            for p in procs:
                p.start()
            latencies = [lat for _ in procs for lat in out.get()]
            elapsed = time.perf_counter() - started
            cpu = _cpu_seconds(service.pid) - cpu_before
            rss = _rss_mib(service.pid)
            for p in procs:
                p.join()
        finally:
            service.terminate()
            service.wait(60)
            stub.shutdown()
    total = len(latencies) * records
    latencies.sort()
    return Result(
        records_per_s=total / elapsed,
        cpu_us_per_record=cpu / total * 1e6,
        rss_mib=rss,
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        delivered=_Instant.delivered,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    result = run(args.seconds, args.records, args.clients)
    print(f"{'scenario':<34} {'records/s':>10} {'CPU µs/rec':>11} {'RSS MiB':>8} {'p50 ms':>7} {'p99 ms':>7}")
    name = f"gRPC {args.records}-rec x{args.clients} clients"
    print(
        f"{name:<34} {result.records_per_s:>10,.0f} {result.cpu_us_per_record:>11.1f} {result.rss_mib:>8.1f} "
        f"{result.p50_ms:>7.1f} {result.p99_ms:>7.1f}"
    )


if __name__ == "__main__":
    main()
