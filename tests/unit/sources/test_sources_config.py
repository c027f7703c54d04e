"""The ``sources`` section as a whole: what no single source's config can check."""

from __future__ import annotations

import pytest

from otlp_meter.config import parse_config
from otlp_meter.errors import ConfigError


@pytest.mark.parametrize(
    ("kind", "instances"),
    [
        ("s3", [{"bucket": "a"}, {"bucket": "b"}]),  # both take the default name
        ("prometheus", [{"name": "p", "url": "http://p", "queries": [{"name": "q", "promql": "up"}]}] * 2),
    ],
)
def test_two_sources_of_a_kind_must_not_share_a_name(kind: str, instances: list[dict[str, object]]) -> None:
    """The name keys the cursor: sharing it, one source would skip what the other has read."""
    with pytest.raises(ConfigError) as refused:
        parse_config({"sources": {kind: instances}}, {}, "config.yaml")
    [(path, message)] = refused.value.problems
    assert path == f"sources.{kind}"
    assert "[1].name repeats" in message
    assert "[0]" in message


def test_sources_of_different_kinds_may_share_a_name() -> None:
    config = parse_config(
        {"sources": {"s3": [{"bucket": "a", "name": "usage"}], "prometheus": [
            {"name": "usage", "url": "http://p", "queries": [{"name": "q", "promql": "up"}]}]}},
        {},
        "config.yaml",
    )  # fmt: skip
    assert [s.name for s in config.sources.s3] == ["usage"]
