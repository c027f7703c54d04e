"""Startup stays light: heavy client libraries are imported by the sources that use them, when they
run, never by importing the service or by validating (and building) a config that names them.

Measured when this guard was added: ``kubernetes_asyncio`` (with aiohttp) ~0.35 s and ~60 MiB of heap,
``boto3``/``botocore`` ~0.12 s and ~23 MiB — on every start, whether the source was configured or not —
and ``cel`` ~0.13 s and ~25 MiB, now imported when a rule's expression is first compiled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("kubernetes_asyncio", "aiohttp", "boto3", "botocore", "s3transfer", "cel", "rich", "pygments")

PROBE = """
import json, sys
import otlp_meter.service
from otlp_meter.config import parse_config
from otlp_meter.sources.config import build_sources

config = parse_config(
    {
        "sources": {
            "kubernetes": {"node_name": "node-1", "api_url": "http://127.0.0.1:1"},
            "s3": [{"bucket": "usage", "endpoint_url": "http://127.0.0.1:1"}],
        }
    },
    {},
)
sources = build_sources(config.sources)
heavy = json.loads(sys.argv[1])
print(json.dumps({"sources": len(sources), "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def test_importing_the_service_and_configuring_sources_imports_no_heavy_client() -> None:
    # A fresh interpreter: this test process may have imported anything already.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sources"] == 2
    assert report["loaded"] == []
