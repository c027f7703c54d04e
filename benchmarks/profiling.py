"""Where the service's CPU goes: py-spy samples of its stacks, and /proc per thread.

``profile_service(pid, seconds, stem)`` samples the service in two passes of ``seconds / 2`` each and
writes ``<stem>.txt``, a summary, next to py-spy's raw collapsed stacks (one ``frame;frame;… count``
line per distinct stack; feed them to flamegraph.pl or speedscope):

1. ``<stem>.python.folded`` — ``--nonblocking``, Python frames only. py-spy leaves out threads that
   are not running (waiting on epoll, a lock, the GIL), so these samples are on-CPU time, and the time
   a C extension takes (upb, lmdb, orjson) counts for the Python function that called it.
2. ``<stem>.native.folded`` — ``--native``: C frames too (malloc, LMDB, the GIL). The process is
   paused for each sample, which breaks py-spy's idle detection: this pass counts *waiting* threads
   as well, which is what shows GIL contention (``pthread_cond_timedwait`` under an extension call).

CPU per thread comes from ``/proc/<pid>/task/*/stat`` (it includes gRPC's C threads, which py-spy
cannot see), named after py-spy's thread names. A profiled run is slower than a measured one and is
never reported as a measurement. py-spy is not a dependency of the suite: ``pip install py-spy``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import CLOCK_TICKS

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+)\): (?P<name>.*)$")
_TOP = 25


@dataclass
class ProfileSummary:
    path: str = ""
    text: str = ""
    start: Callable[[], None] = lambda: None  # begin sampling (call when the load is on)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds and kernel thread name (comm) per thread id of process ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def _display(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (for the JSON results)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def _record(pid: int, seconds: int, output: Path, native: bool) -> None:
    argv = [_py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
    argv += ["--format", "raw", "--output", str(output), "--threads", "--function"]
    argv += ["--native"] if native else ["--nonblocking"]
    done = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    if not output.exists():
        raise RuntimeError(f"py-spy wrote nothing: {done.stderr.decode(errors='replace')[-500:]}")


@contextlib.contextmanager
def profile_service(pid: int, seconds: float, stem: Path) -> Iterator[ProfileSummary]:
    """Sample ``pid`` from ``summary.start()`` on; the body must keep the load on for ``seconds`` more."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    summary = ProfileSummary(path=_display(stem.with_suffix(".txt")))
    python, native = stem.with_suffix(".python.folded"), stem.with_suffix(".native.folded")
    half = max(1, int(seconds / 2))
    outcome: dict[str, BaseException] = {}
    window: dict[str, Any] = {}

    def sample() -> None:
        try:
            _record(pid, half, python, native=False)
            _record(pid, half, native, native=True)
        except BaseException as exc:
            outcome["error"] = exc

    sampler = threading.Thread(target=sample, name="py-spy")

    def start() -> None:
        window.update(before=thread_cpu(pid), started=time.monotonic())
        sampler.start()

    summary.start = start
    try:
        yield summary
    finally:
        if sampler.is_alive():
            sampler.join(seconds + 180)
    if "started" not in window:
        raise RuntimeError("profile_service: start() was never called")
    if "error" in outcome:
        raise outcome["error"]
    before: dict[int, tuple[str, float]] = window["before"]
    after = thread_cpu(pid)
    elapsed = time.monotonic() - window["started"]
    cpu = {tid: (name, seconds - before.get(tid, (name, 0.0))[1]) for tid, (name, seconds) in after.items()}
    summary.text = summarize(python.read_text(), native.read_text(), cpu, elapsed)
    stem.with_suffix(".txt").write_text(summary.text)


def _parse(folded: str, names: dict[int, str]) -> list[tuple[str, list[str], int]]:
    """(thread name, frames, count) per line; fills ``names`` (thread id → py-spy's thread name)."""
    stacks = []
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        match = _THREAD.match(frames[0])
        thread = frames[0]
        if match:
            thread = match.group("name")
            names[int(match.group("tid"))] = thread
        stacks.append((thread, frames[1:], int(count)))
    return stacks


def _file(frame: str) -> str:
    match = _FRAME.match(frame)
    return match.group("file") if match else frame


def _module(frames: list[str]) -> str:
    """The deepest otlp_meter module of a stack, else the library the leaf frame is in."""
    for frame in reversed(frames):
        file = _file(frame)
        if file.startswith("otlp_meter/") or file.startswith("<rule"):
            return file if file.startswith("otlp_meter/") else "otlp_meter rules (generated code)"
    leaf = _file(frames[-1]) if frames else "?"
    return f"(no otlp_meter frame) {leaf.split('/', 1)[0]}"


def _table(title: str, counts: Counter[str], total: int, limit: int = _TOP) -> list[str]:
    lines = [title]
    for name, count in counts.most_common(limit):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return [*lines, ""]


def _breakdown(stacks: list[tuple[str, list[str], int]], with_leaves: bool) -> list[str]:
    total = sum(count for _, _, count in stacks) or 1
    threads: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        modules[_module(frames)] += count
        if frames:
            leaves[frames[-1]] += count
        for frame in set(frames):
            if "otlp_meter/" in frame or "<rule" in frame:
                inclusive[frame] += count
    lines = [f"{total} samples", ""]
    lines += _table("samples per thread", threads, total)
    lines += _table("by the deepest otlp_meter module of the stack (what it calls included)", modules, total)
    lines += _table("self samples (leaf frame)", leaves, total, limit=40 if with_leaves else _TOP)
    lines += _table("inclusive samples, otlp_meter functions", inclusive, total, limit=40)
    return lines


def summarize(python: str, native: str, cpu: dict[int, tuple[str, float]], elapsed: float) -> str:
    names: dict[int, str] = {}
    python_stacks = _parse(python, names)
    native_stacks = _parse(native, names)
    cpu_total = sum(seconds for _, seconds in cpu.values()) or 1.0
    lines = [f"profiled for {elapsed:.1f} s", ""]
    lines.append(f"CPU per thread from /proc: {cpu_total:.2f} s = {100 * cpu_total / elapsed:.0f}% of a core")
    for tid, (comm, seconds) in sorted(cpu.items(), key=lambda item: -item[1][1]):
        if seconds > 0.005:
            lines.append(
                f"  {100 * seconds / cpu_total:5.1f}%  {names.get(tid, comm + ' (C thread)')} [{tid}]"
            )
    lines += ["", "== pass 1: on-CPU Python stacks (--nonblocking) ==", ""]
    lines += _breakdown(python_stacks, with_leaves=False)
    lines += ["== pass 2: native stacks, waiting threads included (--native) ==", ""]
    lines += _breakdown(native_stacks, with_leaves=True)
    return "\n".join(lines)
