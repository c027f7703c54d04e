"""The prometheus source (being built: see its issue). Exposes ``PrometheusSourceConfig`` and ``build``."""

from __future__ import annotations

from pydantic import Field

from otlp_meter.config_types import Section
from otlp_meter.sources.base import Source


class PrometheusSourceConfig(Section):
    name: str = Field("prometheus", description="Instance name; part of the cursor key, keep it stable.")


def build(config: PrometheusSourceConfig) -> Source:
    """Create the running source for ``config``."""
    raise NotImplementedError("the prometheus source is not built yet")
