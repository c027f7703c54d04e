"""The Helm chart in deploy/helm/otlp-meter, rendered by Helm's own engine.

No ``helm`` binary installs here (not in Debian, not on PyPI), but ``helm-python-sdk`` ships Helm's Go SDK
(v4) as a shared library: ``Chart.render`` is the engine ``helm template`` runs, values.schema.json
included, and ``lint`` is ``helm lint``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.k8s import REPO, Bundle, assert_deployable, parse_documents, project_version

CHART = REPO / "deploy" / "helm" / "otlp-meter"
RELEASE, NAMESPACE = "metering", "observability"
TOKEN = {"openmeter": {"token": "s3cret"}}

CUSTOM_RULES = """\
rules:
  - name: api-calls
    match:
      signal: logs
      where:
        - path: attributes.api.call
          exists: true
    event:
      type: api-call
      subject: {path: attributes.customer.id}
      data:
        calls: 1
"""
# Inline rules live in the main config, where ${VAR} expands: the container's NODE_NAME is there.
NODE_RULE = {
    "name": "node-usage",
    "match": {"signal": "metrics", "metric": "node.usage"},
    "event": {"type": "node-usage", "subject": "${NODE_NAME}", "data": {"value": {"path": "point.value"}}},
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    texts = [text for path, text in manifests.items() if path.endswith((".yaml", ".yml"))]
    return parse_documents(texts)


def test_chart_metadata_matches_the_project() -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert metadata["appVersion"] == project_version()
    assert metadata["kubeVersion"] == ">=1.26.0-0"


@pytest.mark.parametrize(
    "values",
    [TOKEN, {**TOKEN, "presets": {"kubernetes": {"enabled": True}}}],
    ids=["defaults", "kubernetes-preset"],
)
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.26.0")
    findings = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not report["errors"], report
    assert not findings, report


def test_daemonset_defaults(chart: helm.Chart, tmp_path: Path) -> None:
    objects = render(chart, TOKEN)
    assert sorted(o["kind"] for o in objects) == [
        "ConfigMap",
        "DaemonSet",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    bundle, config = assert_deployable(objects, tmp_path)
    assert bundle.container_env()["OPENMETER_TOKEN"] == "s3cret"
    assert config.rules.packs == ["genai", "http"]
    ports = {p["name"]: p for p in bundle.container["ports"]}
    assert ports["otlp-grpc"]["hostPort"] == 4317
    assert ports["otlp-http"]["hostPort"] == 4318
    assert "events" not in ports, "the events API port opens with its preset"
    assert bundle.container["image"] == f"otlp-meter:{project_version()}"


def test_every_preset_and_custom_rules(chart: helm.Chart, tmp_path: Path) -> None:
    values = {
        "openmeter": {"existingSecret": "billing", "existingSecretKey": "konnect-token"},
        "presets": {"eventsApi": {"enabled": True}, "kubernetes": {"enabled": True}},
        "rules": {"files": {"api.yaml": CUSTOM_RULES}, "packs": ["genai"], "inline": [NODE_RULE]},
        "config": {"exporter": {"batch": {"max_events": 500}}, "queue": {"directory": "/elsewhere"}},
        "ports": {"telemetry": 9464},
    }
    objects = render(chart, values)
    assert {"ClusterRole", "ClusterRoleBinding"} <= {o["kind"] for o in objects}
    assert not [o for o in objects if o["kind"] == "Secret"], "an existing Secret is referenced, not created"
    bundle, config = assert_deployable(objects, tmp_path)
    token = next(v for v in bundle.container["env"] if v["name"] == "OPENMETER_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "billing", "key": "konnect-token"}
    assert [path.name for path in config.rules.files] == ["api.yaml"]
    assert config.rules.packs == ["genai"]
    assert config.rules.inline[0].event.subject.value == "node-1"  # NODE_NAME from the downward API
    assert config.exporter.batch.max_events == 500
    assert str(config.queue.directory) == "/var/lib/otlp-meter", "the chart owns queue.directory"
    assert bundle.container_port("events")["hostPort"] == 8080
    assert bundle.container_port("telemetry")["containerPort"] == 9464


def test_deployment_gateway_on_a_pvc(chart: helm.Chart, tmp_path: Path) -> None:
    values = {
        "mode": "deployment",
        "openmeter": {"url": "http://openmeter.openmeter.svc:8888"},
        "storage": {"type": "pvc", "mountPath": "/data/otlp-meter", "pvc": {"size": "50Gi"}},
        "tolerations": [],
    }
    objects = render(chart, values)
    bundle, config = assert_deployable(objects, tmp_path)
    workload = bundle.workload
    assert workload["kind"] == "Deployment"
    assert str(config.queue.directory) == "/data/otlp-meter"
    claim = bundle.volume("queue")["persistentVolumeClaim"]["claimName"]
    pvc = bundle.named("PersistentVolumeClaim", claim)
    assert pvc is not None
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "OPENMETER_TOKEN" not in bundle.container_env()
    assert not any("hostPort" in p for p in bundle.container["ports"])
    assert bundle.of_kind("Service")[0]["spec"]["internalTrafficPolicy"] == "Cluster"
    assert bundle.pod["securityContext"]["fsGroup"] == 10001
    assert "initContainers" not in bundle.pod


def test_otlp_preset_off_disables_the_receivers(chart: helm.Chart, tmp_path: Path) -> None:
    objects = render(chart, {**TOKEN, "presets": {"otlp": {"enabled": False}}})
    bundle, config = assert_deployable(objects, tmp_path)
    assert not config.receivers.otlp.grpc.enabled
    assert not config.receivers.otlp.http.enabled
    assert [p["name"] for p in bundle.container["ports"]] == ["telemetry"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set openmeter.token, openmeter.existingSecret or openmeter.url"),
        ({**TOKEN, "storage": {"type": "pvc"}}, "storage.type pvc needs mode deployment"),
        ({**TOKEN, "mode": "deployment", "replicaCount": 2, "storage": {"type": "pvc"}}, "replicaCount > 1"),
        ({**TOKEN, "storge": {}}, "additional properties 'storge' not allowed"),
        ({**TOKEN, "ports": {"telemetry": "8888"}}, "want integer"),
        ({**TOKEN, "rules": {"files": {"bad/name.yaml": ""}}}, "invalid propertyName 'bad/name.yaml'"),
    ],
    ids=["no-target", "daemonset-pvc", "shared-queue", "typo", "port-type", "rule-file-name"],
)
def test_refused_values(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


def test_config_changes_roll_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        workload = Bundle(render(chart, values)).workload
        return str(workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(TOKEN) != checksum({**TOKEN, "rules": {"packs": ["genai"]}})


def test_gateway_replicas_each_with_their_own_ephemeral_queue(chart: helm.Chart, tmp_path: Path) -> None:
    values = {**TOKEN, "mode": "deployment", "replicaCount": 3, "storage": {"type": "emptyDir"}}
    bundle, _ = assert_deployable(render(chart, values), tmp_path)
    assert bundle.workload["spec"]["replicas"] == 3
    assert bundle.volume("queue")["emptyDir"] == {"sizeLimit": "4Gi"}
    notes = chart.render(values, name=RELEASE, namespace=NAMESPACE)["otlp-meter/templates/NOTES.txt"]
    assert "WARNING: storage.type is emptyDir" in notes
