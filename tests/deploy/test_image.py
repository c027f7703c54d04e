"""The image, built without Docker: the Dockerfile's steps replayed in a temporary root, then the service
started the way the image's ENTRYPOINT/CMD would start it.

The slow test of the suite (about a minute: it installs the pinned dependencies from the package index
into a fresh virtualenv and builds the project's wheel), and it runs in CI like every other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy import dockerfile
from tests.support.service import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

GENAI_LOGS = {
    "resourceLogs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "chat-api"}}]},
            "scopeLogs": [
                {
                    "logRecords": [
                        {
                            "timeUnixNano": "1767225600000000000",
                            "attributes": [
                                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "34"}},
                                {"key": "openmeter.subject", "value": {"stringValue": "customer-1"}},
                            ],
                        }
                    ]
                }
            ],
        }
    ]
}

SDK_EVENT = {
    "specversion": "1.0",
    "id": "00000000-0000-4000-8000-000000000001",
    "source": "checkout",
    "type": "api-call",
    "subject": "customer-1",
    "time": "2026-01-01T00:00:00Z",
    "data": {"calls": 1},
}


@dataclass
class Image:
    """The replayed image: its root, its runtime environment, workdir and command."""

    root: Path
    env: dict[str, str]
    workdir: Path
    argv: list[str]
    healthcheck: list[str]
    venv: Path

    def host(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """``docker build``, replayed: the context per .dockerignore, the build stage's RUNs, the final stage."""
    base = tmp_path_factory.mktemp("image")
    context = dockerfile.build_context(base / "context")
    root = base / "root"
    _, (build, final) = dockerfile.load()
    # `python` in the build stage is the base image's interpreter: here, the one running the tests.
    python_bin = base / "python-bin"
    python_bin.mkdir()
    (python_bin / "python").symlink_to(sys.executable)
    host_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENMETER_", "VIRTUAL_ENV"))}
    host_env["PATH"] = f"{python_bin}:{os.environ['PATH']}"

    builder = dockerfile.Replay(root, context, dockerfile.BASE_IMAGE_ENV)
    try:
        builder.run_stage(build, host_env)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"build step failed: {exc.cmd}\n{exc.stdout.decode(errors='replace')}") from None
    runtime = dockerfile.Replay(root, context, dockerfile.BASE_IMAGE_ENV)
    runtime.run_stage(final, host_env, final=True)

    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    healthcheck = final.last("HEALTHCHECK")
    assert entrypoint is not None
    assert cmd is not None
    assert healthcheck is not None
    argv = (entrypoint.exec_form() or []) + (cmd.exec_form() or [])
    probe = dockerfile.Instruction("CMD", healthcheck.flags()[1].removeprefix("CMD")).exec_form()
    assert probe is not None
    return Image(
        root=root,
        env=runtime.env,
        workdir=runtime.host(runtime.workdir),
        argv=argv,
        healthcheck=probe,
        venv=Path(builder.env["VENV"]),
    )


def _container_argv(image: Image, argv: list[str]) -> list[str]:
    """The exec-form argv as the container runtime resolves it: argv[0] on the image's PATH, container
    paths under the replayed root."""
    executable = shutil.which(argv[0], path=image.env["PATH"])
    assert executable is not None, f"{argv[0]} is not on the image's PATH"
    mapped = [str(image.host(a)) if a.startswith("/") and image.host(a).exists() else a for a in argv[1:]]
    return [executable, *mapped]


def test_the_wheel_carries_the_rule_packs(image: Image) -> None:
    (wheel,) = (image.root / "src" / "dist").glob("otlp_meter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packs = sorted(p.name for p in (dockerfile.REPO / "rules").glob("*.yaml"))
    assert packs, "the repository ships rule packs"
    assert {f"otlp_meter/packs/{name}" for name in packs} <= names
    assert {"otlp_meter/py.typed", "otlp_meter/queue/proto/record_pb2.py"} <= names


def _image_python(image: Image, code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` with the image's interpreter, environment and working directory."""
    return subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", code],
        env=image.env,
        cwd=image.workdir,
        capture_output=True,
        text=True,
    )


def test_the_image_runs_the_rules_in_c(image: Image) -> None:
    """The build stage has a compiler (installed when the base image lacks one): the wheel carries
    the rules engine's C extension, and the service uses it."""
    result = _image_python(
        image, "import otlp_meter.native as n; print(n.module.__file__ if n.available() else '')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(image.venv / "lib")), result.stdout


def test_installed_not_editable_and_finds_the_packs(image: Image) -> None:
    probe = (
        "import json, otlp_meter, otlp_meter.rules.loader as loader;"
        "print(json.dumps([otlp_meter.__file__, str(loader.PACKS_DIR), loader.available_packs()]))"
    )
    result = _image_python(image, probe)
    assert result.returncode == 0, f"otlp_meter does not import from the image:\n{result.stderr}"
    module, packs_dir, packs = json.loads(result.stdout)
    site_packages = str(image.venv / "lib")
    assert module.startswith(site_packages), module
    assert packs_dir.startswith(site_packages), packs_dir
    assert not Path(packs_dir).is_symlink(), "the packs are real files in the wheel, not a link"
    assert packs == sorted(p.stem for p in (dockerfile.REPO / "rules").glob("*.yaml"))
    check = subprocess.run(
        _container_argv(image, ["otlp-meter", "check", "--config", "/etc/otlp-meter/config.yaml"]),
        env=image.env,
        cwd=image.workdir,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "configuration OK" in check.stdout


@pytest.fixture
def running(image: Image, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int], Path]]:
    """The service started as the image's ENTRYPOINT + CMD, its config on free loopback ports."""
    config_path = image.host("/etc/otlp-meter/config.yaml")
    config = yaml.safe_load(config_path.read_text())
    ports = {"grpc": free_port(), "http": free_port(), "events": free_port(), "telemetry": free_port()}
    queue_dir = image.host(config["queue"]["directory"]) / tmp_path.name  # fresh per test
    config["receivers"]["otlp"]["grpc"]["endpoint"] = f"127.0.0.1:{ports['grpc']}"
    config["receivers"]["otlp"]["http"]["endpoint"] = f"127.0.0.1:{ports['http']}"
    config["receivers"]["events_api"]["endpoint"] = f"127.0.0.1:{ports['events']}"
    config["telemetry"]["endpoint"] = f"127.0.0.1:{ports['telemetry']}"
    config["queue"]["directory"] = str(queue_dir)
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen(
        _container_argv(image, image.argv),
        env=image.env,
        cwd=image.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process, ports, queue_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        print((tmp_path / "service.log").read_text(errors="replace"))


def test_starts_like_the_entrypoint_serves_health_and_stops_on_sigterm(
    image: Image, running: tuple[subprocess.Popen[bytes], dict[str, int], Path]
) -> None:
    process, ports, queue_dir = running
    telemetry = f"http://127.0.0.1:{ports['telemetry']}"

    def healthy() -> bool:
        assert process.poll() is None, f"otlp-meter exited with {process.returncode}"
        try:
            return httpx.get(f"{telemetry}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=30, what="/healthz")
    wait_until(lambda: httpx.get(f"{telemetry}/readyz", timeout=1).status_code == 200, what="/readyz")

    # The image's HEALTHCHECK command, pointed at this instance's port, passes.
    healthcheck = [a.replace(":8888/", f":{ports['telemetry']}/") for a in image.healthcheck]
    result = subprocess.run(
        _container_argv(image, healthcheck), env=image.env, capture_output=True, timeout=10
    )
    assert result.returncode == 0, result.stderr

    # The packs work from the installed wheel: one GenAI record becomes two events in the events file.
    answer = httpx.post(f"http://127.0.0.1:{ports['http']}/v1/logs", json=GENAI_LOGS, timeout=10)
    assert answer.status_code == 200, answer.text
    events_file = queue_dir / "events.jsonl"
    wait_until(lambda: events_file.exists() and len(events_file.read_text().splitlines()) == 2, what="events")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert sorted(e["data"]["tokens"] for e in events) == [12, 34]

    # The events API (an OpenMeter SDK's request) is served too; its event goes out as sent.
    answer = httpx.post(
        f"http://127.0.0.1:{ports['events']}/api/v1/events",
        json=SDK_EVENT,
        headers={"Content-Type": "application/cloudevents+json"},
        timeout=10,
    )
    assert answer.status_code == 204, answer.text
    wait_until(lambda: len(events_file.read_text().splitlines()) == 3, what="the events API's event")
    (sent,) = [e for e in map(json.loads, events_file.read_text().splitlines()) if e["id"] == SDK_EVENT["id"]]
    assert (sent["source"], sent["type"], sent["data"]) == ("checkout", "api-call", {"calls": 1})

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
    failed = subprocess.run(
        _container_argv(image, healthcheck), env=image.env, capture_output=True, timeout=10
    )
    assert failed.returncode != 0, "the HEALTHCHECK fails when the service is down"
