"""The rules engine: OTLP export requests in, CloudEvents and rejections out. Pure; time injected.

Each log record, and each data point of a metric, is one *record*. Rules are tried in order; the
first whose conditions hold makes the record's event and, unless it says ``continue: true``, ends
the search. A record no rule matches is counted and dropped (it is not usage). A matched record
that cannot become an event (a required value missing, a conversion failing) is a
:class:`~otlp_meter.events.Rejection` holding the record as a single-record export request, so
it can go to the dead-letter store and be replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics, ScopeMetrics

from otlp_meter.events import EncodedEvent, Rejection, Signal
from otlp_meter.rules.compile import CompiledRule, Rejected
from otlp_meter.rules.loader import load_rules
from otlp_meter.rules.model import RulesConfig
from otlp_meter.rules.paths import DataPoint, RecordView, ResourceState, ScopeState
from otlp_meter.telemetry.logging import get_logger

_log = get_logger("rules")
_METRIC_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class MappingResult:
    """What one export request became."""

    events: list[EncodedEvent]
    """Encoded CloudEvents, in record order (rules in rule order within a record)."""
    rejected: list[Rejection]
    """Matched records that could not become an event, one per (record, rule)."""
    records: int
    """Log records or metric data points seen."""
    unmatched: int
    """Records no rule matched; they are counted and dropped."""
    matched: dict[str, int]
    """Records matched per rule name (rules that matched nothing are absent)."""
    rejected_records: int = 0
    """Records with at least one rejection (what OTLP ``partial_success`` counts)."""


@dataclass(slots=True)
class _Tally:
    signal: Signal
    events: list[EncodedEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    matched: dict[str, int] = field(default_factory=dict)
    records: int = 0
    unmatched: int = 0
    rejected_records: int = 0

    def result(self) -> MappingResult:
        return MappingResult(
            self.events, self.rejected, self.records, self.unmatched, self.matched, self.rejected_records
        )


class RulesEngine:
    """Applies compiled rules, in order, to OTLP logs and metrics export requests."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        self.rules = tuple(rules)
        self.rule_names: list[str] = names
        self._log_rules = tuple(rule for rule in rules if rule.signal == "logs")
        self._metric_rules = tuple(rule for rule in rules if rule.signal == "metrics")
        self._metric_rules_by_kind: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}

    @classmethod
    def from_config(cls, config: RulesConfig, *, config_key: str = "rules") -> RulesEngine:
        """Load and compile inline rules, rule files and packs; raise ``ConfigError`` on problems.

        ``config_key`` is where ``config`` sits in the main config, for problem paths.
        """
        return cls(load_rules(config, config_key=config_key))

    def map_logs(self, request: ExportLogsServiceRequest, received_at_ns: int) -> MappingResult:
        """Map every log record of ``request``; ``received_at_ns`` is the fallback event time."""
        tally = _Tally("logs")
        rules = self._log_rules
        for resource_logs in request.resource_logs:
            res = ResourceState(resource_logs)
            for scope_logs in resource_logs.scope_logs:
                scope = ScopeState(res, scope_logs)
                for record in scope_logs.log_records:
                    tally.records += 1
                    view = RecordView(res, scope, record.attributes, received_at_ns)
                    view.record = record
                    _apply(rules, view, tally, _log_original)
        return tally.result()

    def map_metrics(self, request: ExportMetricsServiceRequest, received_at_ns: int) -> MappingResult:
        """Map every data point of ``request``; ``received_at_ns`` is the fallback event time."""
        tally = _Tally("metrics")
        for resource_metrics in request.resource_metrics:
            res = ResourceState(resource_metrics)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = ScopeState(res, scope_metrics)
                for metric in scope_metrics.metrics:
                    metric_type = metric.WhichOneof("data")
                    if metric_type is None:
                        continue
                    rules = self._rules_for_metric(metric.name, metric_type)
                    for point in self._points(metric, metric_type):
                        tally.records += 1
                        if not rules:
                            tally.unmatched += 1
                            continue
                        view = RecordView(res, scope, point.attributes, received_at_ns)
                        view.metric = metric
                        view.metric_type = metric_type
                        view.point = point
                        _apply(rules, view, tally, _metric_original)
        return tally.result()

    def _points(self, metric: Metric, metric_type: str) -> Sequence[DataPoint]:
        # The seam for cumulative-to-delta conversion: it will replace, per series, each point
        # by its increase since the previous one (or drop the first), before any rule sees it.
        points: Sequence[DataPoint] = getattr(metric, metric_type).data_points
        return points

    def _rules_for_metric(self, name: str, metric_type: str) -> tuple[CompiledRule, ...]:
        key = (name, metric_type)
        rules = self._metric_rules_by_kind.get(key)
        if rules is None:
            if len(self._metric_rules_by_kind) >= _METRIC_CACHE_LIMIT:
                self._metric_rules_by_kind.clear()
            rules = tuple(rule for rule in self._metric_rules if rule.accepts_metric(name, metric_type))
            self._metric_rules_by_kind[key] = rules
        return rules


def _apply(
    rules: Sequence[CompiledRule],
    view: RecordView,
    tally: _Tally,
    original: Callable[[RecordView], bytes],
) -> None:
    hit = False
    rejections_before = len(tally.rejected)
    for rule in rules:
        for condition in rule.conditions:
            if not condition(view):
                break
        else:
            hit = True
            tally.matched[rule.name] = tally.matched.get(rule.name, 0) + 1
            try:
                tally.events.append(rule.build(view))
            except Rejected as exc:
                tally.rejected.append(Rejection(tally.signal, rule.name, exc.reason, original(view)))
            except Exception as exc:  # a bug here must not turn one record into a failed request
                _log.exception("rule_internal_error", rule=rule.name, consequence="the record is rejected")
                reason = f"internal error: {type(exc).__name__}: {exc}"
                tally.rejected.append(Rejection(tally.signal, rule.name, reason, original(view)))
            if not rule.continue_:
                break
    if not hit:
        tally.unmatched += 1
    elif len(tally.rejected) > rejections_before:
        tally.rejected_records += 1


def _log_original(view: RecordView) -> bytes:
    """The record as a single-record ``ExportLogsServiceRequest``, with its resource and scope."""
    request = ExportLogsServiceRequest()
    source_resource: ResourceLogs = view.res.container  # type: ignore[assignment]
    source_scope: ScopeLogs = view.scope.container  # type: ignore[assignment]
    resource_logs = request.resource_logs.add(schema_url=source_resource.schema_url)
    if source_resource.HasField("resource"):
        resource_logs.resource.CopyFrom(source_resource.resource)
    scope_logs = resource_logs.scope_logs.add(schema_url=source_scope.schema_url)
    if source_scope.HasField("scope"):
        scope_logs.scope.CopyFrom(source_scope.scope)
    scope_logs.log_records.add().CopyFrom(view.record)
    return request.SerializeToString()


def _metric_original(view: RecordView) -> bytes:
    """The point as a single-point ``ExportMetricsServiceRequest``: resource, scope, metric, point."""
    request = ExportMetricsServiceRequest()
    source_resource: ResourceMetrics = view.res.container  # type: ignore[assignment]
    source_scope: ScopeMetrics = view.scope.container  # type: ignore[assignment]
    resource_metrics = request.resource_metrics.add(schema_url=source_resource.schema_url)
    if source_resource.HasField("resource"):
        resource_metrics.resource.CopyFrom(source_resource.resource)
    scope_metrics = resource_metrics.scope_metrics.add(schema_url=source_scope.schema_url)
    if source_scope.HasField("scope"):
        scope_metrics.scope.CopyFrom(source_scope.scope)
    source = view.metric
    metric = scope_metrics.metrics.add(name=source.name, description=source.description, unit=source.unit)
    metric.metadata.extend(source.metadata)
    data: Any = getattr(metric, view.metric_type)
    source_data: Any = getattr(source, view.metric_type)
    if view.metric_type in ("sum", "histogram", "exponential_histogram"):
        data.aggregation_temporality = source_data.aggregation_temporality
    if view.metric_type == "sum":
        data.is_monotonic = source_data.is_monotonic
    data.data_points.add().CopyFrom(view.point)
    return request.SerializeToString()
