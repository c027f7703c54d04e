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


KUBERNETES = {"presets": {"kubernetes": {"enabled": True}}}
GATEWAY = {"mode": "deployment", "storage": {"type": "pvc"}, "tolerations": []}


@pytest.mark.parametrize(
    "values",
    [TOKEN, {**TOKEN, **KUBERNETES}, {**TOKEN, **KUBERNETES, **GATEWAY}],
    ids=["defaults", "kubernetes-preset", "kubernetes-gateway"],
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
    # The events API is on by default, like the OTLP receivers (and like otlp-meter's own default).
    assert config.receivers.events_api.enabled
    assert config.receivers.events_api.endpoint == "0.0.0.0:8080"
    assert ports["events"]["hostPort"] == 8080
    assert _service_ports(bundle)["events"] == 8080
    assert config.sources.kubernetes is None, "the Kubernetes source comes with its preset (and RBAC)"
    assert bundle.container["image"] == f"otlp-meter:{project_version()}"


def _service_ports(bundle: Bundle) -> dict[str, int]:
    """The Service's ports by the container port they target."""
    (service,) = bundle.of_kind("Service")
    return {bundle.container_port(p["targetPort"])["name"]: p["port"] for p in service["spec"]["ports"]}


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
    assert config.rules.packs == ["genai", "kubernetes"], "the preset adds the kubernetes pack"
    kube = config.sources.kubernetes
    assert kube is not None
    assert (kube.interval, kube.cluster_wide, kube.exclude_namespaces) == (60, False, ["kube-system"])
    event = config.rules.inline[0].event
    assert event is not None
    assert event.subject.value == "node-1"  # NODE_NAME from the downward API
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


def test_deployment_gateway_meters_the_whole_cluster(chart: helm.Chart, tmp_path: Path) -> None:
    values = {**TOKEN, **KUBERNETES, **GATEWAY, "sources": {"kubernetes": {"cluster_name": "prod-eu"}}}
    bundle, config = assert_deployable(render(chart, values), tmp_path)
    assert bundle.workload["kind"] == "Deployment"
    kube = config.sources.kubernetes
    assert kube is not None
    assert kube.cluster_wide, "one gateway meters every node's pods"
    assert kube.cluster_name == "prod-eu"
    assert {"ClusterRole", "ClusterRoleBinding"} <= {o["kind"] for o in bundle.objects}
    notes = chart.render(values, name=RELEASE, namespace=NAMESPACE)["otlp-meter/templates/NOTES.txt"]
    assert "bills every pod of the cluster" in notes


@pytest.mark.parametrize("kubernetes", [False, True])
def test_the_pod_gets_an_api_token_only_for_the_kubernetes_source(
    chart: helm.Chart, kubernetes: bool
) -> None:
    values = {**TOKEN, **(KUBERNETES if kubernetes else {})}
    (workload,) = [d for d in render(chart, values) if d["kind"] in ("DaemonSet", "Deployment")]
    assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is kubernetes


def test_the_same_release_in_two_namespaces_owns_its_own_cluster_role(chart: helm.Chart) -> None:
    """ClusterRole and ClusterRoleBinding are cluster-scoped: their names carry the namespace."""
    names: dict[str, set[str]] = {}
    for namespace in ("team-a", "team-b"):
        manifests = chart.render({**TOKEN, **KUBERNETES}, name=RELEASE, namespace=namespace, is_install=True)
        documents = parse_documents([t for p, t in manifests.items() if p.endswith((".yaml", ".yml"))])
        roles = {d["kind"]: d for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")}
        assert roles["ClusterRoleBinding"]["roleRef"]["name"] == roles["ClusterRole"]["metadata"]["name"]
        assert roles["ClusterRoleBinding"]["subjects"][0]["namespace"] == namespace
        names[namespace] = {d["metadata"]["name"] for d in roles.values()}
    assert names["team-a"] == {f"team-a-{RELEASE}-otlp-meter"}
    assert not names["team-a"] & names["team-b"]


def test_kubernetes_source_settings_go_over_the_presets_defaults(chart: helm.Chart, tmp_path: Path) -> None:
    # namespaces and exclude_namespaces are exclusive: choosing namespaces drops the default exclusion.
    values = {**TOKEN, **KUBERNETES, "sources": {"kubernetes": {"namespaces": ["team-a"], "interval": "5m"}}}
    _, config = assert_deployable(render(chart, values), tmp_path)
    kube = config.sources.kubernetes
    assert kube is not None
    assert (kube.namespaces, kube.exclude_namespaces, kube.interval) == (["team-a"], [], 300)


@pytest.mark.parametrize(
    "config",
    [{}, {"receivers": {"otlp": {"grpc": {"enabled": True}, "http": {"enabled": True}}}}],
    ids=["plain", "config-tries-to-enable"],
)
def test_otlp_preset_off_disables_the_receivers(
    chart: helm.Chart, tmp_path: Path, config: dict[str, Any]
) -> None:
    objects = render(chart, {**TOKEN, "presets": {"otlp": {"enabled": False}}, "config": config})
    bundle, parsed = assert_deployable(objects, tmp_path)
    assert not parsed.receivers.otlp.grpc.enabled
    assert not parsed.receivers.otlp.http.enabled
    assert [p["name"] for p in bundle.container["ports"]] == ["events", "telemetry"]
    assert sorted(_service_ports(bundle)) == ["events", "telemetry"]


@pytest.mark.parametrize(
    "config",
    [{}, {"receivers": {"events_api": {"enabled": True, "max_events_per_request": 500}}}],
    ids=["plain", "config-tries-to-enable"],
)
@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_events_api_preset_off_disables_the_receiver_and_closes_its_port(
    chart: helm.Chart, tmp_path: Path, config: dict[str, Any], mode: str
) -> None:
    # otlp-meter enables the events API by default: the chart must switch it off, not just leave the port
    # closed (a listener nobody exposed), even when `config` says otherwise.
    values = {**TOKEN, "presets": {"eventsApi": {"enabled": False}}, "config": config}
    if mode == "deployment":
        values.update(GATEWAY)
    bundle, parsed = assert_deployable(render(chart, values), tmp_path)
    assert not parsed.receivers.events_api.enabled
    assert "events" not in {p["name"] for p in bundle.container["ports"]}
    assert 8080 not in {p["containerPort"] for p in bundle.container["ports"]}
    assert "events" not in _service_ports(bundle)
    assert 8080 not in _service_ports(bundle).values()


@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_events_api_port_moves_everywhere_at_once(chart: helm.Chart, tmp_path: Path, mode: str) -> None:
    values: dict[str, Any] = {**TOKEN, "ports": {"eventsApi": 9080}}
    if mode == "deployment":
        values.update(GATEWAY)
    bundle, config = assert_deployable(render(chart, values), tmp_path)
    assert config.receivers.events_api.endpoint == "0.0.0.0:9080"
    port = bundle.container_port("events")
    assert port["containerPort"] == 9080
    assert port.get("hostPort") == (9080 if mode == "daemonset" else None)
    assert _service_ports(bundle)["events"] == 9080


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set openmeter.token, openmeter.existingSecret or openmeter.url"),
        ({**TOKEN, "storage": {"type": "pvc"}}, "storage.type pvc needs mode deployment"),
        ({**TOKEN, "mode": "deployment", "replicaCount": 2, "storage": {"type": "pvc"}}, "replicaCount > 1"),
        ({**TOKEN, "storge": {}}, "additional properties 'storge' not allowed"),
        ({**TOKEN, "ports": {"telemetry": "8888"}}, "want integer"),
        ({**TOKEN, "rules": {"files": {"bad/name.yaml": ""}}}, "invalid propertyName 'bad/name.yaml'"),
        (
            {**TOKEN, "sources": {"kubernetes": {"interval": "60s"}}},
            "sources.kubernetes needs presets.kubernetes.enabled",
        ),
        (
            {**TOKEN, "config": {"sources": {"kubernetes": {}}}},
            "sources.kubernetes needs presets.kubernetes.enabled",
        ),
        (
            {**TOKEN, **KUBERNETES, "sources": {"kubernetes": {"cluster_wide": True}}},
            "cluster_wide: true in daemonset mode would bill every pod once per node",
        ),
        (
            {
                **TOKEN,
                **KUBERNETES,
                **GATEWAY,
                "config": {"sources": {"kubernetes": {"cluster_wide": False}}},
            },
            "cluster_wide: false in deployment mode",
        ),
        (
            {**TOKEN, **KUBERNETES, **GATEWAY, "replicaCount": 2, "storage": {"type": "emptyDir"}},
            "presets.kubernetes in deployment mode needs replicaCount 1",
        ),
        ({**TOKEN, "mode": "deployment"}, "mode deployment needs storage.type pvc"),
    ],
    ids=[
        "no-target",
        "daemonset-pvc",
        "shared-queue",
        "typo",
        "port-type",
        "rule-file-name",
        "source-without-preset",
        "source-in-config-without-preset",
        "cluster-wide-daemonset",
        "node-local-gateway",
        "kubernetes-gateway-replicas",
        "gateway-on-hostpath",
    ],
)
def test_refused_values(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


def test_config_and_token_changes_roll_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any], of: str = "config") -> str:
        workload = Bundle(render(chart, values)).workload
        return str(workload["spec"]["template"]["metadata"]["annotations"][f"checksum/{of}"])

    assert checksum(TOKEN) != checksum({**TOKEN, "rules": {"packs": ["genai"]}})
    # The token is read from the Secret at container start: a new one must restart the pods.
    rotated = {**TOKEN, "openmeter": {**TOKEN["openmeter"], "token": "om_rotated"}}
    assert checksum(TOKEN, "secret") != checksum(rotated, "secret")


@pytest.mark.parametrize("value", [0, "0%"])
def test_a_daemonset_update_must_be_allowed_to_take_a_pod_down(chart: helm.Chart, value: object) -> None:
    """maxSurge is 0 (a node's queue has one writer): maxUnavailable 0 could never roll."""
    with pytest.raises(helm.HelmError):
        render(chart, {**TOKEN, "maxUnavailable": value})


def test_gateway_replicas_each_with_their_own_ephemeral_queue(chart: helm.Chart, tmp_path: Path) -> None:
    values = {**TOKEN, "mode": "deployment", "replicaCount": 3, "storage": {"type": "emptyDir"}}
    bundle, _ = assert_deployable(render(chart, values), tmp_path)
    assert bundle.workload["spec"]["replicas"] == 3
    assert bundle.volume("queue")["emptyDir"] == {"sizeLimit": "4Gi"}
    notes = chart.render(values, name=RELEASE, namespace=NAMESPACE)["otlp-meter/templates/NOTES.txt"]
    assert "WARNING: storage.type is emptyDir" in notes


def test_certificates_can_be_mounted_and_the_probes_follow_telemetry_tls(chart: helm.Chart) -> None:
    """security.md asks exposed deployments for TLS: the chart must be able to mount the files."""
    tls = {"cert_file": "/etc/otlp-meter-tls/tls.crt", "key_file": "/etc/otlp-meter-tls/tls.key"}
    mount = {"name": "tls", "mountPath": "/etc/otlp-meter-tls", "readOnly": True}
    values: dict[str, Any] = {
        **TOKEN,
        "config": {"telemetry": {"tls": tls}, "receivers": {"otlp": {"grpc": {"tls": tls}}}},
        "extraVolumes": [{"name": "tls", "secret": {"secretName": "otlp-meter-tls"}}],
        "extraVolumeMounts": [mount],
    }
    bundle = Bundle(render(chart, values))
    assert bundle.volume("tls") == {"name": "tls", "secret": {"secretName": "otlp-meter-tls"}}
    assert bundle.mount_at("/etc/otlp-meter-tls") == mount
    probes = [bundle.container["livenessProbe"], bundle.container["readinessProbe"]]
    assert [p["httpGet"].get("scheme") for p in probes] == ["HTTPS", "HTTPS"]
    plain = Bundle(render(chart, TOKEN)).container
    assert "scheme" not in plain["livenessProbe"]["httpGet"]
