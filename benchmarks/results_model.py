"""What a scenario reports: one ``Row`` per line of the table, and the context scenarios run in."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import others_busy


@dataclass
class Context:
    """Where and how long scenarios run."""

    quick: bool
    workdir: Path  # a scratch directory; each service gets a subdirectory
    results_dir: Path
    profile: bool = False  # profile the service with py-spy during an extra S2 run
    source: Path | None = None  # run the service from this otlp_meter tree (see ``--at``)
    quiet_wait: float = 0.0  # before a scenario, wait up to this long for other processes to calm down
    attempts: int = 1  # measure a row again (up to this many times) when other processes were busy

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def wait_quiet(self, threshold: float = 0.15) -> float:
        """Wait (at most ``quiet_wait`` s) until processes outside the suite use < ``threshold`` cores.

        The machine may be shared (tests, builds); returns the load last seen, in cores.
        """
        if self.quiet_wait <= 0:
            return 0.0
        deadline = time.monotonic() + self.quiet_wait
        busy = others_busy(0.5)
        if busy >= threshold:
            self.log(f"other processes keep {busy:.2f} cores busy; waiting up to {self.quiet_wait:.0f}s")
            while busy >= threshold and time.monotonic() < deadline:
                time.sleep(2)
                busy = others_busy(1.0)
        return busy


@dataclass
class Row:
    """One line of the table. ``unit`` is what throughput counts (records, points, events)."""

    id: str
    scenario: str
    load: str
    unit: str = "records"
    throughput: float | None = None  # units per second
    headline: str = ""  # instead of throughput, for rows that measure something else (S6)
    events_per_unit: float | None = None  # measured: events committed per record
    requests_per_s: float | None = None
    cpu_pct: float | None = None  # of one core
    cpu_us: float | None = None  # per unit
    rss_mib: float | None = None
    hwm_mib: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    goal: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out
