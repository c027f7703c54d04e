"""Fill a queue directly with N GenAI events, as if the service had accepted them during an outage.

``python -m benchmarks.queue_fill --directory DIR --events N [--max-bytes B]`` opens the queue in
DIR with :class:`otlp_meter.queue.LmdbQueue` (the service's own code) and appends N distinct events in
grouped commits, with their dedupe keys. The payloads are what the genai pack makes of the
benchmark's log records (mapped once by the real rules engine), each given a new id. Going
through the service instead would take ~30 s per million events; this takes a third of that. Used
for S6 at 10M events; sync is off while filling (it is setup, not measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from benchmarks.payloads import Workload, template
from otlp_meter.events import EncodedEvent
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.rules import RulesConfig, RulesEngine

BATCH = 10_000


def sample_events() -> list[EncodedEvent]:
    """The 2000 events the genai pack makes of one 1000-record benchmark request."""
    request = ExportLogsServiceRequest.FromString(template(Workload("genai-logs", 1000), 0).render(0))
    engine = RulesEngine.from_config(RulesConfig(packs=["genai"]))
    return list(engine.map_logs(request, time.time_ns()).events)


def _with_id(event: EncodedEvent, n: int) -> EncodedEvent:
    digits = f"{n:032x}"
    new_id = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    payload = event.payload.replace(event.id.encode(), new_id.encode(), 1)
    return EncodedEvent(event.source, new_id, payload, event.time_ms)


async def fill(directory: Path, events: int, max_bytes: int, progress: bool = True) -> float:
    """Append ``events`` events; returns the events per second it took."""
    samples = sample_events()
    queue = LmdbQueue(QueueConfig(directory=directory, max_bytes=max_bytes, sync=False))
    queue.open()
    started = time.monotonic()
    try:
        done = 0
        while done < events:
            count = min(BATCH, events - done)
            batch = [_with_id(samples[(done + i) % len(samples)], done + i) for i in range(count)]
            await queue.append(batch)
            done += count
            if progress and done % 1_000_000 == 0:
                print(f"[queue_fill] {done:,} events", flush=True)
    finally:
        queue.close()
    return events / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--directory", type=Path, required=True, help="the service's queue.directory")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--max-bytes", type=int, default=8 << 30, help="queue.max_bytes (as the service's)")
    args = parser.parse_args()
    rate = asyncio.run(fill(args.directory, args.events, args.max_bytes))
    print(f"[queue_fill] {args.events:,} events at {rate:,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
