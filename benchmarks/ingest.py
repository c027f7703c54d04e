"""Durable ingest throughput of the real service: OTLP/gRPC requests in, OpenMeter answering instantly.

``python -m benchmarks.ingest [--seconds N] [--records 1000] [--clients 4]`` is scenario S2 of
``python -m benchmarks`` with your own request size and client count: otlp-meter as a process
(sync on), a stub OpenMeter answering 204 in a process of its own, and one load-generator process
per client sending distinct GenAI log records (no dedupe hits) and waiting for every answer (an
answer means the events are committed to disk). It prints one table row.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.harness import Service
from benchmarks.loadgen import GRPC_LOGS, LoadSpec, Measurement, run_load
from benchmarks.payloads import Workload
from benchmarks.stub import StubOpenMeter


def run(seconds: float, records: int, clients: int) -> Measurement:
    workload = Workload("genai-logs", records)
    with StubOpenMeter() as stub, tempfile.TemporaryDirectory(prefix="otlp-meter-ingest-") as tmp:
        service = Service(Path(tmp), {"exporter": {"openmeter": {"url": stub.url}}})
        with service:
            specs = [
                LoadSpec(
                    "grpc", service.grpc_port, GRPC_LOGS, workload, first_client=c, seconds=seconds, warmup=2
                )
                for c in range(clients)
            ]
            return run_load(specs, service.pid, timeout=120 + 2 * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    m = run(args.seconds, args.records, args.clients)
    print(f"{'scenario':<34} {'records/s':>10} {'CPU µs/rec':>11} {'RSS MiB':>8} {'p50 ms':>7} {'p99 ms':>7}")
    name = f"gRPC {args.records}-rec x{args.clients} clients"
    print(
        f"{name:<34} {m.records / m.seconds:>10,.0f} {1e6 * m.cpu_seconds / m.records:>11.1f} "
        f"{m.rss_mib:>8.1f} {1e3 * m.percentile(50):>7.1f} {1e3 * m.percentile(99):>7.1f}"
    )


if __name__ == "__main__":
    main()
