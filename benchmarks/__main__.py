"""``python -m benchmarks [--quick] [--only S1,S5] [--profile]``: the scenarios of issue 5, one table.

Each scenario runs the real service as a process (``queue.sync: true``, shipped rule packs, exporter
on and posting to a stub OpenMeter in a process of its own) and load generators in other processes,
all on 127.0.0.1. It prints a Markdown table and writes ``benchmarks/results/latest.json``; a full
run also rewrites the table in ``benchmarks/README.md``. ``--quick`` (under a minute) writes
``benchmarks/results/quick.json`` and leaves the README alone. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.outage import s5_s6
from benchmarks.report import describe_machine, machine, table, update_readme
from benchmarks.results_model import Context, Row
from benchmarks.scenarios import s1_steady, s2_max_ingest, s3_small_requests, s4_metrics, s7_events_api

HERE = Path(__file__).resolve().parent
SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "S1": s1_steady,
    "S2": s2_max_ingest,
    "S3": s3_small_requests,
    "S4": s4_metrics,
    "S5": s5_s6,  # S5 and S6 are one story: fill during an outage, restart, drain
    "S7": s7_events_api,
}


def snapshot(rev: str, directory: Path) -> Path:
    """``git archive REV otlp_meter rules`` (the package, and the packs it links to) into ``directory``."""
    directory.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "otlp_meter", "rules"], cwd=HERE.parent, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 100k events for S5/S6 (< 1 min)")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. S1,S3 (S6 runs with S5)")
    parser.add_argument(
        "--profile", action="store_true", help="also run S2 under py-spy (results/profile-s2.*)"
    )
    parser.add_argument(
        "--at",
        metavar="REV",
        help="benchmark the otlp_meter package of git revision REV (a `git archive` snapshot) instead of "
        "the working tree, e.g. HEAD while files are being edited",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before each scenario, wait up to this long while other processes keep > 0.15 cores busy "
        "(default: 120, none with --quick); rows measured under contention say so",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=None,
        help="measure a row up to this many times while other processes disturb it, keeping the least "
        "disturbed run (default: 3, 1 with --quick)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where JSON and profiles go")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    args = parser.parse_args(argv)
    wanted = [s.strip().upper().replace("S6", "S5") for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from S1 to S7")
    selected = [name for name in SCENARIOS if not wanted or name in wanted]

    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="otlp-meter-bench-", dir=args.workdir) as tmp:
        source = snapshot(args.at, Path(tmp) / "src") if args.at else None
        quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 120.0)
        attempts = args.attempts if args.attempts is not None else (1 if args.quick else 3)
        ctx = Context(args.quick, Path(tmp), args.results, args.profile, source, quiet_wait, attempts)
        for name in selected:
            try:
                rows += SCENARIOS[name](ctx)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                traceback.print_exc()
                rows.append(Row(name, "failed", "—", notes=[f"{type(exc).__name__}: {exc}"]))
    elapsed = time.monotonic() - started

    host = machine(args.at)
    mode = "quick" if args.quick else "full"
    header = f"Mode: {mode} ({elapsed:.0f} s). Machine: {describe_machine(host)}."
    text = f"{header}\n\n{table(rows)}"
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    output = args.results / ("quick.json" if args.quick else "latest.json")
    document = {
        "mode": mode,
        "seconds": round(elapsed, 1),
        "machine": host,
        "rows": [r.as_json() for r in rows],
    }
    output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {output}", file=sys.stderr)
    if not args.quick and not args.no_readme and not wanted:
        update_readme(HERE / "README.md", text)
        print(f"updated {HERE / 'README.md'}", file=sys.stderr)
    return 1 if any(row.scenario == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
