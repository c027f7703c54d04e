"""A real Prometheus server (Debian's ``prometheus`` binary) scraping an exporter the test runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from tests.support.service import free_port

PROMETHEUS_BINARY = "/usr/bin/prometheus"


def require_prometheus() -> str:
    """The binary's path; skips the test when it is missing on a developer machine (never in CI,
    where ``.ci/run`` installs it and a missing binary must fail the run)."""
    binary = shutil.which("prometheus") or (PROMETHEUS_BINARY if os.path.exists(PROMETHEUS_BINARY) else None)
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return binary


class Exporter:
    """A ``/metrics`` endpoint on 127.0.0.1 serving ``registry`` (prometheus_client's own server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class PrometheusServer:
    """``prometheus`` on a free port with its own storage, scraping ``targets`` every ``scrape``."""

    def __init__(self, workdir: Path, targets: list[str], scrape: str = "1s") -> None:
        self.binary = require_prometheus()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "global": {"scrape_interval": scrape, "evaluation_interval": scrape},
            "scrape_configs": [{"job_name": "usage", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        argv = [
            self.binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # polling its readiness endpoint: there is nothing else to await
        raise AssertionError(f"prometheus not ready after {timeout}s:\n{self.logs()}")

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` (raises on an error answer)."""
        params = {"query": promql, **({"time": str(at)} if at is not None else {})}
        body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10.0).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, count: int = 1, timeout: float = 15.0) -> None:
        """Until ``promql`` returns ``count`` series (the first scrapes have landed)."""
        deadline = time.monotonic() + timeout
        while len(self.query(promql)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} has no {count} series after {timeout}s:\n{self.logs()}")
            time.sleep(0.1)  # scrapes happen on Prometheus's schedule

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
