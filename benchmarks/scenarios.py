"""Scenarios S1-S4 and S7: the service under load from generator processes, OpenMeter stubbed.

Every scenario starts its own service (fresh queue, ``queue.sync: true``, the shipped rule packs, the
exporter on and posting to a stub OpenMeter in its own process that answers 204 at once) and its own
generators, so figures do not leak from one scenario into the next and the peak RSS (VmHWM) is the
scenario's own. S5 and S6 (a queue filled during an outage) are in :mod:`benchmarks.outage`.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Service
from benchmarks.loadgen import GRPC_LOGS, GRPC_METRICS, LoadSpec, Measurement, run_load
from benchmarks.payloads import Workload
from benchmarks.profiling import profile_service
from benchmarks.results_model import Context, Row
from benchmarks.stub import StubOpenMeter

APPENDED = "otlp_meter_queue_appended_events_total"
DEDUPLICATED = "otlp_meter_queue_deduplicated_events_total"
SENT = "otlp_meter_exporter_sent_events_total"
QUIET = 0.15  # cores used by processes outside the suite below which a measurement counts as clean
DRAIN_WAIT = 60.0  # after a run, how long the exporter may take to deliver what was accepted

# S4: user rules (rules.inline) mapping cumulative sums and histograms; the engine converts each
# point to the delta since the stream's previous point before the rule sees it.
METRIC_RULES: list[dict[str, Any]] = [
    {
        "name": "bench-requests",
        "match": {"signal": "metrics", "metric": "bench.requests", "metric_type": "sum"},
        "event": {
            "type": "requests",
            "subject": {"path": "attributes.customer.id"},
            "data": {
                "count": {"path": "point.value", "as": "int"},
                "route": {"path": "attributes.http.route"},
            },
        },
    },
    {
        "name": "bench-duration",
        "match": {"signal": "metrics", "metric": "bench.duration", "metric_type": "histogram"},
        "event": {
            "type": "request_duration",
            "subject": {"path": "attributes.customer.id"},
            "data": {
                "calls": {"path": "point.count", "as": "int"},
                "duration_ms": {"path": "point.sum"},
                "route": {"path": "attributes.http.route"},
            },
        },
    },
]


def _fresh(ctx: Context, name: str) -> Path:
    path = ctx.workdir / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def _specs(
    transport: str,
    port: int,
    path: str,
    workload: Workload,
    processes: int,
    clients: int,
    seconds: float,
    rate: float | None = None,
    content_type: str = "application/x-protobuf",
    warmup: int = 3,
) -> list[LoadSpec]:
    return [
        LoadSpec(
            transport,  # type: ignore[arg-type]
            port,
            path,
            workload,
            clients=clients,
            first_client=n * clients,
            seconds=seconds,
            rate=rate / processes if rate else None,
            content_type=content_type,
            warmup=warmup,
        )
        for n in range(processes)
    ]


def measured_row(
    row: Row, m: Measurement, service: Service, workload: Workload, appended_before: float = 0.0
) -> Row:
    """Fill ``row`` from a measurement; checks that every record made its events (no dedupe hits)."""
    metrics = service.metrics()
    appended = metrics.get(APPENDED, 0.0) - appended_before
    row.unit = workload.unit
    row.throughput = m.records / m.seconds if m.seconds else None
    row.requests_per_s = m.requests / m.seconds if m.seconds else None
    row.cpu_pct = 100 * m.cpu_seconds / m.seconds if m.seconds else None
    row.cpu_us = 1e6 * m.cpu_seconds / m.records if m.records else None
    row.rss_mib, row.hwm_mib = m.rss_mib, m.hwm_mib
    row.p50_ms, row.p99_ms = 1e3 * m.percentile(50), 1e3 * m.percentile(99)
    row.events_per_unit = appended / m.records if m.records else None
    row.extra.update(
        requests=m.requests,
        records=m.records,
        events_appended=int(appended),
        deduplicated=int(metrics.get(DEDUPLICATED, 0.0)),
        seconds=round(m.seconds, 3),
        service_cpu_seconds=round(m.cpu_seconds, 3),
        p90_ms=round(1e3 * m.percentile(90), 3),
        p999_ms=round(1e3 * m.percentile(99.9), 3),
        max_ms=round(1e3 * m.latencies[-1], 3) if m.latencies else None,
        service_ready_seconds=round(service.ready_seconds, 3),
        rss_anon_mib=round(m.anon_mib, 1),
    )
    row.extra.update(
        generator_cpu_seconds=round(m.generator_cpu_seconds, 3),
        others_cores=round(m.others_cores, 2),
        steal_cores=round(m.steal_cores, 2),
    )
    note_contention(row, m.others_cores, m.steal_cores)
    if m.errors:
        row.notes.append(f"{m.errors} refused requests (first: {m.error})")
    if metrics.get(DEDUPLICATED):
        row.notes.append(f"{int(metrics[DEDUPLICATED])} events deduplicated (expected none)")
    expected = workload.events_per_record
    if m.records and abs(appended - expected * m.records) > 0.5:
        row.notes.append(f"{int(appended)} events for {m.records} {workload.unit} (expected {expected} each)")
    return row


def note_contention(row: Row, others: float, steal: float) -> None:
    """Say so when something outside the suite took CPU during the measurement."""
    if others >= QUIET or steal >= 0.05:
        row.notes.append(
            f"measured while other processes kept {others:.2f} cores busy (steal {steal:.2f}): "
            "the figures are pessimistic"
        )


def _delivered_note(row: Row, service: Service, stub: StubOpenMeter) -> None:
    """Wait (bounded) for the exporter to deliver everything accepted; note the outcome."""
    appended = service.metric(APPENDED)
    sent = service.wait_metric(SENT, appended, DRAIN_WAIT)
    row.extra.update(delivered_events=int(sent), stub_events=stub.counters.events.value)
    if sent < appended:
        row.notes.append(
            f"only {int(sent)} of {int(appended)} events delivered {DRAIN_WAIT:.0f}s after the run"
        )


def _run(
    ctx: Context,
    row: Row,
    name: str,
    workload: Workload,
    specs: Callable[[Service], list[LoadSpec]],
    config: dict[str, Any] | None = None,
) -> Row:
    """Measure ``row``; on a shared machine, up to ``ctx.attempts`` times, keeping the least disturbed."""
    best: Row | None = None
    for attempt in range(max(1, ctx.attempts)):
        if attempt:
            ctx.log(f"{row.id}: other processes were busy during the run; measuring again")
        measured = _run_once(ctx, copy.deepcopy(row), name, workload, specs, config)
        if best is None or measured.extra["others_cores"] < best.extra["others_cores"]:
            best = measured
        if best.extra["others_cores"] < QUIET:
            break
    assert best is not None
    return best


def _run_once(
    ctx: Context,
    row: Row,
    name: str,
    workload: Workload,
    specs: Callable[[Service], list[LoadSpec]],
    config: dict[str, Any] | None,
) -> Row:
    ctx.wait_quiet()
    with StubOpenMeter() as stub:
        config = {"exporter": {"openmeter": {"url": stub.url}}, **(config or {})}
        service = Service(_fresh(ctx, name), config, ctx.source)
        with service:
            before: dict[str, float] = {}
            load = specs(service)
            m = run_load(
                load,
                service.pid,
                timeout=120 + 2 * max(s.seconds for s in load),
                before_go=lambda: before.update(appended=service.metric(APPENDED)),
                helper_pids=(stub.pid,) if stub.pid else (),
            )
            measured_row(row, m, service, workload, before.get("appended", 0.0))
            _delivered_note(row, service, stub)
    return row


def s1_steady(ctx: Context) -> list[Row]:
    """S1: 10k records/s, paced, 100-record requests, over OTLP gRPC, HTTP protobuf and HTTP JSON.

    Four clients each send 25 requests/s on a fixed schedule (staggered by 10 ms), so the rate holds
    as long as a request takes under 40 ms; a shortfall shows in the throughput column.
    """
    seconds = ctx.seconds(10, 2.5)
    rows = []
    variants = [
        ("gRPC", "grpc", "protobuf", "application/x-protobuf"),
        ("HTTP protobuf", "http", "protobuf", "application/x-protobuf"),
        ("HTTP JSON", "http", "json", "application/json"),
    ]
    for label, transport, encoding, content_type in variants:
        ctx.log(f"S1 steady 10k records/s over OTLP {label} ({seconds:.0f}s)")
        workload = Workload("genai-logs", 100, encoding)  # type: ignore[arg-type]

        def specs(
            s: Service, t: str = transport, w: Workload = workload, c: str = content_type
        ) -> list[LoadSpec]:
            port, path = (s.grpc_port, GRPC_LOGS) if t == "grpc" else (s.http_port, "/v1/logs")
            return _specs(t, port, path, w, 1, 4, seconds, rate=100.0, content_type=c, warmup=20)

        row = Row("S1", f"steady 10k records/s, OTLP {label}", "100 rec/request, 100 req/s paced, 4 clients")
        row = _run(ctx, row, f"s1-{transport}-{encoding}", workload, specs)
        row.goal = "≤ 12% of a core, RSS ≤ 80 MiB, p99 ≤ 5 ms"
        if row.cpu_pct is not None and row.p99_ms is not None:
            row.met = row.cpu_pct <= 12 and (row.hwm_mib or 0) <= 80 and row.p99_ms <= 5
        rows.append(row)
    return rows


def _s2_specs(seconds: float) -> Callable[[Service], list[LoadSpec]]:
    workload = Workload("genai-logs", 1000)
    return lambda s: _specs("grpc", s.grpc_port, GRPC_LOGS, workload, 2, 2, seconds)


def s2_max_ingest(ctx: Context) -> list[Row]:
    """S2: maximum durable ingest, 1000-record gRPC requests from 4 clients, exporter on."""
    seconds = ctx.seconds(15, 3)
    ctx.log(f"S2 maximum durable ingest, 1000-record gRPC requests ({seconds:.0f}s)")
    row = Row("S2", "max durable ingest, OTLP gRPC, exporter on", "1000 rec/request, 4 clients (2 procs)")
    row = _run(ctx, row, "s2", Workload("genai-logs", 1000), _s2_specs(seconds))
    row.goal = "≥ 150k rec/s; ≤ 7 µs/rec in + ≤ 2 µs/event out"
    if row.throughput is not None and row.cpu_us is not None:
        row.met = row.throughput >= 150_000 and row.cpu_us <= 7 + 2 * 2
    rows = [row]
    ctx.log(f"S2 again with service.workers: 2 ({seconds:.0f}s)")
    workers = Row(
        "S2", "max durable ingest, `workers: 2`", "1000 rec/request, 4 clients (2 procs), 2 intake processes"
    )
    workers = _run(
        ctx,
        workers,
        "s2-workers",
        Workload("genai-logs", 1000),
        _s2_specs(seconds),
        {"service": {"workers": 2}},
    )
    workers.goal = "≥ 250k rec/s"
    if workers.throughput is not None:
        workers.met = workers.throughput >= 250_000
    workers.notes.append(
        f"CPU includes the intake worker's; RSS is the primary's; {os.cpu_count()} cores shared with the "
        "load generators and the stub"
    )
    rows.append(workers)
    if ctx.profile:
        rows[0].extra["profile"] = s2_profile(ctx)
    return rows


def s2_profile(ctx: Context) -> str:
    """S2 once more with py-spy attached to the service (not measured: sampling perturbs it)."""
    seconds = ctx.seconds(20, 5)
    ctx.log(f"S2 again under py-spy ({seconds:.0f}s)")
    ctx.wait_quiet()
    with StubOpenMeter() as stub:
        config = {"exporter": {"openmeter": {"url": stub.url}}}
        service = Service(_fresh(ctx, "s2-profile"), config, ctx.source)
        with service:
            specs = _s2_specs(seconds + 4)(service)  # py-spy takes a moment to attach, twice
            with profile_service(service.pid, seconds, ctx.results_dir / "profile-s2") as summary:
                run_load(specs, service.pid, timeout=120 + 2 * seconds, before_go=summary.start)
    return summary.path


def s3_small_requests(ctx: Context) -> list[Row]:
    """S3: 10-record gRPC requests from 16 concurrent clients (grouped commits)."""
    seconds = ctx.seconds(10, 2.5)
    ctx.log(f"S3 10-record gRPC requests, 16 clients ({seconds:.0f}s)")
    workload = Workload("genai-logs", 10)
    row = Row("S3", "small requests, OTLP gRPC", "10 rec/request, 16 clients (2 procs)")
    row = _run(
        ctx,
        row,
        "s3",
        workload,
        lambda s: _specs("grpc", s.grpc_port, GRPC_LOGS, workload, 2, 8, seconds, warmup=20),
    )
    row.goal = "≥ 5,000 req/s, p99 ≤ 10 ms"
    if row.requests_per_s is not None and row.p99_ms is not None:
        row.met = row.requests_per_s >= 5000 and row.p99_ms <= 10
    return [row]


def s4_metrics(ctx: Context) -> list[Row]:
    """S4: 1000-point requests of cumulative sums, then of cumulative histograms (delta state)."""
    seconds = ctx.seconds(8, 2)
    rows = []
    for kind, label in (("cumulative-sums", "sums"), ("cumulative-histograms", "histograms")):
        ctx.log(f"S4 metrics: 1000-point requests of cumulative {label} ({seconds:.0f}s)")
        workload = Workload(kind, 1000)  # type: ignore[arg-type]
        row = Row(
            "S4",
            f"metrics: cumulative {label} → delta, OTLP gRPC",
            "1000 points/request, 4 clients x 1000 streams",
        )

        def specs(s: Service, w: Workload = workload) -> list[LoadSpec]:
            return _specs("grpc", s.grpc_port, GRPC_METRICS, w, 2, 2, seconds)

        row = _run(ctx, row, f"s4-{label}", workload, specs, {"rules": {"inline": METRIC_RULES}})
        row.goal = "— (none set; delta state read and written per point)"
        rows.append(row)
    return rows


def s7_events_api(ctx: Context) -> list[Row]:
    """S7: the events API, CloudEvents batches of 100 (POST /api/v1/events)."""
    seconds = ctx.seconds(10, 2.5)
    ctx.log(f"S7 events API, batches of 100 CloudEvents ({seconds:.0f}s)")
    workload = Workload("cloudevents", 100)
    row = Row("S7", "events API, CloudEvents batches", "100 events/request, 4 clients (2 procs)")

    def specs(s: Service) -> list[LoadSpec]:
        ct = "application/cloudevents-batch+json"
        return _specs(
            "http", s.events_port, "/api/v1/events", workload, 2, 2, seconds, content_type=ct, warmup=10
        )

    row = _run(ctx, row, "s7", workload, specs)
    row.unit = "events"
    row.goal = "— (none set)"
    return [row]


def pause(seconds: float) -> None:
    """Let the page cache and the CPU settle between scenarios."""
    time.sleep(seconds)
