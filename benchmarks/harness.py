"""The service under test: ``otlp-meter run`` as a process on 127.0.0.1 free ports, and what /proc says
about it (CPU time, resident memory and its peak).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) and of its descendants so far:
    those running (the intake workers of ``service.workers``) and those it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(v) for v in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime
    return own + sum(_cpu_or_zero(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The running child processes of ``pid`` (of all its threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return out


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # exited meanwhile (then its parent's cutime has it once reaped)
        return 0.0


def memory_status(pid: int) -> dict[str, float]:
    """The memory lines of ``/proc/<pid>/status`` in MiB (VmRSS, VmHWM, RssAnon, RssFile, …)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) / 1024
    return out


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB: resident memory now, and its peak since the process began.

    RSS counts the pages of LMDB's memory map the process has touched (``RssFile``) as well as its
    heap (``RssAnon``); see :func:`memory_status` for the split.
    """
    status = memory_status(pid)
    return status.get("VmRSS", 0.0), status.get("VmHWM", 0.0)


class Service:
    """One otlp-meter process with its own ports and data directory.

    The base config is the shipped defaults (all rule packs, ``queue.sync: true``, default batching)
    with every listener on a free 127.0.0.1 port and logs at ``warn`` into ``workdir/service.log``;
    ``config`` is merged over it. Nothing else is changed unless a scenario says so. ``source``:
    run the ``otlp_meter`` package found there (a ``git archive`` snapshot) instead of the installed
    one; the process runs in ``workdir`` so that the current directory cannot shadow it. ``env``:
    extra environment variables (``PYTHONPATH`` entries are put before ``source``).
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None = None,
        source: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.source = source
        self.env = env or {}
        workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.events_port = free_port()
        self.telemetry_port = free_port()
        base: dict[str, Any] = {
            "receivers": {
                "otlp": {
                    "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                    "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
                },
                "events_api": {"endpoint": f"127.0.0.1:{self.events_port}"},
            },
            "queue": {"directory": str(workdir / "data")},
            "telemetry": {"endpoint": f"127.0.0.1:{self.telemetry_port}", "logs": {"level": "warn"}},
        }
        self.config = merge(base, config or {})
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def queue_path(self) -> Path:
        return Path(self.config["queue"]["directory"]) / "queue"

    def start(self, timeout: float = 120.0) -> float:
        """Start the process and wait for ``/readyz`` 200; returns the seconds from spawn to ready."""
        env = service_env(self.source)
        extra = dict(self.env)
        if "PYTHONPATH" in extra:
            extra["PYTHONPATH"] = os.pathsep.join(filter(None, [extra["PYTHONPATH"], env.get("PYTHONPATH")]))
        env.update(extra)
        argv = [sys.executable, "-m", "otlp_meter", "run", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            started = time.monotonic()
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"otlp-meter exited with {self.process.returncode}:\n{self.logs()}")
            if self._ready():
                self.ready_seconds = time.monotonic() - started
                return self.ready_seconds
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"otlp-meter not ready within {timeout}s:\n{self.logs()}")

    def _ready(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.telemetry_port, timeout=2)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM and wait; returns the seconds the shutdown took (SIGKILL after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_mib(self) -> tuple[float, float]:
        return memory_mib(self.pid)

    def anon_mib(self) -> float:
        """Resident anonymous memory (the heap, not LMDB's map) in MiB."""
        return memory_status(self.pid).get("RssAnon", 0.0)

    def metrics(self) -> dict[str, float]:
        """The service's /metrics samples summed per metric name (labels dropped)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.telemetry_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def wait_metric(self, name: str, at_least: float, timeout: float, poll: float = 0.25) -> float:
        """Poll ``name`` until it reaches ``at_least``; returns its last value (maybe short of it)."""
        deadline = time.monotonic() + timeout
        value = self.metric(name)
        while value < at_least and time.monotonic() < deadline:
            time.sleep(poll)
            value = self.metric(name)
        return value

    def logs(self, tail: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_env(source: Path | None) -> dict[str, str]:
    """The environment for a process that imports otlp_meter (from ``source`` when given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENMETER_")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH", "")]))
    return env


def disk_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (blocks, so sparse files count what they use)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def free_disk_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, all cores, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def others_busy(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over the next ``seconds`` (call when the suite is idle)."""
    before, _ = machine_cpu_seconds()
    time.sleep(seconds)
    after, _ = machine_cpu_seconds()
    return (after - before) / seconds
