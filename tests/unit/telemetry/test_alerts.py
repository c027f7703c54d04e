"""The alerts in docs/operations.md are a rule file Prometheus accepts, and every metric they use is one
otlp-meter exports (docs/metrics.md): an alert on a renamed metric never fires, silently."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from otlp_meter.telemetry import spec

OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def alert_rules() -> str:
    section = OPERATIONS.read_text().split("\n## Alerts\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_five_alerts_an_operator_needs_are_there() -> None:
    [group] = yaml.safe_load(alert_rules())["groups"]

    assert [rule["alert"] for rule in group["rules"]] == [
        "OtlpMeterNoIntake",
        "OtlpMeterExportFailing",
        "OtlpMeterQueueGrowing",
        "OtlpMeterDiskNearlyFull",
        "OtlpMeterDeadLettersRising",
    ]
    assert all(rule["annotations"]["summary"] and rule["labels"]["severity"] for rule in group["rules"])


def test_every_metric_the_alerts_use_is_exported() -> None:
    used = set(re.findall(r"\b(otlp_meter_[a-z_]+)\b", alert_rules()))
    exported = {d.name for d in spec.ALL}

    assert used
    assert used <= exported, used - exported


def test_promtool_accepts_the_rule_file(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = tmp_path / "otlp-meter.rules.yml"
    rules.write_text(alert_rules())

    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 rules found" in checked.stdout
