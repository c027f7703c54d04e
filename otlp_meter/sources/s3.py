"""The s3 source (being built: see its issue). Exposes ``S3SourceConfig`` and ``build``."""

from __future__ import annotations

from pydantic import Field

from otlp_meter.config_types import Section
from otlp_meter.sources.base import Source


class S3SourceConfig(Section):
    name: str = Field("s3", description="Instance name; part of the cursor key, keep it stable.")


def build(config: S3SourceConfig) -> Source:
    """Create the running source for ``config``."""
    raise NotImplementedError("the s3 source is not built yet")
