"""The ``sources`` section: each kind's own config model, composed; and building the configured sources."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from otlp_meter.config_types import Section
from otlp_meter.sources import kubernetes, prometheus, runai, s3
from otlp_meter.sources.base import Source, SourceObserver
from otlp_meter.sources.kubernetes import KubernetesSourceConfig
from otlp_meter.sources.prometheus import PrometheusSourceConfig
from otlp_meter.sources.runai import RunaiSourceConfig
from otlp_meter.sources.s3 import S3SourceConfig


class SourcesConfig(Section):
    prometheus: list[PrometheusSourceConfig] = Field(
        default_factory=list, description="Prometheus instant queries run at aligned ticks."
    )
    s3: list[S3SourceConfig] = Field(
        default_factory=list, description="Usage files in S3-compatible buckets, each object once."
    )
    kubernetes: KubernetesSourceConfig | None = Field(
        None, description="Pod allocation (CPU, memory, GPUs) of this node's pods, per tick."
    )
    runai: list[RunaiSourceConfig] = Field(
        default_factory=list, description="Run:ai workload/pod GPU metrics, per tick."
    )

    @field_validator("prometheus", "s3", "runai")
    @classmethod
    def _unique_names(cls, instances: list[Any], info: Any) -> list[Any]:
        # The name keys an instance's cursor: two instances of one kind with one name would share
        # it, and one would skip what the other has read.
        first: dict[str, int] = {}
        for i, instance in enumerate(instances):
            if instance.name in first:
                raise ValueError(
                    f"[{i}].name repeats '{instance.name}' of [{first[instance.name]}]: give each "
                    f"{info.field_name} source a name of its own (it keys the source's cursor)"
                )
            first[instance.name] = i
        return instances


def build_sources(
    config: SourcesConfig, observer: SourceObserver | None = None, *, strict_events: bool = False
) -> list[Source]:
    """One running source per configured instance, in config order, reporting to ``observer``.

    ``strict_events``: the exporter sends to OpenMeter's v3 API, so ready CloudEvents (S3
    ``cloudevents`` files) are checked as that API takes them.
    """
    built: list[Source] = [prometheus.build(c, observer=observer) for c in config.prometheus]
    built += [s3.build(c, observer=observer, strict_events=strict_events) for c in config.s3]
    if config.kubernetes is not None:
        built.append(kubernetes.build(config.kubernetes, observer=observer))
    built += [runai.build(c, observer=observer) for c in config.runai]
    return built
