"""``otlp-meter rules test`` as an operator runs it: a process, a file, stdout and an exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from otlp_meter.receivers.otlp_json import encode_response
from tests.unit.rules.otlp import log_record, logs_request

pytestmark = pytest.mark.e2e


def rules_test(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "otlp_meter", "rules", "test", *args],
        capture_output=True,
        input=stdin,
        timeout=60,
    )


def test_shipped_packs_on_an_otlp_json_file_from_stdin(tmp_path: Path) -> None:
    request = logs_request(
        log_record({"gen_ai.usage.input_tokens": 7, "customer.id": "acme", "gen_ai.request.model": "m"}),
        log_record({"gen_ai.usage.input_tokens": "x", "customer.id": "acme"}),
        resource={"service.name": "chat-api"},
    )
    done = rules_test("--input", "-", "--format", "json", "--now", "0", stdin=encode_response(request))
    assert done.returncode == 1, done.stderr
    report = orjson.loads(done.stdout)
    assert [e["data"] for e in report["events"]] == [{"tokens": 7, "model": "m", "type": "input"}]
    assert [r["reason"] for r in report["rejected"]] == ["data.tokens: cannot convert 'x' to int"]


def test_a_clean_run_exits_0_and_prints_a_table(tmp_path: Path) -> None:
    path = tmp_path / "export.pb"
    path.write_bytes(
        logs_request(log_record({"method": "GET", "path": "/", "user": "u"})).SerializeToString()
    )
    done = rules_test("--pack", "http", "--input", str(path))
    assert done.returncode == 0, done.stderr
    assert b"EVENTS (1)" in done.stdout
    assert b"api-call" in done.stdout


def test_output_cut_short_by_the_reader_is_no_error(tmp_path: Path) -> None:
    """``otlp-meter rules test … | head``: the reader closing the pipe early is not a failure."""
    records = [log_record({"method": "GET", "path": f"/{i}", "user": "u"}) for i in range(3000)]
    path = tmp_path / "export.pb"
    path.write_bytes(logs_request(*records).SerializeToString())
    command = [sys.executable, "-m", "otlp_meter", "rules", "test", "--pack", "http", "--input", str(path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(100)
        process.stdout.close()  # like head after its lines
        errors = process.stderr.read()
        assert process.wait(60) == 0, errors
    assert b"Traceback" not in errors
