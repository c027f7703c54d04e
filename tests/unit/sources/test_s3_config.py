"""The s3 source's config: defaults, mistakes reported with their YAML path, the docs' examples."""

from __future__ import annotations

from typing import Any

import pytest

from otlp_meter.config import parse_config
from otlp_meter.errors import ConfigError
from otlp_meter.sources.s3 import S3SourceConfig
from tests.unit.sources.test_prometheus_config import ENV, yaml_examples


def problems(s3: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config({"sources": {"s3": [s3]}}, {})
    return info.value.problems


def test_defaults() -> None:
    config = S3SourceConfig(bucket="usage")
    assert (config.name, config.prefix, config.after, config.format, config.compression) == (
        "s3",
        "",
        "",
        "jsonl",
        "auto",
    )
    assert (config.poll_interval, config.batch_rows, config.max_row_bytes) == (60, 1000, 1 << 20)
    assert (config.endpoint_url, config.access_key_id, config.addressing_style) == (None, None, "auto")


def test_every_field_has_a_description() -> None:
    for name, field in S3SourceConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ({}, "sources.s3[0].bucket"),
        ({"bucket": "b", "format": "xml"}, "sources.s3[0].format"),
        ({"bucket": "b", "compression": "zstd"}, "sources.s3[0].compression"),
        ({"bucket": "b", "addressing_style": "dns"}, "sources.s3[0].addressing_style"),
        ({"bucket": "b", "csv_delimiter": ";;"}, "sources.s3[0].csv_delimiter"),
        ({"bucket": "b", "csv_delimiter": '"'}, "sources.s3[0].csv_delimiter"),
        ({"bucket": "b", "batch_rows": 0}, "sources.s3[0].batch_rows"),
        ({"bucket": "b", "max_row_bytes": "10"}, "sources.s3[0].max_row_bytes"),
        ({"bucket": "b", "access_key_id": "k"}, "sources.s3[0]"),
        ({"bucket": "b", "poll": "1m"}, "sources.s3[0].poll"),
    ],
)
def test_mistakes_name_their_yaml_path(entry: dict[str, Any], path: str) -> None:
    assert [p for p, _ in problems(entry)] == [path]


def test_credentials_never_show_in_dumps() -> None:
    entry = {
        "bucket": "b",
        "access_key_id": "${MINIO_ACCESS_KEY}",
        "secret_access_key": "${MINIO_SECRET_KEY}",
    }
    config = parse_config({"sources": {"s3": [entry]}}, ENV)
    [source] = config.sources.s3
    assert source.secret_access_key is not None
    assert source.secret_access_key.get_secret_value() == "minio-secret"
    assert "minio-secret" not in repr(config)
    assert "minio-secret" not in str(config.model_dump(mode="json"))


def test_the_docs_examples_load_as_written() -> None:
    [example] = yaml_examples("S3")
    sources = parse_config(example, ENV).sources.s3
    assert [(s.name, s.format) for s in sources] == [("billing-exports", "jsonl"), ("partner-csv", "csv")]
    assert sources[1].endpoint_url == "https://minio.internal:9000"
