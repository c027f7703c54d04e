"""S5 (drain after an outage) and S6 (restart with a full queue).

One story, in order: OpenMeter (the stub) answers 503; the service accepts N events over OTLP gRPC,
which pile up in its queue; the service is stopped and started again — S6: time from spawn until
``/readyz`` answers 200 with N events queued, against the same service's start on an empty queue —
then OpenMeter comes back (the stub answers 204) and S5 measures how fast the queue drains:
events delivered per second from that moment until the stub has received the last one, and the
service's CPU per event out. N is 1M (100k with ``--quick``).

The full run adds S6 at 10M events: a queue filled directly (:mod:`benchmarks.queue_fill`, if the
disk has room), then the same restart measurement.

The exporter's retry backoff is lowered to 50-250 ms (from 1-60 s) so that the drain starts within
a quarter second of OpenMeter's return instead of after the backoff the outage built up; everything
else keeps its default (batches of 1000 events, 4 in flight).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Service,
    cpu_seconds,
    disk_bytes,
    free_disk_bytes,
    machine_cpu_seconds,
    service_env,
)
from benchmarks.loadgen import GRPC_LOGS, LoadSpec, run_load
from benchmarks.payloads import Workload
from benchmarks.profiling import profile_service
from benchmarks.results_model import Context, Row
from benchmarks.scenarios import APPENDED, SENT, note_contention
from benchmarks.stub import StubOpenMeter

DEPTH = "otlp_meter_queue_depth_events"
QUEUE_BYTES = "otlp_meter_queue_size_bytes"
FAST_RETRY = {"initial_backoff": "50ms", "max_backoff": "250ms"}
BIG_QUEUE = 12 << 30  # queue.max_bytes for 10M events (~4.5 GB on disk)


def fill_env(source: Path | None) -> dict[str, str]:
    """queue_fill imports both benchmarks (this checkout) and otlp_meter (``source`` when given)."""
    env = service_env(source)
    checkout = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = ":".join(filter(None, [env.get("PYTHONPATH", ""), checkout]))
    return env


def queue_footprint(queue_path: Path, max_bytes: int) -> dict[str, int]:
    """Bytes of B-tree pages per named database of a stopped service's queue (read-only open)."""
    from otlp_meter.queue.config import QueueConfig
    from otlp_meter.queue.ledger import open_environment

    config = QueueConfig(directory=queue_path.parent, max_bytes=max_bytes)
    h = open_environment(queue_path, config.effective_map_size(), sync=False, readonly=True)
    try:
        page = int(h.env.stat()["psize"])
        out = {}
        with h.env.begin() as txn:
            for name in ("events", "dedupe", "expiry", "state", "meta"):
                stat = txn.stat(getattr(h, name))
                out[name] = page * (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
        return out
    finally:
        h.env.close()


def _config(stub: StubOpenMeter, max_bytes: int | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"exporter": {"openmeter": {"url": stub.url}, "retry": FAST_RETRY}}
    if max_bytes is not None:
        config["queue"] = {"max_bytes": max_bytes}
    return config


def s5_s6(ctx: Context) -> list[Row]:
    target = 100_000 if ctx.quick else 1_000_000
    processes, clients, records = 2, 2, 1000
    per_client = math.ceil(target / 2 / records / (processes * clients))
    events = per_client * processes * clients * records * 2
    workdir = ctx.workdir / "s5"
    shutil.rmtree(workdir, ignore_errors=True)
    ctx.wait_quiet()
    with StubOpenMeter(status=503) as stub:
        service = Service(workdir, _config(stub), ctx.source)
        empty_ready = service.start()
        empty_rss, _ = service.memory_mib()
        empty_anon = service.anon_mib()
        try:
            ctx.log(f"S5 filling the queue with {events:,} events while OpenMeter answers 503")
            workload = Workload("genai-logs", records)
            specs = [
                LoadSpec(
                    "grpc",
                    service.grpc_port,
                    GRPC_LOGS,
                    workload,
                    clients=clients,
                    first_client=n * clients,
                    seconds=900,
                    requests=per_client,
                )
                for n in range(processes)
            ]
            fill = run_load(specs, service.pid, timeout=1200)
            metrics = service.metrics()
            queued, queue_bytes = int(metrics.get(DEPTH, 0)), int(metrics.get(QUEUE_BYTES, 0))
            stop_seconds = service.stop()
            disk = disk_bytes(service.queue_path)
            try:
                pages = queue_footprint(service.queue_path, 1 << 30)
            except Exception as exc:  # internal API of the queue: report, do not fail the suite
                ctx.log(f"could not read the queue's page counts: {exc!r}")
                pages = {}
            ctx.log(f"S6 restart with {queued:,} events queued")
            ctx.wait_quiet()
            ready = service.start()
            ready_rss, _ = service.memory_mib()
            ready_anon = service.anon_mib()

            ctx.log("S5 OpenMeter is back: draining")
            stub.counters.reset()
            cpu_before = service.cpu_seconds()
            stub_before = cpu_seconds(stub.pid) if stub.pid else 0.0
            machine_before, steal_before = machine_cpu_seconds()
            flipped = time.monotonic()
            stub.set_status(204)
            deadline = flipped + max(120.0, events / 5000)
            while stub.counters.events.value < queued and time.monotonic() < deadline:
                time.sleep(0.02)
            cpu = service.cpu_seconds() - cpu_before
            machine_after, steal_after = machine_cpu_seconds()
            stub_cpu = (cpu_seconds(stub.pid) if stub.pid else 0.0) - stub_before
            rss, hwm = service.memory_mib()
            delivered, last = stub.counters.events.value, stub.counters.last_ok.value
            requests, body_bytes = stub.counters.requests.value, stub.counters.body_bytes.value
            sent = service.wait_metric(SENT, queued, 10)
            depth_after = service.metric(DEPTH)
        finally:
            service.stop()
    fill_rate = fill.records / fill.seconds if fill.seconds else 0.0
    json_bytes = body_bytes - 2 * requests - max(0, delivered - requests)  # minus "[", "]" and commas
    json_per_event = json_bytes / delivered if delivered else float("nan")

    drain = Row("S5", "drain after an outage", f"{queued:,} events queued, OpenMeter back", unit="events")
    window = last - flipped
    drain.throughput = delivered / window if window > 0 else None
    drain.cpu_us = 1e6 * cpu / delivered if delivered else None
    drain.cpu_pct = 100 * cpu / window if window > 0 else None
    drain.rss_mib, drain.hwm_mib = rss, hwm
    drain.requests_per_s = requests / window if window > 0 else None
    drain.goal = "≥ 300k events/s; ≤ 2 µs CPU/event out"
    if drain.throughput is not None and drain.cpu_us is not None:
        drain.met = drain.throughput >= 300_000 and drain.cpu_us <= 2
    others = max(0.0, machine_after - machine_before - cpu - stub_cpu) / window if window > 0 else 0.0
    steal = (steal_after - steal_before) / window if window > 0 else 0.0
    note_contention(drain, others, steal)
    drain.extra.update(
        others_cores=round(others, 2),
        steal_cores=round(steal, 2),
        stub_cpu_seconds=round(stub_cpu, 3),
        events=queued,
        delivered=delivered,
        exporter_sent=int(sent),
        depth_after=int(depth_after),
        drain_seconds=round(window, 3),
        service_cpu_seconds=round(cpu, 3),
        batches=requests,
        fill_records_per_s=round(fill_rate),
        fill_events_appended=int(metrics.get(APPENDED, 0)),
    )
    drain.notes.append(f"filled at {fill_rate:,.0f} rec/s ({2 * fill_rate:,.0f} events/s) during the outage")
    if delivered != queued or depth_after:
        drain.notes.append(f"delivered {delivered:,} of {queued:,}; {int(depth_after):,} left queued")

    restart = Row("S6", "restart with a full queue", f"{queued:,} events queued", unit="events")
    restart.headline = f"ready in {ready:.2f} s (empty queue: {empty_ready:.2f} s)"
    restart.rss_mib = ready_rss
    restart.goal = "ready ≤ 1 s (goal set at 10M)"
    restart.met = ready <= 1.0
    restart.extra.update(
        events=queued,
        ready_seconds=round(ready, 3),
        empty_ready_seconds=round(empty_ready, 3),
        rss_at_ready_mib=round(ready_rss, 1),
        empty_rss_at_ready_mib=round(empty_rss, 1),
        anon_at_ready_mib=round(ready_anon, 1),
        empty_anon_at_ready_mib=round(empty_anon, 1),
        stop_seconds=round(stop_seconds, 3),
    )

    footprint = Row("S6", "queue footprint", f"{queued:,} events queued", unit="events")
    events_db = pages.get("events", 0)
    ratio = events_db / queued / json_per_event if queued and pages and delivered else float("nan")
    heap = (ready_anon - empty_anon) * 1024 * 1024 / queued if queued else float("nan")
    footprint.headline = (
        f"{disk / queued:,.0f} B/event on disk; events DB {events_db / max(queued, 1):,.0f} B "
        f"= {ratio:.2f}x JSON ({json_per_event:,.0f} B); heap {heap:+,.1f} B/event"
    )
    footprint.goal = "≤ 1.3x JSON on disk; nothing per queued event on the heap"
    footprint.met = ratio <= 1.3 and heap < 16
    footprint.extra.update(
        disk_bytes=disk,
        queue_size_bytes=queue_bytes,
        pages=pages,
        json_bytes_per_event=round(json_per_event, 1),
        events_db_ratio=round(ratio, 3),
        heap_bytes_per_event=round(heap, 2),
    )
    footprint.notes.append(
        "disk includes the dedupe index (~"
        f"{(pages.get('dedupe', 0) + pages.get('expiry', 0)) / max(queued, 1):,.0f} B/event, bounded by "
        "queue.dedupe_max_keys)"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    rows = [drain, restart, footprint]
    if not ctx.quick:
        rows.append(s6_ten_million(ctx, disk / max(queued, 1), empty_anon))
    if ctx.profile:
        drain.extra["profile"] = s5_profile(ctx)
    return rows


def _fill_directly(ctx: Context, directory: Path, events: int, max_bytes: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.queue_fill",
            "--directory",
            str(directory),
            "--events",
            str(events),
            "--max-bytes",
            str(max_bytes),
        ],
        check=True,
        timeout=1800,
        stdout=sys.stderr,
        env=fill_env(ctx.source),
        cwd=ctx.source,
    )


def s5_profile(ctx: Context) -> str:
    """A drain under py-spy: a queue filled directly, a service started with OpenMeter up."""
    events = 300_000 if ctx.quick else 1_000_000
    seconds = 4 if ctx.quick else 10
    workdir = ctx.workdir / "s5-profile"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ctx.log(f"S5 again under py-spy: {events:,} events queued, then a drain ({seconds}s profiled)")
    _fill_directly(ctx, workdir / "data", events, 1 << 30)
    ctx.wait_quiet()
    try:
        with StubOpenMeter(status=204) as stub:
            service = Service(workdir, _config(stub), ctx.source)
            with service, profile_service(service.pid, seconds, ctx.results_dir / "profile-s5") as summary:
                summary.start()
                deadline = time.monotonic() + seconds + 5
                while time.monotonic() < deadline and stub.counters.events.value < events:
                    time.sleep(0.1)
        if stub.counters.events.value >= events:
            ctx.log("the drain ended before the profile did: its tail is idle time")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary.path


def s6_ten_million(ctx: Context, disk_per_event: float, empty_anon: float) -> Row:
    """S6 at 10M events queued (filled directly), if the disk has room for it."""
    events = 10_000_000
    row = Row("S6", "restart with a full queue", f"{events:,} events queued", unit="events")
    row.goal = "ready ≤ 1 s"
    workdir = ctx.workdir / "s6-10m"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    need = int(disk_per_event * events * 1.5)
    free = free_disk_bytes(workdir)
    if free < need:
        row.notes.append(f"skipped: needs ~{need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free")
        return row
    try:
        ctx.log(f"S6 filling a queue with {events:,} events directly (benchmarks.queue_fill)")
        started = time.monotonic()
        _fill_directly(ctx, workdir / "data", events, BIG_QUEUE)
        fill_seconds = time.monotonic() - started
        disk = disk_bytes(workdir / "data" / "queue")
        with StubOpenMeter(status=503) as stub:
            service = Service(workdir, _config(stub, BIG_QUEUE), ctx.source)
            ctx.log(f"S6 restart with {events:,} events queued")
            ctx.wait_quiet()
            try:
                ready = service.start()
                rss, hwm = service.memory_mib()
                anon = service.anon_mib()
                depth = service.metric(DEPTH)
            finally:
                service.stop()
        row.headline = f"ready in {ready:.2f} s"
        row.rss_mib, row.hwm_mib = rss, hwm
        row.met = ready <= 1.0
        row.extra.update(
            events=events,
            queued=int(depth),
            ready_seconds=round(ready, 3),
            disk_bytes=disk,
            fill_seconds=round(fill_seconds, 1),
            rss_at_ready_mib=round(rss, 1),
            anon_at_ready_mib=round(anon, 1),
        )
        row.notes.append(
            f"queue filled directly in {fill_seconds:.0f} s; {disk / 1e9:.1f} GB on disk; heap (RssAnon) at "
            f"ready {anon:.0f} MiB (empty queue: {empty_anon:.0f} MiB)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return row
