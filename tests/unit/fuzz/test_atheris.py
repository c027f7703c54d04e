"""Runs each atheris target (see ``atheris_targets.py``) for a CI-sized number of runs, seeded
with valid inputs. atheris is pinned in requirements-dev.txt: its absence is a failure in CI."""

from __future__ import annotations

import gzip
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from google.protobuf import json_format

from tests.unit.fuzz.harness import SCALE
from tests.unit.receivers.conftest import counter_metrics, genai_logs

RUNS = int(20_000 * SCALE)
ROOT = Path(__file__).resolve().parents[3]
EVENT = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "x", "data": {"n": 1}}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None and os.environ.get("CI") != "true",
    reason="atheris is not installed (pip install -r requirements-dev.txt)",
)


def seeds(target: str) -> list[bytes]:
    logs, metrics = genai_logs("acme"), counter_metrics("acme")
    if target == "otlp_json":
        return [json_format.MessageToJson(logs).encode(), b"m" + json_format.MessageToJson(metrics).encode()]
    if target == "otlp_protobuf":
        return [logs.SerializeToString(), b"\x00" + metrics.SerializeToString()]
    if target == "events":
        return [b"\x00" + orjson.dumps(EVENT), b"\x05" + orjson.dumps([EVENT, EVENT])]
    return [b"g" + gzip.compress(orjson.dumps(EVENT)), b"d" + b"x\x9c" + gzip.compress(b"")[10:]]


@pytest.mark.parametrize("target", ["otlp_json", "otlp_protobuf", "events", "decompress"])
def test_atheris_finds_no_crash(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed{i}").write_bytes(seed)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.unit.fuzz.atheris_targets",
            target,
            f"-runs={RUNS}",
            "-max_len=4096",
            "-rss_limit_mb=2048",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} runs" in result.stderr
