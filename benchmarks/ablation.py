"""Where S2's time goes, by ablation: the same load with one cost switched off at a time.

``python -m benchmarks.ablation [--seconds 10] [--only in-only,no-dedupe] [--at HEAD]`` runs S2's load
(1000-record GenAI OTLP gRPC requests, 4 clients in 2 processes) against variants of the service that
differ only in configuration or environment — no code is changed — and prints records/s, service CPU
per record and latency against the ``in-only`` reference:

* ``exporter-on``   — S2 as the suite runs it: the exporter delivers to a stub OpenMeter (204).
* ``in-only``       — the reference: OpenMeter answers 503 and the retry backoff is an hour, so after
                      its first attempts the exporter sits idle and only the ingest path costs CPU.
* ``no-dedupe``     — in-only with ``queue.dedupe_window: 0`` (no dedupe lookup, key or expiry index).
* ``no-sync``       — in-only with ``queue.sync: false`` (no fsync; the commits still write).
* ``gc-relaxed``    — in-only with ``gc.set_threshold(100_000, 50, 50)`` (a ``sitecustomize``).
* ``switch-1ms``    — in-only with ``sys.setswitchinterval(0.001)`` (the writer thread gets the GIL
                      back sooner after each LMDB call, which releases it).
* ``genai-only``    — in-only with ``rules.packs: [genai]`` (no other pack's rules tried).

Variants that cannot be had by configuration (a faster id, fewer LMDB calls) are for the profile
(``python -m benchmarks --only S2 --profile``) to point at.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Service
from benchmarks.loadgen import GRPC_LOGS, LoadSpec, Measurement, run_load
from benchmarks.payloads import Workload
from benchmarks.results_model import Context
from benchmarks.stub import StubOpenMeter

IDLE_EXPORTER = {"retry": {"initial_backoff": "1h", "max_backoff": "1h"}}


@dataclass(frozen=True)
class Variant:
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    sitecustomize: str = ""
    exporter_on: bool = False


VARIANTS = [
    Variant("exporter-on", exporter_on=True),
    Variant("in-only"),
    Variant("no-dedupe", {"queue": {"dedupe_window": 0}}),
    Variant("no-sync", {"queue": {"sync": False}}),
    Variant("gc-relaxed", sitecustomize="import gc\ngc.set_threshold(100_000, 50, 50)\n"),
    Variant("switch-1ms", sitecustomize="import sys\nsys.setswitchinterval(0.001)\n"),
    Variant("genai-only", {"rules": {"packs": ["genai"]}}),
]


def run_variant(ctx: Context, variant: Variant, seconds: float) -> Measurement:
    workdir = ctx.workdir / variant.name
    shutil.rmtree(workdir, ignore_errors=True)
    env: dict[str, str] = {}
    if variant.sitecustomize:
        site = workdir / "site"
        site.mkdir(parents=True)
        (site / "sitecustomize.py").write_text(variant.sitecustomize)
        env["PYTHONPATH"] = str(site)
    ctx.wait_quiet()
    with StubOpenMeter(status=204 if variant.exporter_on else 503) as stub:
        exporter: dict[str, Any] = {"openmeter": {"url": stub.url}}
        if not variant.exporter_on:
            exporter.update(IDLE_EXPORTER)
        config = {"exporter": exporter, **variant.config}
        with Service(workdir, config, ctx.source, env) as service:
            workload = Workload("genai-logs", 1000)
            specs = [
                LoadSpec("grpc", service.grpc_port, GRPC_LOGS, workload, 2, 2 * n, seconds, warmup=3)
                for n in range(2)
            ]
            pids = (stub.pid,) if stub.pid else ()
            return run_load(specs, service.pid, timeout=120 + 2 * seconds, helper_pids=pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--at", metavar="REV", help="benchmark git revision REV (see python -m benchmarks)")
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    args = parser.parse_args()
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    variants = [v for v in VARIANTS if not wanted or v.name in wanted]
    from benchmarks.__main__ import snapshot

    with tempfile.TemporaryDirectory(prefix="otlp-meter-ablation-") as tmp:
        source = snapshot(args.at, Path(tmp) / "src") if args.at else None
        ctx = Context(False, Path(tmp), Path(tmp), source=source, quiet_wait=args.quiet_wait)
        results = []
        for variant in variants:
            ctx.log(f"ablation: {variant.name} ({args.seconds:.0f}s)")
            results.append((variant.name, run_variant(ctx, variant, args.seconds)))
    reference = next((m for name, m in results if name == "in-only"), None)
    header = ["variant".ljust(12), "rec/s".rjust(8), "µs/rec".rjust(7), "vs in-only".rjust(10)]
    print(" ".join([*header, "p50 ms".rjust(7), "p99 ms".rjust(7), "others".rjust(6)]))
    for name, m in results:
        per_record = 1e6 * m.cpu_seconds / m.records
        delta = f"{per_record - 1e6 * reference.cpu_seconds / reference.records:+.1f}" if reference else ""
        print(
            f"{name:<12} {m.records / m.seconds:>8,.0f} {per_record:>7.1f} {delta:>10} "
            f"{1e3 * m.percentile(50):>7.1f} {1e3 * m.percentile(99):>7.1f} {m.others_cores:>6.2f}"
        )


if __name__ == "__main__":
    main()
