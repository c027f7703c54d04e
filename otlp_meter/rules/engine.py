"""The rules engine: OTLP export requests in, CloudEvents and rejections out. Pure; time injected.

Each log record, and each data point of a metric, is one *record*. Rules are tried in order; the
first whose conditions hold makes the record's event and, unless it says ``continue: true``, ends
the search. A record no rule matches is counted and dropped (it is not usage). A matched record
that cannot become an event (a required value missing, a conversion or an expression failing) is
a :class:`~otlp_meter.events.Rejection` holding the record as a single-record export request, so
it can go to the dead-letter store and be replayed.

Points of cumulative monotonic sums and cumulative histograms become deltas before any rule sees
them (:mod:`otlp_meter.rules.delta`), using the :class:`StreamStates` the caller passes; only
metrics some rule could match are converted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, ResourceMetrics, ScopeMetrics

from otlp_meter.events import EncodedEvent, Rejection, Signal
from otlp_meter.rules import delta, ids
from otlp_meter.rules.compile import CompiledRule, Rejected
from otlp_meter.rules.delta import InitialValue, Load, StreamStates
from otlp_meter.rules.loader import load_rules
from otlp_meter.rules.model import RulesConfig
from otlp_meter.rules.views import LogView, PointView, RecordView, ResourceState, ScopeState, Wanted
from otlp_meter.telemetry.logging import ThrottledLog, get_logger

_log = get_logger("rules")
_METRIC_CACHE_LIMIT = 4096
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


@dataclass(frozen=True, slots=True)
class MappingResult:
    """What one export request became.

    Every record is exactly one of: matched by a rule (``matched``, per rule), ``unmatched``, or
    a cumulative point that made no event (``cumulative`` counts ``first_dropped``, ``duplicate``,
    ``unchanged`` and ``no_value`` points).
    """

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
    cumulative: dict[str, int] = field(default_factory=dict)
    """Cumulative points by what the delta conversion did (``delta.Outcome``); absent when none."""
    state_updates: dict[bytes, bytes | None] = field(default_factory=dict)
    """Stream state to commit in the same transaction as ``events`` (keys start ``delta/``)."""
    state_token: int | None = None
    """For ``StreamStates.rollback`` when that commit fails; None when no states were used."""
    unmatched_records: list[bytes] | None = None
    """With ``keep_unmatched``: each unmatched record as a single-record export request."""
    state_expect: dict[bytes, bytes | None] = field(default_factory=dict)
    """State values the database must still hold for ``state_updates`` to be right (another process
    may have changed them): the commit's ``expect``."""


@dataclass(slots=True)
class _Tally:
    signal: Signal
    events: list[EncodedEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    matched: dict[str, int] = field(default_factory=dict)
    cumulative: dict[str, int] = field(default_factory=dict)
    records: int = 0
    unmatched: int = 0
    rejected_records: int = 0
    unmatched_records: list[bytes] | None = None
    internal_errors: ThrottledLog | None = None

    def result(self, change: delta.StateChange | None = None) -> MappingResult:
        return MappingResult(
            self.events,
            self.rejected,
            self.records,
            self.unmatched,
            self.matched,
            self.rejected_records,
            self.cumulative,
            change.updates if change is not None else {},
            change.token if change is not None else None,
            self.unmatched_records,
            change.expect if change is not None else {},
        )


class RulesEngine:
    """Applies compiled rules, in order, to OTLP logs and metrics export requests."""

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        *,
        initial_value: InitialValue = "auto",
        max_streams: int = 100_000,
        max_staleness: float = 0.0,
        started_ns: int | None = None,
    ) -> None:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        self.rules = tuple(rules)
        self.rule_names: list[str] = names
        # A bug in a rule hits every record it sees: one log line per rule per interval is enough.
        self._internal_errors = ThrottledLog(_log, "rule_internal_error")
        self.initial_value: InitialValue = initial_value
        self.max_streams = max_streams
        self.max_staleness = max_staleness
        """Seconds after its last point a stream's state may be deleted (the pipeline's expiry);
        0: never."""
        self._log_rules = tuple(rule for rule in rules if rule.signal == "logs")
        self._metric_rules = tuple(rule for rule in rules if rule.signal == "metrics")
        self._metric_rules_by_kind: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
        # Records are read for the attribute keys some rule of their signal reads, no others.
        self._log_keys = Wanted.union(rule.wanted for rule in self._log_rules)
        self._metric_keys = Wanted.union(rule.wanted for rule in self._metric_rules)
        self.memory_states = StreamStates(
            None, started_ns=time.time_ns() if started_ns is None else started_ns, max_streams=max_streams
        )
        """The states :meth:`map_metrics` uses when given none: in memory only, like the Collector's
        cumulativetodelta processor (a restart forgets them); the pipeline passes persistent ones."""

    @classmethod
    def from_config(
        cls, config: RulesConfig, *, config_key: str = "rules", texts: Mapping[str, str] | None = None
    ) -> RulesEngine:
        """Load and compile inline rules, rule files and packs; raise ``ConfigError`` on problems.

        ``config_key`` is where ``config`` sits in the main config, for problem paths; ``texts``:
        the rule files' texts (``loader.rule_file_texts``) instead of reading them now.
        """
        return cls(
            load_rules(config, config_key=config_key, texts=texts),
            initial_value=config.cumulative.initial_value,
            max_streams=config.cumulative.max_streams,
            max_staleness=config.cumulative.max_staleness,
        )

    def stream_states(self, load: Load | None, started_ns: int) -> StreamStates:
        """Stream states for :meth:`map_metrics`, sized by the config; ``load`` reads committed state."""
        return StreamStates(load, started_ns=started_ns, max_streams=self.max_streams)

    def map_logs(
        self, request: ExportLogsServiceRequest, received_at_ns: int, *, keep_unmatched: bool = False
    ) -> MappingResult:
        """Map every log record of ``request``; ``received_at_ns`` is the fallback event time.

        ``keep_unmatched`` also returns the unmatched records (the dry run shows them).
        """
        tally = _Tally(
            "logs", unmatched_records=[] if keep_unmatched else None, internal_errors=self._internal_errors
        )
        rules = self._log_rules
        for resource_logs in request.resource_logs:
            res = ResourceState(resource_logs, self._log_keys)
            for scope_logs in resource_logs.scope_logs:
                scope = ScopeState(res, scope_logs)
                for record in scope_logs.log_records:
                    tally.records += 1
                    view = LogView(res, scope, received_at_ns)
                    view.record = record
                    _apply(rules, view, tally, _log_original)
        return tally.result()

    def map_metrics(
        self,
        request: ExportMetricsServiceRequest,
        received_at_ns: int,
        states: StreamStates | None = None,
        *,
        keep_unmatched: bool = False,
    ) -> MappingResult:
        """Map every data point of ``request``; ``received_at_ns`` is the fallback event time.

        Cumulative points are converted with ``states``: the result's ``state_updates`` must be
        committed with its events, or ``states.rollback(result.state_token)`` called when that
        fails. Calls sharing ``states`` must not overlap. Without ``states`` the engine's own
        :attr:`memory_states` are used.
        """
        tally = _Tally(
            "metrics", unmatched_records=[] if keep_unmatched else None, internal_errors=self._internal_errors
        )
        if states is None:
            states = self.memory_states
        states.begin()
        try:
            self._map_metrics(request, received_at_ns, states, tally)
        except BaseException:
            states.rollback(states.finish().token)
            raise
        return tally.result(states.finish())

    def _map_metrics(
        self, request: ExportMetricsServiceRequest, received_at_ns: int, states: StreamStates, tally: _Tally
    ) -> None:
        initial_value = self.initial_value
        for resource_metrics in request.resource_metrics:
            res = ResourceState(resource_metrics, self._metric_keys)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = ScopeState(res, scope_metrics)
                for metric in scope_metrics.metrics:
                    metric_type = metric.WhichOneof("data")
                    if metric_type is None:
                        continue
                    data: Any = getattr(metric, metric_type)
                    points = data.data_points
                    rules = self._rules_for_metric(metric.name, metric_type)
                    metric_key = ids.metric_key(metric.name, metric_type)
                    if not rules:
                        tally.records += len(points)
                        tally.unmatched += len(points)
                        if tally.unmatched_records is not None:
                            for point in points:
                                view = PointView(res, scope, received_at_ns)
                                view.metric, view.metric_type, view.point = metric, metric_type, point
                                tally.unmatched_records.append(_metric_original(view))
                        continue
                    hasher = None
                    if _is_cumulative(metric_type, data):
                        hasher = delta.metric_hasher(scope, metric, metric_type)
                    for point in points:
                        tally.records += 1
                        view = PointView(res, scope, received_at_ns)
                        view.metric = metric
                        view.metric_type = metric_type
                        view.metric_key = metric_key
                        if hasher is None:
                            view.point = point
                        else:
                            try:
                                key, attributes = delta.stream(hasher, point)
                                converted, outcome = delta.to_delta(
                                    states, key, point, initial_value, attributes
                                )
                            except delta.InvalidPoint as exc:  # a point no counter can have: this one only
                                view.point = point
                                _reject_point(rules[0].name, view, tally, exc)
                                continue
                            tally.cumulative[outcome] = tally.cumulative.get(outcome, 0) + 1
                            if converted is None:
                                continue
                            view.point = converted
                            view.converted = True
                        _apply(rules, view, tally, _metric_original)

    def _rules_for_metric(self, name: str, metric_type: str) -> tuple[CompiledRule, ...]:
        key = (name, metric_type)
        rules = self._metric_rules_by_kind.get(key)
        if rules is None:
            if len(self._metric_rules_by_kind) >= _METRIC_CACHE_LIMIT:
                self._metric_rules_by_kind.clear()
            rules = tuple(rule for rule in self._metric_rules if rule.accepts_metric(name, metric_type))
            self._metric_rules_by_kind[key] = rules
        return rules


def _is_cumulative(metric_type: str, data: Any) -> bool:
    """Cumulative monotonic sums and cumulative (exponential) histograms: what needs deltas.

    Non-monotonic cumulative sums are levels (an up-down counter), not usage increases: their
    points pass through as they are, like gauges.
    """
    if metric_type == "sum":
        return bool(data.aggregation_temporality == _CUMULATIVE and data.is_monotonic)
    if metric_type in ("histogram", "exponential_histogram"):
        return bool(data.aggregation_temporality == _CUMULATIVE)
    return False


def _apply(
    rules: Sequence[CompiledRule],
    view: RecordView,
    tally: _Tally,
    original: Callable[[RecordView], bytes],
) -> None:
    hit = False
    rejections_before = len(tally.rejected)
    for rule in rules:
        try:
            event = None if rule.native is None else rule.native(view)
            if event is False:  # C: the conditions do not hold
                continue
            if event is None:  # no C program, or C leaves this record to Python (see native_rules.py)
                if not rule.match(view):
                    continue
                event = rule.build(view)
            if event is None:  # an optional type or subject without a value
                continue
            hit = True
            tally.matched[rule.name] = tally.matched.get(rule.name, 0) + 1
            tally.events.append(event)
            if not rule.continue_:
                break
        except Exception as exc:
            hit = True
            tally.matched[rule.name] = tally.matched.get(rule.name, 0) + 1
            if isinstance(exc, Rejected):
                reason = exc.reason
            else:  # a bug here must not turn one record into a failed request
                if tally.internal_errors is not None:
                    tally.internal_errors.exception(
                        rule.name, rule=rule.name, consequence="the record is rejected"
                    )
                reason = f"internal error: {type(exc).__name__}: {exc}"
            tally.rejected.append(Rejection(tally.signal, rule.name, reason, original(view)))
            if not rule.continue_:
                break
    if not hit:
        tally.unmatched += 1
        if tally.unmatched_records is not None:
            tally.unmatched_records.append(original(view))
    elif len(tally.rejected) > rejections_before:
        tally.rejected_records += 1


def _reject_point(rule: str, view: RecordView, tally: _Tally, exc: delta.InvalidPoint) -> None:
    """A cumulative point no counter can have: dead-lettered under the first rule of its metric (the
    one that would have taken it), the rest of the request goes on. (A failure to read stream state
    is not this: it fails the request, retryably.)"""
    tally.matched[rule] = tally.matched.get(rule, 0) + 1
    tally.rejected.append(Rejection(tally.signal, rule, f"cumulative point: {exc}", _metric_original(view)))
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
        # A converted point is the increase: replaying it must not convert it again.
        data.aggregation_temporality = _DELTA if view.converted else source_data.aggregation_temporality
    if view.metric_type == "sum":
        data.is_monotonic = source_data.is_monotonic
    data.data_points.add().CopyFrom(view.point)
    return request.SerializeToString()
