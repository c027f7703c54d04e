"""The queue alone: CPU per event for appends, duplicate appends, and lease + ack (issue 5).

``python -m benchmarks.queue_bench [--events N] [--group G] [--runs R] [--sync]`` opens a fresh
:class:`otlp_meter.queue.LmdbQueue` in a temp directory per run and measures, with the process's
CPU time (both threads: the caller's event loop and the queue's writer):

* **append**: N new events in appends of G events (as a G-record request would bring them),
  dedupe on (the default window);
* **append copies**: the same N events again: every one is found in the dedupe window;
* **append, dedupe off**: N new events with ``dedupe_window: 0``, for scale;
* **lease + ack**: lease G events at a time (as the exporter does) and ack them, until empty;
* **drain (exporter)**: with ``--drain``, the whole way out: the service's exporter (batches of
  1000, 4 in flight, uvloop) posting to the suite's stub OpenMeter (another process) until the queue
  is empty: lease, batch body, HTTP, ack, metrics. CPU of this process per event delivered.

Each row reports the best and the median of ``runs`` runs, plus the bytes the ``events`` database
takes per event against the JSON payload. The events are built here in the shape (and the ~240
bytes) of what the genai pack makes of the benchmark's log records, each with its own id; no rules
engine runs, so the figures are the queue's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from otlp_meter.events import EncodedEvent
from otlp_meter.queue import LmdbQueue, QueueConfig

DRAIN_TIMEOUT = 300.0


def _events(count: int) -> list[EncodedEvent]:
    out = []
    for n in range(count):
        digits = f"{n:032x}"
        id = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
        kind, tokens = ("input", 100 + n % 900) if n % 2 == 0 else ("output", 20 + n % 400)
        payload = (
            f'{{"specversion":"1.0","id":"{id}","source":"chat-api","type":"prompt",'
            f'"subject":"customer-{n // 2 % 50}","time":"2026-01-01T00:00:00Z","data":{{"tokens":{tokens},'
            f'"model":"gpt-4o","provider":"openai","type":"{kind}"}}}}'
        )
        out.append(EncodedEvent("chat-api", id, payload.encode()))
    return out


def _open(directory: Path, sync: bool, **overrides: object) -> LmdbQueue:
    settings: dict[str, object] = {"directory": directory, "sync": sync, "max_bytes": 4 << 30}
    settings.update(overrides)
    queue = LmdbQueue(QueueConfig.model_validate(settings))
    queue.open()
    return queue


async def _append_all(queue: LmdbQueue, events: list[EncodedEvent], group: int) -> None:
    for start in range(0, len(events), group):
        await queue.append(events[start : start + group])


async def _drain(queue: LmdbQueue, group: int) -> int:
    done = 0
    while True:
        batch = queue.lease(group, 1 << 30)
        if not batch:
            return done
        await queue.ack(batch.seqs)  # the exporter's way: the batch's list of seqs
        done += len(batch)


def _events_db_bytes(queue: LmdbQueue) -> int:
    h = queue._handles  # a benchmark may look inside
    assert h is not None
    with h.env.begin() as txn:
        stat = txn.stat(h.events)
        return int(h.env.stat()["psize"]) * (
            stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        )


Measured = Callable[[], Awaitable[None]]


async def _cpu(step: Measured) -> float:
    started = time.process_time()
    await step()
    return time.process_time() - started


async def _drain_exporter(queue: LmdbQueue, url: str, expected: int, delivered: Callable[[], int]) -> None:
    """The service's exporter, as configured by default, until the stub has ``expected`` events."""
    from otlp_meter.exporters.config import ExporterConfig, Target
    from otlp_meter.exporters.delivery import Exporter
    from otlp_meter.exporters.openmeter import OpenMeterSink
    from otlp_meter.telemetry.metrics import Metrics

    config = ExporterConfig()
    sink = OpenMeterSink(Target("openmeter", f"{url}/api/v1/events"), 30.0, config.max_in_flight)
    exporter = Exporter(queue, sink, config, Metrics())
    exporter.start()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while delivered() < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"drained {delivered()} of {expected} events")
        await asyncio.sleep(0.005)
    await exporter.stop(5.0)


async def run_once(events: list[EncodedEvent], group: int, sync: bool) -> dict[str, float]:
    n = len(events)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="otlp-meter-queue-bench-") as tmp:
        queue = _open(Path(tmp) / "a", sync)
        try:
            out["append"] = await _cpu(lambda: _append_all(queue, events, group)) / n
            out["append copies"] = await _cpu(lambda: _append_all(queue, events, group)) / n
            json_bytes = sum(len(e.payload) for e in events)
            out["events DB / JSON"] = _events_db_bytes(queue) / json_bytes
            drained = 0

            async def drain() -> None:
                nonlocal drained
                drained = await _drain(queue, group)

            out["lease + ack"] = await _cpu(drain) / n
            assert drained == n, (drained, n)
        finally:
            queue.close()
        queue = _open(Path(tmp) / "b", sync, dedupe_window=0)
        try:
            out["append, dedupe off"] = await _cpu(lambda: _append_all(queue, events, group)) / n
        finally:
            queue.close()
    return out


async def drain_once(events: list[EncodedEvent], group: int, sync: bool, url: str, counted: Any) -> float:
    """CPU seconds per event of the exporter draining ``events`` (appended first, not measured)."""
    with tempfile.TemporaryDirectory(prefix="otlp-meter-queue-bench-") as tmp:
        queue = _open(Path(tmp) / "d", sync)
        try:
            await _append_all(queue, events, group)
            before = counted.value
            cpu = await _cpu(lambda: _drain_exporter(queue, url, len(events), lambda: counted.value - before))
            assert queue.stats().depth == 0
        finally:
            queue.close()
    return cpu / len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--group", type=int, default=1000, help="events per append and per lease")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="queue.sync on (default off: CPU, not fsync)")
    parser.add_argument("--drain", action="store_true", help="also the exporter's drain to a stub OpenMeter")
    args = parser.parse_args()
    events = _events(args.events)
    json_per_event = sum(len(e.payload) for e in events) / len(events)
    runs = [asyncio.run(run_once(events, args.group, args.sync)) for _ in range(args.runs)]
    if args.drain:
        import uvloop

        from benchmarks.stub import StubOpenMeter

        with StubOpenMeter() as stub:
            for run in runs:
                run["drain (exporter)"] = uvloop.run(
                    drain_once(events, args.group, args.sync, stub.url, stub.counters.events)
                )
    print(
        f"{args.events:,} events of {json_per_event:,.0f} B JSON, groups of {args.group}, "
        f"sync {'on' if args.sync else 'off'}, {args.runs} runs"
    )
    print(f"{'row':<22} {'best':>10} {'median':>10} {'events/CPU-s':>16}")
    for name in runs[0]:
        values = [r[name] for r in runs]
        best, median = min(values), statistics.median(values)
        if name.endswith("JSON"):
            print(f"{name:<22} {best:>9.3f}x {median:>9.3f}x")
        else:
            print(f"{name:<22} {best * 1e6:>8.2f}µs {median * 1e6:>8.2f}µs {1 / best:>16,.0f}")


if __name__ == "__main__":
    main()
