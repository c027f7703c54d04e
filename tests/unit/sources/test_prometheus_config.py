"""The prometheus source's config: defaults, mistakes reported with their YAML path, the docs' examples."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from otlp_meter.config import parse_config
from otlp_meter.errors import ConfigError
from otlp_meter.sources.base import BackoffConfig, TlsClientConfig
from otlp_meter.sources.prometheus import PrometheusQueryConfig, PrometheusSourceConfig

DOCS = Path(__file__).parents[3] / "docs" / "sources.md"
ENV = {"PROMETHEUS_TOKEN": "t0ken", "MINIO_ACCESS_KEY": "minio", "MINIO_SECRET_KEY": "minio-secret"}


def problems(prometheus: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config({"sources": {"prometheus": [prometheus]}}, {})
    return info.value.problems


def test_defaults() -> None:
    config = PrometheusSourceConfig()
    assert (config.name, config.url, config.queries) == ("prometheus", "http://localhost:9090", [])
    assert (config.interval, config.query_offset, config.max_catch_up, config.timeout) == (60, 60, 60, 30)
    assert (config.backoff.initial, config.backoff.max) == (1, 60)


def test_every_field_has_a_description() -> None:
    for model in (PrometheusSourceConfig, PrometheusQueryConfig, BackoffConfig, TlsClientConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("promql", "kind"),
    [("42", "scalar"), ('"x"', "string"), ("api_requests_total[5m]", "matrix"), ("time()", "scalar")],
)
def test_a_query_that_cannot_return_an_instant_vector_is_a_config_error(promql: str, kind: str) -> None:
    [(path, message)] = problems({"queries": [{"name": "q", "promql": promql}]})
    assert path == "sources.prometheus[0].queries[0].promql"
    assert f"this query returns a {kind}, not an instant vector" in message


def test_query_names_are_required_valid_and_unique() -> None:
    assert problems({"queries": [{"promql": "up"}]})[0][0] == "sources.prometheus[0].queries[0].name"
    assert problems({"queries": [{"name": "a b", "promql": "up"}]})[0][0] == (
        "sources.prometheus[0].queries[0].name"
    )
    [(path, message)] = problems({"queries": [{"name": "a", "promql": "up"}, {"name": "a", "promql": "x"}]})
    assert (path, "query names must be unique: a" in message) == ("sources.prometheus[0]", True)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"interval": "1.5s"}, "sources.prometheus[0].interval"),
        ({"interval": "500ms"}, "sources.prometheus[0].interval"),
        ({"url": "prometheus:9090"}, "sources.prometheus[0].url"),
        ({"max_catch_up": 0}, "sources.prometheus[0].max_catch_up"),
        ({"tls": {"cert_file": "/c.pem"}}, "sources.prometheus[0].tls"),
        ({"querys": []}, "sources.prometheus[0].querys"),
    ],
)
def test_mistakes_name_their_yaml_path(overrides: dict[str, Any], path: str) -> None:
    assert [p for p, _ in problems(overrides)] == [path]


def test_secret_headers_never_show_in_errors_or_dumps() -> None:
    config = parse_config(
        {"sources": {"prometheus": [{"headers": {"Authorization": "Bearer ${PROMETHEUS_TOKEN}"}}]}}, ENV
    )
    [source] = config.sources.prometheus
    assert source.headers["Authorization"].get_secret_value() == "Bearer t0ken"
    assert "t0ken" not in repr(config)
    assert "t0ken" not in str(config.model_dump(mode="json"))


def section(title: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def yaml_examples(title: str) -> list[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section(title), re.S)]


def test_the_docs_examples_load_as_written() -> None:
    examples = yaml_examples("Prometheus")
    assert len(examples) == 2
    for example in examples:
        config = parse_config(example, ENV)
        assert config.sources.prometheus
        assert all(s.queries for s in config.sources.prometheus)
    first = parse_config(examples[0], ENV).sources.prometheus[0]
    assert [q.name for q in first.queries] == ["cpu-seconds", "api-requests"]
