"""The runai source (being built: see its issue). Exposes ``RunaiSourceConfig`` and ``build``."""

from __future__ import annotations

from pydantic import Field

from otlp_meter.config_types import Section
from otlp_meter.sources.base import Source


class RunaiSourceConfig(Section):
    name: str = Field("runai", description="Instance name; part of the cursor key, keep it stable.")


def build(config: RunaiSourceConfig) -> Source:
    """Create the running source for ``config``."""
    raise NotImplementedError("the runai source is not built yet")
