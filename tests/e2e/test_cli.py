"""The command line: ``check`` names each mistake by YAML path; ``run`` fails fast and says why."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from tests.e2e.otlp_clients import send_logs
from tests.e2e.test_pipeline import expected_genai, genai_record
from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import ServiceProcess, wait_until

pytestmark = pytest.mark.e2e


def otlp_meter(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otlp_meter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def write_config(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_check_accepts_the_embedded_defaults() -> None:
    result = otlp_meter("check")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_check_names_the_yaml_path_of_every_mistake_and_never_prints_secrets(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "receivers": {"otlp": {"grpc": {"endpoint": "0.0.0.0:4317", "max_recv_msg_sise": 10}}},
            "exporter": {"batch": {"max_events": "many"}, "openmeter": {"token": "${SECRET_TOKEN}"}},
            "rules": {
                "inline": [{"name": "r", "match": {"signal": "logs"}, "event": {"type": 3, "bogus": 1}}]
            },
            "queue": {"max_bytes": "lots"},
        },
    )
    result = otlp_meter("check", "--config", str(config), env={"SECRET_TOKEN": "s3cr3t-value"})
    assert result.returncode == 2
    err = result.stderr
    assert "receivers.otlp.grpc.max_recv_msg_sise: unknown key" in err
    assert "exporter.batch.max_events:" in err
    assert "queue.max_bytes:" in err
    assert "rules.inline[0].event" in err
    assert "s3cr3t-value" not in err + result.stdout


def test_check_reads_what_run_reads_before_it_starts(tmp_path: Path) -> None:
    """A certificate that is not there fails ``check`` as it would fail ``run`` (exit 2, its path)."""
    tls = {"cert_file": str(tmp_path / "absent.crt"), "key_file": str(tmp_path / "absent.key")}
    result = otlp_meter(
        "check", "--config", str(write_config(tmp_path, {"receivers": {"otlp": {"http": {"tls": tls}}}}))
    )
    assert result.returncode == 2, result.stdout
    assert "receivers.otlp.http.tls" in result.stderr


def test_check_reports_a_missing_environment_variable_by_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"exporter": {"openmeter": {"url": "${NOT_SET_ANYWHERE}"}}})
    result = otlp_meter("check", "--config", str(config))
    assert result.returncode == 2
    assert "exporter.openmeter.url: environment variable NOT_SET_ANYWHERE is not set" in result.stderr


def test_check_reports_invalid_yaml_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("queue:\n  directory: [unclosed\n")
    result = otlp_meter("check", "--config", str(path))
    assert result.returncode == 2
    assert "invalid YAML" in result.stderr
    assert "line " in result.stderr


def test_run_exits_non_zero_when_a_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceProcess(
            tmp_path, {"receivers": {"otlp": {"http": {"endpoint": f"127.0.0.1:{port}"}}}}
        )
        result = otlp_meter("run", "--config", str(service.config_path))
    assert result.returncode == 1
    assert "startup_failed" in result.stderr


def test_without_openmeter_events_go_to_a_local_file_with_a_warning(tmp_path: Path) -> None:
    with ServiceProcess(tmp_path) as service:
        send_logs("grpc", service.grpc_endpoint, [genai_record(0)])
        events_file = tmp_path / "data" / "events.jsonl"
        wait_until(lambda: events_file.exists() and len(events_file.read_bytes().splitlines()) >= 2)
        lines = [orjson.loads(line) for line in events_file.read_bytes().splitlines()]
    assert sorted(e["data"]["type"] for e in lines) == ["input", "output"]
    assert [e["data"] for e in lines] == [e["data"] for e in expected_genai(0)]
    warnings = [e for e in service.log_events() if e["event"] == "exporter_writing_to_file"]
    assert warnings
    assert warnings[0]["level"] == "warn"


def test_konnect_token_posts_to_the_v3_events_path(tmp_path: Path) -> None:
    with (
        FakeOpenMeter(token="kong-token", api="v3") as konnect,
        ServiceProcess(
            tmp_path, env={"OPENMETER_URL": konnect.url, "OPENMETER_TOKEN": "kong-token"}
        ) as service,
    ):
        send_logs("grpc", service.grpc_endpoint, [genai_record(0)])
        konnect.wait_for_events(2)
        assert konnect.requests[-1].path == "/v3/openmeter/events"
        startup = next(e for e in service.log_events() if e["event"] == "startup")
    assert "kong-token" not in service.logs()
    assert "/v3/openmeter/events" in startup["exporter"]


def test_check_refuses_an_openmeter_url_without_a_scheme() -> None:
    result = otlp_meter("check", env={"OPENMETER_URL": "localhost:8888"})
    assert result.returncode == 2
    assert "exporter.openmeter.url: $OPENMETER_URL must be an http(s) URL" in result.stderr


def test_check_does_not_need_what_only_the_pod_s_environment_has(tmp_path: Path) -> None:
    """The shipped DaemonSet config names no node: ``$NODE_NAME`` comes with the pod. ``check`` on a
    laptop or in CI validates the rest."""
    config = write_config(tmp_path, {"sources": {"kubernetes": {}}})
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    result = subprocess.run(
        [sys.executable, "-m", "otlp_meter", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
