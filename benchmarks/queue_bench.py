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

``--prefill N[,N…]`` measures instead how appends scale with the dedupe index (issue 5): for each
N, a fresh queue whose ``dedupe`` database is first filled with N keys (schema-3 keys as
:func:`otlp_meter.queue.codec.event_dedupe_key` makes them: the times of N earlier events at 20,000
events/s, ending just before the first appended event's, each with 10 random hash bytes; the expiry
values and expiry index entries of :mod:`otlp_meter.queue.codec`, one entry per 1024 keys in time
order, as the service's commits write them; written directly in big transactions), then the events
are appended through the service and measured: CPU per event (both threads), wall time, and per
commit the bytes handed to ``pwrite`` (``wchar`` of ``/proc/self/io``) and the dedupe pages. The
prefilled keys expire before the appended ones, so with N at ``queue.dedupe_max_keys`` (10M by
default) every commit also evicts as many old keys as it adds: production's steady state at 20k
events/s.

Each row reports the best and the median of ``runs`` runs, plus the bytes the ``events`` database
takes per event against the JSON payload. The events are built here in the shape (and the ~240
bytes) of what the genai pack makes of the benchmark's log records, each with its own id; no rules
engine runs, so the figures are the queue's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from otlp_meter.events import EncodedEvent, format_time
from otlp_meter.queue import LmdbQueue, QueueConfig, codec
from otlp_meter.queue.group import EXPIRY_ENTRY_KEYS
from otlp_meter.queue.ledger import open_environment

DRAIN_TIMEOUT = 300.0
FIRST_EVENT_MS = 1_767_225_600_000
"""Time of the first benchmark event (2026-01-01T00:00:00Z); prefilled keys are earlier."""
EVENTS_PER_MS = 20
"""Event times advance as at 20,000 events/s, production's rate."""


def _event_ms(n: int) -> int:
    return FIRST_EVENT_MS + n // EVENTS_PER_MS


def _events(count: int) -> list[EncodedEvent]:
    out = []
    for n in range(count):
        digits = f"{n:032x}"
        id = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
        kind, tokens = ("input", 100 + n % 900) if n % 2 == 0 else ("output", 20 + n % 400)
        ms = _event_ms(n)
        stamp = format_time(ms * 1_000_000)
        payload = (
            f'{{"specversion":"1.0","id":"{id}","source":"chat-api","type":"prompt",'
            f'"subject":"customer-{n // 2 % 50}","time":"{stamp}","data":{{"tokens":{tokens},'
            f'"model":"gpt-4o","provider":"openai","type":"{kind}"}}}}'
        )
        out.append(EncodedEvent("chat-api", id, payload.encode(), ms))
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


PREFILL_TXN_KEYS = 250_000
"""Keys per prefill transaction: random inserts into a large tree dirty a page each, and LMDB
spills a transaction's dirty pages to disk beyond ~128k of them."""


def prefill_dedupe(config: QueueConfig, keys: int, expiry_ns: int) -> None:
    """Put ``keys`` dedupe keys into the (closed) queue at ``config``, expiring around ``expiry_ns``,
    with their expiry index entries, as :class:`~otlp_meter.queue.group.Group` writes them: the
    keys of events that came before the benchmark's, at 20,000 events/s (6 bytes of their time in
    Unix ms, 10 random hash bytes), the earlier ones expiring first."""
    h = open_environment(config.path, config.effective_map_size(), sync=False)
    size = codec.DEDUPE_HASH_BYTES
    try:
        done = 0
        entry = 0
        while done < keys:
            count = min(PREFILL_TXN_KEYS, keys - done)
            raw = os.urandom(size * count)
            # Key i of the N stands for the event N - i before the first appended one.
            batch = sorted(
                _event_ms(i - keys).to_bytes(codec.DEDUPE_TIME_BYTES, "big") + raw[j * size : (j + 1) * size]
                for j, i in enumerate(range(done, done + count))
            )
            with h.env.begin(write=True) as txn:
                dedupe = txn.cursor(db=h.dedupe)
                expiry = txn.cursor(db=h.expiry)
                for start in range(0, count, EXPIRY_ENTRY_KEYS):
                    chunk = batch[start : start + EXPIRY_ENTRY_KEYS]
                    entry_expiry = expiry_ns + entry  # one entry per commit, in commit order
                    entry += 1
                    value = codec.encode_expiry(entry_expiry)
                    _, added = dedupe.putmulti([(key, value) for key in chunk], append=True)
                    assert added == len(chunk), "prefilled keys must come in key order"
                    index_key = codec.expiry_index_key(entry_expiry, chunk[0])
                    expiry.put(index_key, codec.expiry_index_value(chunk), append=True)
            done += count
        h.env.sync(True)
    finally:
        h.env.close()


def _dedupe_pages(queue: LmdbQueue) -> tuple[int, int, int]:
    """Entries, leaf pages and branch pages of the ``dedupe`` database."""
    h = queue._handles
    assert h is not None
    with h.env.begin() as txn:
        stat = txn.stat(h.dedupe)
    return int(stat["entries"]), int(stat["leaf_pages"]), int(stat["branch_pages"])


def _io_written() -> int:
    """Bytes this process has passed to write calls so far (LMDB commits with ``pwrite``)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


async def prefill_once(
    events: list[EncodedEvent], group: int, sync: bool, prefill: int, max_keys: int | None
) -> dict[str, float]:
    """Append ``events`` to a queue whose dedupe index holds ``prefill`` keys already."""
    n = len(events)
    with tempfile.TemporaryDirectory(prefix="otlp-meter-queue-bench-") as tmp:
        overrides: dict[str, object] = {}
        if max_keys is not None:
            overrides["dedupe_max_keys"] = max_keys
        queue = _open(Path(tmp) / "p", sync, **overrides)
        config = queue._config
        queue.close()
        started = time.monotonic()
        # Remembered an hour less than the appends will be: evicted first.
        expiry_ns = time.time_ns() + int((config.dedupe_window - 3600) * 1e9)
        prefill_dedupe(config, prefill, expiry_ns)
        fill_seconds = time.monotonic() - started
        queue = _open(Path(tmp) / "p", sync, **overrides)
        try:
            entries_before, leaves_before, _ = _dedupe_pages(queue)
            commits = queue._ledger.commits_total
            written = _io_written()
            wall = time.perf_counter()
            cpu = await _cpu(lambda: _append_all(queue, events, group))
            wall = time.perf_counter() - wall
            written = _io_written() - written
            commits = queue._ledger.commits_total - commits
            entries, leaves, branches = _dedupe_pages(queue)
            stats = queue.stats()
        finally:
            queue.close()
    return {
        "prefill": prefill,
        "prefill s": fill_seconds,
        "cpu": cpu / n,
        "wall": wall / n,
        "commits": commits,
        "MB/commit": written / commits / 1e6,
        "B/event": written / n,
        "keys": entries,
        "keys/leaf": entries / leaves if leaves else 0.0,
        "leaves before": leaves_before,
        "leaves": leaves,
        "branches": branches,
        "evicted": stats.accounting.dedupe_evicted if stats.accounting else 0,
        "entries before": entries_before,
    }


def print_prefill(rows: list[dict[str, float]], events: int, group: int, sync: bool, runs: int) -> None:
    print(
        f"{events:,} appended events after N prefilled dedupe keys, groups of {group}, "
        f"sync {'on' if sync else 'off'}, best of {runs} runs (CPU of both threads)"
    )
    print(
        f"{'prefill N':>11} {'µs/event':>9} {'wall µs':>8} {'commits':>8} {'MB/commit':>10} "
        f"{'KB/event':>9} {'keys/leaf':>9} {'leaves':>9} {'evicted':>9} {'fill s':>7}"
    )
    for row in rows:
        print(
            f"{int(row['prefill']):>11,} {row['cpu'] * 1e6:>9.2f} {row['wall'] * 1e6:>8.2f} "
            f"{int(row['commits']):>8,} {row['MB/commit']:>10.2f} {row['B/event'] / 1e3:>9.2f} "
            f"{row['keys/leaf']:>9.1f} {int(row['leaves']):>9,} {int(row['evicted']):>9,} "
            f"{row['prefill s']:>7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--group", type=int, default=1000, help="events per append and per lease")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="queue.sync on (default off: CPU, not fsync)")
    parser.add_argument("--drain", action="store_true", help="also the exporter's drain to a stub OpenMeter")
    parser.add_argument(
        "--prefill",
        type=lambda text: [int(float(n)) for n in text.split(",")],
        help="instead: append cost after N[,N…] keys put into the dedupe index first (e.g. 0,1e6,1e7)",
    )
    parser.add_argument(
        "--max-keys", type=int, help="with --prefill: queue.dedupe_max_keys (default the default, 10M)"
    )
    args = parser.parse_args()
    events = _events(args.events)
    if args.prefill is not None:
        # At the key limit every commit evicts and warns: not what is measured here.
        logging.getLogger("otlp_meter.queue").setLevel(logging.ERROR)
        rows = []
        for prefill in args.prefill:
            tries = [
                asyncio.run(prefill_once(events, args.group, args.sync, prefill, args.max_keys))
                for _ in range(args.runs)
            ]
            rows.append(min(tries, key=lambda row: row["cpu"]))
        print_prefill(rows, args.events, args.group, args.sync, args.runs)
        return
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
