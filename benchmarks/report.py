"""The table (Markdown, printed and written into benchmarks/README.md), the JSON, the machine."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.results_model import Row

README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"
_UNIT_ABBREVIATIONS = {"records": "rec", "points": "pt", "events": "ev"}


def machine(rev: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on; ``rev``: the revision benchmarked (else the working tree)."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) // 1024
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_mib": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", rev or "HEAD"),
        "dirty": rev is None
        and bool(_git("status", "--porcelain", "--untracked-files=no", "--", "otlp_meter")),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe_machine(m: dict[str, Any]) -> str:
    commit = f"{m['commit']}{' + uncommitted changes' if m['dirty'] else ''}" if m.get("commit") else "?"
    return (
        f"{m['nproc']} CPUs ({m['cpu']}), {m['memory_mib'] / 1024:.0f} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; {m['date']}; commit {commit}"
    )


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:,.{digits}f}"


def _throughput(row: Row) -> str:
    if row.headline:
        return row.headline
    if row.throughput is None:
        return "—"
    unit = _UNIT_ABBREVIATIONS.get(row.unit, row.unit)
    text = f"{_number(row.throughput)} {unit}/s"
    if row.events_per_unit and row.unit != "events":
        text += f" = {_number(row.throughput * row.events_per_unit)} ev/s"
    if row.requests_per_s is not None:
        text += f" ({_number(row.requests_per_s)} req/s)"
    return text


def _cpu(row: Row) -> str:
    if row.cpu_us is None:
        return "—"
    unit = _UNIT_ABBREVIATIONS.get(row.unit, row.unit)
    return f"{_number(row.cpu_us, 1)} µs/{unit} · {_number(row.cpu_pct)}%"


def _memory(row: Row) -> str:
    if row.rss_mib is None:
        return "—"
    if row.hwm_mib is None:
        return _number(row.rss_mib)
    return f"{_number(row.rss_mib)} ({_number(row.hwm_mib)})"


def _latency(row: Row) -> str:
    if row.p50_ms is None:
        return "—"
    return f"{_number(row.p50_ms, 1)} / {_number(row.p99_ms, 1)}"


def _met(row: Row) -> str:
    return {True: "**yes**", False: "no", None: "—"}[row.met]


def table(rows: list[Row]) -> str:
    """The results as a Markdown table, then the rows' notes."""
    lines = [
        "| | scenario | load | throughput | service CPU (per unit · % of a core) | RSS MiB (peak) "
        "| p50 / p99 ms | goal (issue 5) | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.id, row.scenario, row.load, _throughput(row), _cpu(row), _memory(row)]
        cells += [_latency(row), row.goal, _met(row)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    notes = [f"- {row.id} {row.scenario}: {note}" for row in rows for note in row.notes]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def update_readme(readme: Path, text: str) -> None:
    """Replace what is between the result markers of ``readme`` with ``text``."""
    content = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(content):
        raise RuntimeError(f"{readme} has no {README_START} … {README_END} markers")
    replacement = f"{README_START}\n{text}\n{README_END}"
    readme.write_text(pattern.sub(lambda _: replacement, content))
