"""The plain manifests in deploy/kubernetes/: valid Kubernetes objects that fit the image and the config."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.k8s import REPO, Bundle, assert_deployable, parse_documents, schema_errors

MANIFESTS = REPO / "deploy" / "kubernetes"


def _objects(*, with_example_secret: bool) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = list(kustomization["resources"])
    if with_example_secret:
        files.append("secret.example.yaml")
    return parse_documents((MANIFESTS / name).read_text() for name in files)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    namespaces = {o["metadata"].get("namespace") for o in _objects(with_example_secret=True)} - {None}
    assert namespaces == {kustomization["namespace"]}


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed"
)
def test_kustomize_builds_what_the_tests_check(tmp_path: Path) -> None:
    # `kubectl apply -k` renders through kustomize: check what it produces, not only the files.
    built = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60, check=True
    )
    objects = parse_documents([built.stdout])
    files = _objects(with_example_secret=False)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in files
    )
    secret = parse_documents([(MANIFESTS / "secret.example.yaml").read_text()])
    assert_deployable(objects + secret, tmp_path)


def test_every_object_is_valid_against_the_kubernetes_schema() -> None:
    objects = _objects(with_example_secret=True)
    assert {o["kind"] for o in objects} == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "DaemonSet",
        "Service",
    }
    problems = [error for obj in objects for error in schema_errors(obj)]
    assert not problems, "\n".join(problems)


def test_manifests_fit_the_image_and_the_config(tmp_path: Path) -> None:
    bundle, config = assert_deployable(_objects(with_example_secret=True), tmp_path)
    assert bundle.workload["kind"] == "DaemonSet"
    assert str(config.queue.directory) == "/var/lib/otlp-meter"
    # The events API is served on every node like OTLP: hostPort and node-local Service on 8080.
    assert config.receivers.events_api.enabled
    assert config.receivers.events_api.endpoint == "0.0.0.0:8080"
    assert bundle.container_port("events")["hostPort"] == 8080
    # The Kubernetes source meters this node's pods (its RBAC is in rbac.yaml).
    assert bundle.of_kind("ClusterRole"), "the plain manifests always carry the source's RBAC"
    kube = config.sources.kubernetes
    assert kube is not None
    assert (kube.interval, kube.cluster_wide, kube.exclude_namespaces) == (60, False, ["kube-system"])
    assert "kubernetes" in config.rules.packs


def test_without_the_secret_the_token_still_comes_from_its_reference(tmp_path: Path) -> None:
    # kubectl apply -k does not create the Secret: the pod reads the one the operator created.
    bundle, _ = assert_deployable(_objects(with_example_secret=False), tmp_path)
    assert bundle.container_env()["OPENMETER_TOKEN"]


def test_the_validator_rejects_unknown_and_mistyped_fields() -> None:
    # Guards the guard: a schema check that accepted anything would make the tests above meaningless.
    daemonset = Bundle(_objects(with_example_secret=False)).workload
    typo = copy.deepcopy(daemonset)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    assert any("livenesProbe" in e for e in schema_errors(typo))
    mistyped = copy.deepcopy(daemonset)
    mistyped["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "4317"
    assert schema_errors(mistyped)


def _named(items: list[dict[str, Any]], name: str, key: str = "name") -> dict[str, Any]:
    return next(item for item in items if item.get(key) == name)


def _pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return pod


def _container(daemonset: dict[str, Any]) -> dict[str, Any]:
    return _named(_pod(daemonset)["containers"], "otlp-meter")


def _config_edit(old: str, new: str) -> Callable[[list[dict[str, Any]]], None]:
    """A change to the ConfigMap's config.yaml text (``old`` must be in it)."""

    def edit(objects: list[dict[str, Any]]) -> None:
        data = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
        assert old in data["config.yaml"], old
        data["config.yaml"] = data["config.yaml"].replace(old, new)

    return edit


def _without_the_source(objects: list[dict[str, Any]]) -> None:
    data = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    config = yaml.safe_load(data["config.yaml"])
    del config["sources"]
    data["config.yaml"] = yaml.safe_dump(config)


def _workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "DaemonSet")


def _service(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Service")


def _drop(items: list[dict[str, Any]], name: str) -> None:
    items.remove(_named(items, name))


EVENTS_ON = "enabled: true\n    endpoint: 0.0.0.0:8080"
NODE_NAME_ENV = {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_config_edit("0.0.0.0:8080", "0.0.0.0:8081"), "events: .* vs 0.0.0.0:8081"),
        (lambda o: _named(_container(_workload(o))["ports"], "events").pop("hostPort"), "hostPorts on"),
        (lambda o: _drop(_container(_workload(o))["ports"], "events"), "container ports"),
        (lambda o: _drop(_service(o)["spec"]["ports"], "events"), "does not reach {'events'}"),
        (lambda o: _named(_service(o)["spec"]["ports"], "events").update(port=80), "Service port"),
        (_config_edit(EVENTS_ON, "enabled: false"), "container ports"),
        (_config_edit("[genai, http, kubernetes]", "[genai, http]"), "kubernetes pack"),
        (_without_the_source, "ClusterRole is there"),
        (_config_edit("interval: 60s", "cluster_wide: true"), "once per node"),
        (lambda o: _container(_workload(o))["env"].remove(NODE_NAME_ENV), "NODE_NAME"),
    ],
    ids=[
        "events-endpoint-moved",
        "events-without-hostPort",
        "events-port-closed",
        "events-not-in-service",
        "events-service-port",
        "events-disabled-port-open",
        "kubernetes-pack-missing",
        "source-gone-rbac-stays",
        "cluster-wide-daemonset",
        "no-node-name",
    ],
)
def test_receiver_and_source_drift_is_caught(
    tmp_path: Path, change: Callable[[list[dict[str, Any]]], object], message: str
) -> None:
    objects = _objects(with_example_secret=True)
    change(objects)
    with pytest.raises(AssertionError, match=message):
        assert_deployable(objects, tmp_path)


def test_events_api_off_means_off_everywhere(tmp_path: Path) -> None:
    # Disabling the receiver in the config *and* closing its port in the pod and the Service is consistent.
    objects = _objects(with_example_secret=True)
    _config_edit(EVENTS_ON, "enabled: false")(objects)
    _drop(_container(_workload(objects))["ports"], "events")
    _drop(_service(objects)["spec"]["ports"], "events")
    _, config = assert_deployable(objects, tmp_path)
    assert not config.receivers.events_api.enabled


def test_rbac_beyond_the_sources_needs_is_refused(tmp_path: Path) -> None:
    objects = _objects(with_example_secret=True)
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    role["rules"][0]["verbs"].append("delete")
    with pytest.raises(AssertionError, match="delete"):
        assert_deployable(objects, tmp_path)


def test_configmap_config_with_an_unknown_key_fails_check(tmp_path: Path) -> None:
    objects = _objects(with_example_secret=True)
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    configmap["data"]["config.yaml"] = configmap["data"]["config.yaml"].replace(
        "\n  kubernetes:", "\n  kubernetess:"
    )
    with pytest.raises(AssertionError, match="otlp-meter check failed"):
        assert_deployable(objects, tmp_path)
