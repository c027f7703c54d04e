"""Kubernetes objects as the tests see them: parsed, schema-checked, and checked against the service's config.

``assert_deployable`` is the one place the invariants live; the plain manifests and every rendering of the
Helm chart go through it. The config check runs ``otlp-meter check`` as a subprocess on the ConfigMap
materialized the way the kubelet mounts it, with the container's environment.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from otlp_meter.config import Config, load_config
from otlp_meter.errors import ConfigError
from otlp_meter.sources import kubernetes as kubernetes_source
from otlp_meter.sources.kubernetes import REQUIRED_RBAC, KubernetesSource, KubernetesSourceConfig
from tests.deploy import dockerfile

REPO = dockerfile.REPO
Obj = dict[str, Any]

# Oldest Kubernetes the manifests claim (internalTrafficPolicy and DaemonSet maxSurge are GA since 1.26)
# and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.26.0", kubernetes_validate.latest_version())

# What the Kubernetes source does with the API (list/watch/get the pods of its node, get its node):
# the ClusterRole must grant exactly this. The source module is the one place that says it.
KUBERNETES_SOURCE_RBAC = {resource: set(verbs) for resource, verbs in REQUIRED_RBAC.items()}

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
SHUTDOWN_MARGIN_S = 5.0  # between service.shutdown_timeout and the pod's SIGKILL
FAKE_DOWNWARD_API = {"spec.nodeName": "node-1", "status.podIP": "10.0.0.7", "status.hostIP": "10.0.0.1"}


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def image_user() -> int:
    """The numeric uid of the Dockerfile's final USER."""
    _, stages = dockerfile.load()
    user = stages[-1].last("USER")
    assert user is not None, "the image must set a USER"
    return int(user.value.split(":")[0])


def image_command() -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of the image (exec form)."""
    _, stages = dockerfile.load()
    entrypoint, cmd = stages[-1].last("ENTRYPOINT"), stages[-1].last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    return entrypoint.exec_form() or [], cmd.exec_form() or []


def parse_documents(texts: Iterable[str]) -> list[Obj]:
    """Every object in the YAML streams; each must look like a Kubernetes object."""
    objects = []
    for text in texts:
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            assert isinstance(document, dict), document
            assert {"apiVersion", "kind", "metadata"} <= document.keys(), document
            assert document["metadata"].get("name"), document
            objects.append(document)
    return objects


def schema_errors(obj: Obj) -> list[str]:
    """Validation against the Kubernetes OpenAPI schema (strict: unknown fields are errors)."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(
                f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}) at {where}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    return errors


@dataclass
class Bundle:
    """A set of objects that deploy otlp-meter: one workload and what it refers to."""

    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    @property
    def workload(self) -> Obj:
        workloads = self.of_kind("DaemonSet") + self.of_kind("Deployment")
        assert len(workloads) == 1, [w["kind"] for w in workloads]
        return workloads[0]

    @property
    def pod(self) -> Obj:
        return dict(self.workload["spec"]["template"]["spec"])

    @property
    def container(self) -> Obj:
        containers = [c for c in self.pod["containers"] if c["name"] == "otlp-meter"]
        assert len(containers) == 1
        return dict(containers[0])

    def volume(self, name: str) -> Obj:
        found = [v for v in self.pod.get("volumes", []) if v["name"] == name]
        assert len(found) == 1, f"volume {name}"
        return dict(found[0])

    def mount_at(self, path: str) -> Obj | None:
        return next((m for m in self.container.get("volumeMounts", []) if m["mountPath"] == path), None)

    def container_port(self, port: int | str) -> Obj:
        """The container's port entry that a probe's or Service's port (number or name) means."""
        for entry in self.container.get("ports", []):
            if port in (entry["containerPort"], entry.get("name")):
                return dict(entry)
        raise AssertionError(f"the container declares no port {port!r}")

    def container_env(self) -> dict[str, str]:
        """The container's environment as the kubelet would set it (downward API and Secrets faked)."""
        env: dict[str, str] = {}
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[var["name"]] = FAKE_DOWNWARD_API[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.named("Secret", ref["name"])
                env[var["name"]] = (
                    secret_value(secret, ref["key"]) if secret else "token-from-existing-secret"
                )
            else:
                raise AssertionError(f"unexpected env source {source}")
        return env

    def materialize_config(self, root: Path) -> Path:
        """Write the config volume's files as the kubelet would and return the host path of the config
        file that the container's args name."""
        args = self.container["args"]
        config_path = PurePosixPath(args[args.index("--config") + 1])
        mounts = [m for m in self.container["volumeMounts"] if config_path.is_relative_to(m["mountPath"])]
        assert len(mounts) == 1, f"--config {config_path} is not under one volumeMount"
        volume = self.volume(mounts[0]["name"])
        assert "configMap" in volume, f"--config {config_path} is not on a ConfigMap volume"
        configmap = self.named("ConfigMap", volume["configMap"]["name"])
        assert configmap is not None, f"ConfigMap {volume['configMap']['name']} is not deployed"
        data: dict[str, str] = configmap.get("data", {})
        items = volume["configMap"].get("items") or [{"key": key, "path": key} for key in data]
        mount_dir = root / PurePosixPath(mounts[0]["mountPath"]).relative_to("/")
        for item in items:
            assert item["key"] in data, f"ConfigMap has no key {item['key']}"
            target = mount_dir / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
        host_config = root / config_path.relative_to("/")
        assert host_config.is_file(), f"{config_path} is not in the ConfigMap volume"
        return host_config


def secret_value(secret: Obj, key: str) -> str:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    assert key in secret.get("data", {}), f"Secret {secret['metadata']['name']} has no key {key}"
    return base64.b64decode(secret["data"][key]).decode()


def otlp_meter_check(config_path: Path, env: Mapping[str, str]) -> str:
    """``otlp-meter check`` as a process with exactly ``env`` (plus PATH); its output, asserting success."""
    result = subprocess.run(
        [sys.executable, "-m", "otlp_meter", "check", "--config", str(config_path)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config_path.parent,
    )
    assert result.returncode == 0, f"otlp-meter check failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def endpoint_port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def ingest_servers(config: Config) -> dict[str, tuple[bool, str]]:
    """The receivers by the name of their container port: (enabled, endpoint)."""
    otlp, events = config.receivers.otlp, config.receivers.events_api
    return {
        "otlp-grpc": (otlp.grpc.enabled, otlp.grpc.endpoint),
        "otlp-http": (otlp.http.enabled, otlp.http.endpoint),
        "events": (events.enabled, events.endpoint),
    }


def build_kubernetes_source(config: KubernetesSourceConfig, env: Mapping[str, str]) -> KubernetesSource:
    """The source as ``otlp-meter run`` builds it in a process with the container's NODE_NAME."""
    with mock.patch.dict(os.environ):
        os.environ.pop("NODE_NAME", None)
        if "NODE_NAME" in env:
            os.environ["NODE_NAME"] = env["NODE_NAME"]
        try:
            source = kubernetes_source.build(config)
        except ConfigError as exc:
            raise AssertionError(f"the Kubernetes source would not start in this pod: {exc}") from None
    assert isinstance(source, KubernetesSource)
    return source


def assert_init_runs_again(init: Obj, tmp_path: Path) -> None:
    """The queue's init container must also succeed on the pod's *next* start, when the directory
    holds the collector's own files (``queue/`` is 0700, the image's user's): run its command on such
    a directory with the capabilities it is given, as root does in the container."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        if os.environ.get("CI") == "true":
            raise AssertionError("CI runs as root with util-linux's setpriv: this check must run")
        return  # locally, as a user: the shape checks above still ran
    volume = tmp_path / "queue-volume"
    (volume / "queue").mkdir(parents=True)
    (volume / "queue" / "data.mdb").write_bytes(b"")
    user = image_user()
    for path in (volume, volume / "queue", volume / "queue" / "data.mdb"):
        os.chown(path, user, user)
    (volume / "queue").chmod(0o700)
    caps = ",".join(f"+{c.lower()}" for c in init["securityContext"]["capabilities"].get("add", []))
    command = [*init["command"][:-1], str(volume)]
    done = subprocess.run(
        ["/usr/bin/setpriv", f"--bounding-set=-all{',' + caps if caps else ''}", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"the init container fails once the queue exists: {done.stderr}"


def assert_deployable(objects: list[Obj], tmp_path: Path) -> tuple[Bundle, Config]:
    """Every invariant between the objects, the image and the service's config; returns the parsed config."""
    problems = [error for obj in objects for error in schema_errors(obj)]
    assert not problems, "\n".join(problems)
    bundle = Bundle(objects)
    workload, pod, container = bundle.workload, bundle.pod, bundle.container
    daemonset = workload["kind"] == "DaemonSet"

    # One namespace for everything namespaced.
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED}
    assert len(namespaces) == 1, namespaces
    assert None not in namespaces, "namespaced objects name their namespace"
    namespace = namespaces.pop()

    # The workload selects its own pods; the image is this version; the command is the image's.
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert container["image"].rpartition(":")[2] == project_version(), container["image"]
    entrypoint, cmd = image_command()
    assert "command" not in container, "the image's ENTRYPOINT runs"
    assert entrypoint == ["otlp-meter"]
    assert container["args"] == cmd, "args as the image's CMD: otlp-meter run --config <the ConfigMap's file>"

    # The config in the ConfigMap passes `otlp-meter check` with the container's environment, and sends
    # to OpenMeter (never the local-file fallback in a cluster).
    env = bundle.container_env()
    config_file = bundle.materialize_config(tmp_path / "pod-root")
    output = otlp_meter_check(config_file, env)
    assert "exporter: OpenMeter" in output, output
    config = load_config(config_file, env)

    # The queue directory is the (persistent, writable) volume's mountPath.
    queue_dir = str(config.queue.directory)
    assert queue_dir.startswith("/"), f"queue.directory {queue_dir} must be absolute"
    mount = bundle.mount_at(queue_dir)
    assert mount is not None, f"no volumeMount at queue.directory {queue_dir}"
    assert not mount.get("readOnly", False)
    queue_volume = bundle.volume(mount["name"])
    assert {"hostPath", "persistentVolumeClaim", "emptyDir"} & queue_volume.keys(), queue_volume
    if daemonset:
        assert "hostPath" in queue_volume, "a DaemonSet's queue must outlive its pods: hostPath"
    if "hostPath" in queue_volume:
        # The kubelet creates it root-owned: an init container hands it to the image's user.
        chowns = [c for c in pod.get("initContainers", []) if c.get("command", [None])[0] == "chown"]
        assert chowns, "an init container chowns the hostPath queue directory"
        assert chowns[0]["command"][-1] == queue_dir
        assert chowns[0]["command"][-2] == f"{image_user()}:{image_user()}"
        assert any(m["mountPath"] == queue_dir for m in chowns[0]["volumeMounts"])
        assert_init_runs_again(chowns[0], tmp_path)

    # Probes hit /healthz and /readyz on the telemetry port, which listens where the kubelet connects
    # (the pod IP); so do the enabled receivers.
    telemetry_port = endpoint_port(config.telemetry.endpoint)
    reachable = {"0.0.0.0", "[::]", env.get("POD_IP")}
    servers = ingest_servers(config)
    enabled = {name: endpoint for name, (on, endpoint) in servers.items() if on}
    for endpoint in (config.telemetry.endpoint, *enabled.values()):
        assert endpoint.rpartition(":")[0] in reachable, f"{endpoint} is not reachable on the pod IP"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path
        assert bundle.container_port(http_get["port"])["containerPort"] == telemetry_port, probe
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == telemetry_port

    # The container opens exactly the ports of the servers that listen: an enabled receiver's port equals
    # its endpoint's; a disabled one's port is not opened (by name or number). Per node, the ingest ports
    # are all hostPorts or none (senders reach every API the same way), each equal to its containerPort.
    container_ports = container.get("ports", [])
    assert sorted(p["name"] for p in container_ports) == sorted([*enabled, "telemetry"]), (
        f"container ports {[p['name'] for p in container_ports]}, listening: {[*enabled, 'telemetry']}"
    )
    for name, endpoint in enabled.items():
        port = bundle.container_port(name)
        assert port["containerPort"] == endpoint_port(endpoint), f"{name}: {port} vs {endpoint}"
        assert port.get("hostPort") in (None, port["containerPort"]), name
    for name, (on, endpoint) in servers.items():
        if not on:
            assert endpoint_port(endpoint) not in {p["containerPort"] for p in container_ports}, (
                f"{name} is disabled but its port {endpoint_port(endpoint)} is open"
            )
    host_ported = {name for name in enabled if "hostPort" in bundle.container_port(name)}
    if daemonset:
        assert host_ported in (set(), set(enabled)), f"hostPorts on {host_ported} but not on all of {enabled}"
    else:
        assert not host_ported, "a gateway is reached through its Service, not hostPorts"
    assert "hostPort" not in bundle.container_port("telemetry"), "telemetry stays off the node's IP"

    # The Service reaches the pods, on ports the container declares: every listening receiver, with the
    # Service port equal to the container port (senders use one number, hostPort or Service); node-local
    # in daemonset mode.
    for service in bundle.of_kind("Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        served = {}
        for port in service["spec"]["ports"]:
            target = bundle.container_port(port.get("targetPort", port["port"]))
            served[target["name"]] = port
            if target["name"] in enabled:
                assert port["port"] == target["containerPort"], f"Service port {port}, container {target}"
        assert set(enabled) <= served.keys(), f"the Service does not reach {set(enabled) - served.keys()}"
        if daemonset:
            assert service["spec"]["internalTrafficPolicy"] == "Local"

    # The Kubernetes source starts with what the pod gives it: in a DaemonSet it meters the pods of its
    # own node (NODE_NAME from the downward API); a Deployment meters the cluster, with one replica.
    kube = config.sources.kubernetes
    if kube is not None:
        source = build_kubernetes_source(kube, env)
        if daemonset:
            assert not kube.cluster_wide, "cluster_wide in a DaemonSet bills every pod once per node"
            assert source.node_name == FAKE_DOWNWARD_API["spec.nodeName"], source.node_name
            assert f"spec.nodeName={source.node_name}" in (source.field_selector() or "")
        else:
            assert kube.cluster_wide, "a gateway's node is an accident of scheduling: meter the cluster"
            assert workload["spec"]["replicas"] == 1, "every replica would bill every pod"
        assert "kubernetes" in config.rules.packs, "the kubernetes pack turns the source's points into events"
    assert bool(bundle.of_kind("ClusterRole")) == (kube is not None), (
        "the ClusterRole is there exactly when the Kubernetes source is configured"
    )

    # The ServiceAccount exists; RBAC, when present, is exactly what the Kubernetes source needs.
    account = pod.get("serviceAccountName", "default")
    assert account == "default" or bundle.named("ServiceAccount", account) is not None, account
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container[
        "env"
    ]
    for role in bundle.of_kind("ClusterRole"):
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
        assert granted == KUBERNETES_SOURCE_RBAC, granted
    for binding in bundle.of_kind("ClusterRoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": bundle.of_kind("ClusterRole")[0]["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]

    # The token comes from a Secret, never a literal.
    token = [v for v in container["env"] if v["name"] == "OPENMETER_TOKEN"]
    assert all("secretKeyRef" in v.get("valueFrom", {}) for v in token), (
        "OPENMETER_TOKEN must be a secretKeyRef"
    )

    # Shutdown: the grace period covers service.shutdown_timeout; rollouts never run two collectors on
    # one queue.
    grace, shutdown = pod["terminationGracePeriodSeconds"], config.service.shutdown_timeout
    assert grace >= shutdown + SHUTDOWN_MARGIN_S, (
        f"terminationGracePeriodSeconds {grace}, shutdown {shutdown}s"
    )
    if daemonset:
        strategy = workload["spec"]["updateStrategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"]
        assert strategy["rollingUpdate"].get("maxSurge", 0) == 0
    elif "emptyDir" not in queue_volume:
        assert workload["spec"]["strategy"]["type"] == "Recreate"
        assert workload["spec"]["replicas"] == 1

    # Runs as the image's non-root user, locked down; resources bounded.
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image_user(), "runAsUser must be the image's USER"
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    return bundle, config
