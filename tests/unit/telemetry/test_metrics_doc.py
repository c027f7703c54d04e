"""docs/metrics.md is the instrumentation spec: it lists exactly the metrics the service exports, with
the type, labels and help text the registry carries. Adding, renaming or rewording a metric in one
place and not the other fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest
from prometheus_client.metrics import MetricWrapperBase

from otlp_meter.telemetry import spec
from otlp_meter.telemetry.metrics import Metrics
from tests.unit.telemetry.stats import accounting, queue_stats

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
ROW = re.compile(
    r"^\| `(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)` \| (?P<type>\w+) \| (?P<labels>[^|]*) \| (?P<help>.*) \|$"
)


class Row(NamedTuple):
    type: str
    labels: tuple[str, ...]
    help: str


def documented() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match is None or match["type"] not in ("counter", "gauge", "histogram", "untyped"):
            continue  # the label table and the PromQL table have other shapes
        labels = tuple(re.findall(r"`([a-z_]+)`", match["labels"]))
        assert match["name"] not in rows, f"{match['name']} is documented twice"
        rows[match["name"]] = Row(match["type"], labels, match["help"])
    return rows


def exported() -> dict[str, Row]:
    """What a fully populated registry serves: every family, with the label names of its samples."""
    metrics = Metrics(migration_aliases=True)
    metrics.observe_queue(lambda: queue_stats(accounting(accepted=3)))
    by_family = {declared.family: declared for declared in spec.ALL}
    for instrument in vars(metrics).values():
        if isinstance(instrument, MetricWrapperBase):
            [family] = instrument.describe()
            declared = by_family[family.name]
            if declared.labels:  # a labelled instrument shows its labels once it has a series
                instrument.labels(*["x"] * len(declared.labels))
    metrics.sources.count("s3", "bucket", "objects_completed", 1)
    rows: dict[str, Row] = {}
    for family in metrics.registry.collect():
        kind = {"unknown": "untyped"}.get(family.type, family.type)
        name = family.name + "_total" if kind == "counter" else family.name
        labels: tuple[str, ...] = ()
        for sample in family.samples:
            names = tuple(key for key in sample.labels if key not in ("le", "quantile"))
            labels = max(labels, names, key=len)
        rows[name] = Row(kind, labels, family.documentation)
    return rows


def test_every_documented_metric_is_declared_in_the_spec_and_nothing_else_is() -> None:
    declared = {d.name: Row(d.type, d.labels, d.help) for d in spec.ALL}

    assert documented() == declared


def test_the_registry_exports_exactly_the_documented_metrics() -> None:
    docs, served = documented(), exported()

    assert sorted(served) == sorted(docs)
    for name, row in docs.items():  # label order is the spec's by construction; samples differ
        assert served[name]._replace(labels=tuple(sorted(served[name].labels))) == row._replace(
            labels=tuple(sorted(row.labels))
        ), name


def test_migration_aliases_are_exported_only_when_asked_for() -> None:
    plain = {family.name for family in Metrics().registry.collect()}

    assert not plain & {alias.name for alias in spec.ALIASES}


OURS = [declared for declared in spec.ALL if declared not in spec.ALIASES]  # aliases keep foreign names


@pytest.mark.parametrize("declared", OURS, ids=lambda d: d.name)
def test_names_follow_the_prometheus_conventions(declared: spec.MetricSpec) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", declared.name)
    assert declared.name.endswith("_total") == (declared.type == "counter")
    assert not re.search(r"_(ms|milliseconds|ns|kb|mb|percent)(_|$)", declared.name)
    assert declared.help
    assert "|" not in declared.help
