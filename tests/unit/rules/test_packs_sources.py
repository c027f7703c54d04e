"""The source packs on the input shapes docs/rules.md defines, and per-pack subject overrides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from otlp_meter.errors import ConfigError
from otlp_meter.rules import RulesConfig, RulesEngine
from otlp_meter.rules.model import FieldSpec
from tests.unit.rules.otlp import RECEIVED, T0, attributes, events, log_record, logs_request, metric, reasons

MINUTE = 60_000_000_000


def source_metrics(source: str, *metrics: Metric, resource: Mapping[str, Any]) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(attributes(resource))
    scope = resource_metrics.scope_metrics.add()
    scope.scope.name = f"otlp_meter.sources.{source}"
    scope.metrics.extend(metrics)
    return request


def interval(value: float, **fields: Any) -> dict[str, Any]:
    return {"value": value, "start_time_unix_nano": T0, "time_unix_nano": T0 + MINUTE, **fields}


def packs(*names: str, **subjects: Any) -> RulesEngine:
    return RulesEngine.from_config(
        RulesConfig(packs=list(names), subjects={k: FieldSpec.model_validate(v) for k, v in subjects.items()})
    )


POD = {
    "k8s.cluster.name": "prod",
    "k8s.namespace.name": "team-a",
    "k8s.pod.name": "api-7d9f",
    "k8s.pod.uid": "0b7e-11",
    "k8s.node.name": "node-3",
    "k8s.deployment.name": "api",
    "k8s.node.label.nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
}
ALLOCATION = {
    "k8s.pod.phase": "Running",
    "k8s.pod.cpu.request": 0.5,
    "k8s.pod.cpu.request.time": 30,
    "k8s.pod.cpu.limit": 1,
    "k8s.pod.memory.request": 2**28,
    "k8s.pod.memory.request.time": 60 * 2**28,
    "k8s.pod.gpu.request": 1,
    "k8s.pod.gpu.request.time": 60,
    "k8s.pod.gpu.limit": 1,
    "k8s.pod.gpu.resource": "nvidia.com/gpu",
}


def pod_usage(resource: Mapping[str, Any] = POD, **allocation: Any) -> ExportMetricsServiceRequest:
    attrs = {k: v for k, v in {**ALLOCATION, **allocation}.items() if v is not None}
    return source_metrics(
        "kubernetes", metric("k8s.pod.runtime", "sum", interval(60, attrs=attrs)), resource=resource
    )


def test_kubernetes_pod_usage_is_one_event_per_pod_and_interval() -> None:
    result = packs("kubernetes").map_metrics(pod_usage(), RECEIVED)
    [event] = events(result)
    assert (event["type"], event["subject"], event["time"]) == ("kube-pod", "team-a", "2024-01-01T00:01:00Z")
    assert event["data"] == {
        "seconds": 60,
        "core_seconds": 30,
        "byte_seconds": 60 * 2**28,
        "gpu_seconds": 60,
        "cpu_request_cores": 0.5,
        "cpu_limit_cores": 1,
        "memory_request_bytes": 2**28,
        "gpu_request": 1,
        "gpu_limit": 1,
        "gpu_resource": "nvidia.com/gpu",
        "gpu_type": "NVIDIA-A100-SXM4-80GB",
        "phase": "Running",
        "namespace": "team-a",
        "pod": "api-7d9f",
        "pod_uid": "0b7e-11",
        "node": "node-3",
        "cluster": "prod",
        "workload": "api",
    }


def test_kubernetes_unbounded_limits_and_absent_labels_are_left_out() -> None:
    resource = {k: v for k, v in POD.items() if not k.startswith(("k8s.node.label", "k8s.deployment"))}
    request = pod_usage(
        resource, **{"k8s.pod.cpu.limit": None, "k8s.pod.gpu.limit": None, "k8s.pod.gpu.resource": None}
    )
    [event] = events(packs("kubernetes").map_metrics(request, RECEIVED))
    assert not {
        "cpu_limit_cores",
        "memory_limit_bytes",
        "gpu_limit",
        "gpu_resource",
        "gpu_type",
        "workload",
    } & set(event["data"])


@pytest.mark.parametrize(
    ("extra", "subject"),
    [
        ({}, "team-a"),
        ({"k8s.pod.label.openmeter.io/subject": "pod-label"}, "pod-label"),
        (
            {
                "k8s.pod.annotation.openmeter.io/subject": "pod-annotation",
                "k8s.pod.label.openmeter.io/subject": "x",
            },
            "pod-annotation",
        ),
    ],
)
def test_kubernetes_subject_prefers_the_pod_annotation_then_label_then_namespace(
    extra: dict[str, str], subject: str
) -> None:
    result = packs("kubernetes").map_metrics(pod_usage({**POD, **extra}), RECEIVED)
    assert {e["subject"] for e in events(result)} == {subject}


def test_the_subject_of_a_pack_can_be_overridden() -> None:
    override = {"path": ["resource.attributes.k8s.pod.label.team"], "default": "unassigned"}
    engine = packs("kubernetes", kubernetes=override)
    labelled = engine.map_metrics(pod_usage({**POD, "k8s.pod.label.team": "search"}), RECEIVED)
    assert {e["subject"] for e in events(labelled)} == {"search"}
    assert {e["subject"] for e in events(engine.map_metrics(pod_usage(), RECEIVED))} == {"unassigned"}


def test_subject_overrides_are_checked_at_load() -> None:
    with pytest.raises(ConfigError) as info:
        packs("kubernetes", kubernetes={"path": "record.body.x"}, genai={"path": "attributes.x"})
    assert info.value.problems == [("rules.subjects.genai", "'genai' is not in rules.packs")]
    with pytest.raises(ConfigError) as info:
        packs("kubernetes", kubernetes={"path": "record.body.x"})
    assert info.value.problems == [
        ("rules.subjects.kubernetes.path", "'record.body.<key>' paths are only available in logs rules")
    ]


def test_prometheus_query_results_become_events_typed_by_the_query_name() -> None:
    series = [
        interval(
            1234.0, attrs={"prometheus.query.name": "api-requests", "customer_id": "acme", "route": "/v1"}
        ),
        interval(0.5, attrs={"prometheus.query.name": "storage-gb-hours", "subject": "globex"}),
    ]
    request = source_metrics("prometheus", metric("prometheus.query", "gauge", *series), resource={})
    result = packs("prometheus").map_metrics(request, RECEIVED)
    assert [(e["type"], e["subject"], e["data"]) for e in events(result)] == [
        (
            "api-requests",
            "acme",
            {"prometheus.query.name": "api-requests", "customer_id": "acme", "route": "/v1", "value": 1234},
        ),
        (
            "storage-gb-hours",
            "globex",
            {"prometheus.query.name": "storage-gb-hours", "subject": "globex", "value": 0.5},
        ),
    ]


def test_prometheus_series_without_a_subject_label_is_rejected() -> None:
    point = interval(1.0, attrs={"prometheus.query.name": "q"})
    request = source_metrics("prometheus", metric("prometheus.query", "gauge", point), resource={})
    assert reasons(packs("prometheus").map_metrics(request, RECEIVED)) == [
        "subject: no value at attributes.openmeter_subject | attributes.subject | "
        "attributes.customer_id | attributes.customer"
    ]


def test_runai_gpu_allocation_bills_the_project() -> None:
    workload = {
        "runai.cluster.name": "dgx",
        "runai.department.name": "research",
        "runai.project.name": "llm-team",
        "runai.workload.name": "finetune-42",
        "runai.workload.id": "wl-42",
        "runai.workload.type": "training",
    }
    attrs = {"runai.seconds": 60, "runai.gpu_allocation": 4, "runai.gpu_utilization": 87.5}
    point = interval(240.0, attrs=attrs)
    request = source_metrics(
        "runai", metric("runai.workload.gpu.allocation.time", "sum", point), resource=workload
    )
    [event] = events(packs("runai").map_metrics(request, RECEIVED))
    assert (event["type"], event["subject"], event["data"]) == (
        "runai-gpu",
        "llm-team",
        {
            "gpu_seconds": 240,
            "seconds": 60,
            "gpu_allocation": 4,
            "gpu_utilization": 87.5,
            "project": "llm-team",
            "department": "research",
            "workload": "finetune-42",
            "workload_id": "wl-42",
            "workload_type": "training",
            "cluster": "dgx",
        },
    )
    by_department = packs("runai", runai={"path": "resource.attributes.runai.department.name"})
    assert [e["subject"] for e in events(by_department.map_metrics(request, RECEIVED))] == ["research"]


def test_runai_pod_allocation_names_the_pod_and_node() -> None:
    pod = {"runai.project.name": "llm-team", "k8s.pod.name": "finetune-42-0", "k8s.node.name": "dgx-1"}
    point = interval(30.0, attrs={"runai.seconds": 60, "runai.gpu_allocation": 0.5})
    request = source_metrics("runai", metric("runai.pod.gpu.allocation.time", "sum", point), resource=pod)
    [event] = events(packs("runai").map_metrics(request, RECEIVED))
    assert event["data"] == {
        "gpu_seconds": 30,
        "seconds": 60,
        "gpu_allocation": 0.5,
        "project": "llm-team",
        "pod": "finetune-42-0",
        "node": "dgx-1",
    }


def s3_rows(*rows: dict[str, Any]) -> Any:
    records = [
        log_record({"aws.s3.key": "usage/2024-01-01.csv", "otlp_meter.s3.row": i + 1}, body=row)
        for i, row in enumerate(rows)
    ]
    return logs_request(*records, resource={"aws.s3.bucket": "billing"}, scope=("otlp_meter.sources.s3", "1"))


def test_s3_rows_name_their_own_event() -> None:
    request = s3_rows(
        {"type": "storage", "subject": "acme", "time": "2024-01-01T10:00:00Z", "gb": 12.5},
        {"event_type": "egress", "customer_id": "globex", "id": "row-7", "bytes": 100},
    )
    first, second = events(packs("s3").map_logs(request, RECEIVED))
    assert (first["type"], first["subject"], first["time"], first["data"]) == (
        "storage",
        "acme",
        "2024-01-01T10:00:00Z",
        {"type": "storage", "subject": "acme", "time": "2024-01-01T10:00:00Z", "gb": 12.5},
    )
    assert (second["type"], second["subject"], second["id"], second["time"]) == (
        "egress",
        "globex",
        "row-7",
        "2024-01-01T00:00:00Z",
    )


def test_s3_unreadable_rows_are_rejected_with_the_sources_reason_whatever_the_subject() -> None:
    unreadable = log_record(
        {
            "aws.s3.key": "usage/2024-01-01.jsonl",
            "otlp_meter.s3.row": 3,
            "otlp_meter.s3.line": 3,
            "otlp_meter.s3.error": "usage/2024-01-01.jsonl line 3: invalid JSON: unexpected end of data",
        },
        body='{"type": "storage", "subj',
    )
    request = logs_request(
        unreadable, resource={"aws.s3.bucket": "billing"}, scope=("otlp_meter.sources.s3", "")
    )
    why = "usage/2024-01-01.jsonl line 3: invalid JSON: unexpected end of data"
    reason = why
    for engine in (packs("s3"), packs("s3", s3={"path": "attributes.aws.s3.key"})):
        result = engine.map_logs(request, RECEIVED)
        assert (result.events, [r.rule for r in result.rejected]) == ([], ["s3-unreadable-row"])
        assert reasons(result) == [reason]


def test_s3_row_read_twice_is_the_same_event() -> None:
    row = {"type": "storage", "subject": "acme", "gb": 1}
    engine = packs("s3")
    assert [e.id for e in engine.map_logs(s3_rows(row), RECEIVED).events] == [
        e.id for e in engine.map_logs(s3_rows(row), RECEIVED).events
    ]


def test_source_packs_ignore_look_alike_data_from_elsewhere() -> None:
    engine = RulesEngine.from_config(RulesConfig())
    k8s_from_an_app = ExportMetricsServiceRequest()
    k8s_from_an_app.CopyFrom(pod_usage())
    k8s_from_an_app.resource_metrics[0].scope_metrics[0].scope.name = "kubeletstats"
    result = engine.map_metrics(k8s_from_an_app, RECEIVED)
    assert (result.events, result.rejected, result.unmatched) == ([], [], 1)
    rows = s3_rows({"type": "storage", "subject": "acme"})
    rows.resource_logs[0].scope_logs[0].scope.name = "app"
    assert engine.map_logs(rows, RECEIVED).unmatched == 1
