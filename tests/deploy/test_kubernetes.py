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
    assert bundle.of_kind("ClusterRole"), "the plain manifests always carry the source's RBAC"
    assert str(config.queue.directory) == "/var/lib/otlp-meter"


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _named(_pod(d)["volumes"], "queue")["hostPath"].update(path="/srv/queue"), None),
        (
            lambda d: _named(_container(d)["volumeMounts"], "queue").update(mountPath="/data"),
            "no volumeMount at queue.directory",
        ),
        (lambda d: _named(_container(d)["ports"], "telemetry").update(containerPort=9999), "livenessProbe"),
        (lambda d: _pod(d).update(terminationGracePeriodSeconds=20), "terminationGracePeriodSeconds 20"),
        (lambda d: d["spec"]["updateStrategy"]["rollingUpdate"].update(maxSurge=1), "maxSurge"),
        (lambda d: _container(d)["securityContext"].update(runAsUser=0), "runAsUser"),
        (lambda d: _container(d).update(image="otlp-meter:latest"), "otlp-meter:latest"),
    ],
    ids=["hostPath-moved-ok", "queue-mount-moved", "telemetry-port", "grace", "surge", "root", "image-tag"],
)
def test_invariants_catch_drift(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str | None
) -> None:
    objects = _objects(with_example_secret=True)
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    change(daemonset)
    if message is None:
        assert_deployable(objects, tmp_path)
        return
    with pytest.raises(AssertionError, match=message):
        assert_deployable(objects, tmp_path)


def test_rbac_beyond_the_sources_needs_is_refused(tmp_path: Path) -> None:
    objects = _objects(with_example_secret=True)
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    role["rules"][0]["verbs"].append("delete")
    with pytest.raises(AssertionError, match="delete"):
        assert_deployable(objects, tmp_path)


def test_configmap_config_with_an_unknown_key_fails_check(tmp_path: Path) -> None:
    objects = _objects(with_example_secret=True)
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    configmap["data"]["config.yaml"] += "sources:\n  kubernetess: {}\n"
    with pytest.raises(AssertionError, match="otlp-meter check failed"):
        assert_deployable(objects, tmp_path)
