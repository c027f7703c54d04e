"""Run the real otlp-meter as a subprocess on free ports, for end-to-end tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL_LOW, _EPHEMERAL_HIGH = _ephemeral_range()
_handed_out: set[int] = set()
_pick = random.Random(os.getpid())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and stays free until the service binds it.

    ``bind(0)`` would hand out a port from the kernel's ephemeral range, the same range every
    outgoing connection takes its local port from: between closing the probe and the service
    binding, a client connection (the exporter, a test's HTTP client) can take it, and the
    service fails with "Address already in use". So ports come from below that range, are probed
    by binding them, and are never handed out twice in one test session.
    """
    low, high = (20000, _EPHEMERAL_LOW - 1) if _EPHEMERAL_LOW > 21000 else (_EPHEMERAL_HIGH + 1, 65535)
    for _ in range(1000):
        port = _pick.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` (for things with no event to await, such as a file filling up)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.01)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


_DROP_PRIVILEGES_AND_RUN = """
import os, pwd, sys
import uvloop, otlp_meter.cli, otlp_meter.service  # imported as root: the code may be unreadable to the user
import cel  # imported lazily by the rules when they have expressions (the default packs do)
user = pwd.getpwnam(sys.argv[1])
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
os.environ["HOME"] = user.pw_dir
sys.exit(otlp_meter.cli.main(sys.argv[2:]))
"""


class ServiceProcess:
    """``otlp-meter run --config …`` with ports and directories of its own.

    ``config`` is merged over a base that listens on 127.0.0.1 free ports, keeps its queue in
    ``workdir/data``, flushes batches quickly and retries fast (so tests await events, not timers).
    ``user`` runs the service as that user (the test must be root): the process starts as root,
    imports what the service needs (the checkout may not be readable by that user), then drops to
    the user before it reads its config, opens its queue or binds a port.
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.user = user
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
            "exporter": {
                "batch": {"flush_interval": "50ms"},
                "retry": {"initial_backoff": "50ms", "max_backoff": "200ms", "auth_backoff": "200ms"},
            },
            "telemetry": {"endpoint": f"127.0.0.1:{self.telemetry_port}", "logs": {"level": "debug"}},
            "service": {"shutdown_timeout": "5s"},
        }
        self.config = merge(base, config or {})
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENMETER_")}
        self.env.update(env or {})
        self.log_path = workdir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def events_url(self) -> str:
        """Base URL of the events API (POST {events_url}/api/v1/events)."""
        return f"http://127.0.0.1:{self.events_port}"

    @property
    def telemetry_url(self) -> str:
        return f"http://127.0.0.1:{self.telemetry_port}"

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        command = ["run", "--config", str(self.config_path)]
        if self.user is None:
            argv = [sys.executable, "-m", "otlp_meter", *command]
        else:
            argv = [sys.executable, "-c", _DROP_PRIVILEGES_AND_RUN, self.user, *command]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        scheme = "https" if self.config.get("telemetry", {}).get("tls", {}).get("cert_file") else "http"
        url = f"{self.telemetry_url.replace('http', scheme, 1)}/readyz"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"otlp-meter exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(url, timeout=1.0, verify=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)  # polling the readiness probe, like a kubelet does
        raise AssertionError(f"otlp-meter not ready after {timeout}s:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"otlp-meter did not stop within {timeout}s:\n{self.logs()}") from None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The service's JSON log lines, parsed."""
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                events.append(orjson.loads(line))
        return events

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.telemetry_url}/metrics", timeout=5.0).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            metric_name = series.split("{", 1)[0]
            if metric_name != name:
                continue
            if labels and not all(f'{k}="{v}"' in series for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
