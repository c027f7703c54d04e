"""The ``sources`` section: each kind's own config model, composed; and building the configured sources."""

from __future__ import annotations

from pydantic import Field

from otlp_meter.config_types import Section
from otlp_meter.sources import kubernetes, prometheus, runai, s3
from otlp_meter.sources.base import Source


class SourcesConfig(Section):
    prometheus: list[prometheus.PrometheusSourceConfig] = Field(
        default_factory=list, description="Prometheus instant queries run at aligned ticks."
    )
    s3: list[s3.S3SourceConfig] = Field(
        default_factory=list, description="Usage files in S3-compatible buckets, each object once."
    )
    kubernetes: kubernetes.KubernetesSourceConfig | None = Field(
        None, description="Pod allocation (CPU, memory, GPUs) of this node's pods, per tick."
    )
    runai: list[runai.RunaiSourceConfig] = Field(
        default_factory=list, description="Run:ai workload/pod GPU metrics, per tick."
    )


def build_sources(config: SourcesConfig) -> list[Source]:
    """One running source per configured instance, in config order."""
    built: list[Source] = [prometheus.build(c) for c in config.prometheus]
    built += [s3.build(c) for c in config.s3]
    if config.kubernetes is not None:
        built.append(kubernetes.build(config.kubernetes))
    built += [runai.build(c) for c in config.runai]
    return built
