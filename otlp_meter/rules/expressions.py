"""CEL expressions in rules: ``match.expr`` and ``{expr: ...}`` fields, compiled once at load.

Expressions are for what paths cannot say (arithmetic, string functions, conditions across
values). They use the ``common-expression-language`` package (a Rust CEL implementation), imported
when the first expression compiles; nothing here parses CEL. Each expression compiles when the
rules load: syntax errors and unknown variables are configuration problems. At run time an
expression sees only the variables it names, built from the record once and cached (resource and
scope: once per resource and scope):

    resource    {attributes}
    scope       {name, version, attributes}
    attributes  the record's attributes (log record or data point)
    record      logs: {attributes, body, severity_text, severity_number, time, observed_time,
                event_name, trace_id, span_id, flags}
    metric      metrics: {name, unit, description, type, temporality, monotonic}
    point       metrics: {attributes, start_time, time, flags, value, and per type: count, sum,
                min, max, bucket_counts, explicit_bounds, scale, zero_count, quantiles}

Values are what paths return (timestamps as integer Unix nanoseconds, bytes as base64 text); a
field that OTLP leaves unset is absent from its map, so ``has(point.sum)`` tests for it. Any
evaluation error (a missing key, a type mismatch, an overflow) raises ``ValueError`` with a short
reason, which the rule turns into a rejection: an expression never crashes a request.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from otlp_meter.events import format_time
from otlp_meter.rules.attributes import any_value
from otlp_meter.rules.paths import RecordView, RuleSignal

VARIABLES: dict[RuleSignal, tuple[str, ...]] = {
    "logs": ("resource", "scope", "attributes", "record"),
    "metrics": ("resource", "scope", "attributes", "metric", "point"),
}
"""The variables an expression of each signal can read."""

# Names bound by CEL's comprehension macros (``list.map(x, ...)``) show up as variables too.
_MACRO_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_PLAIN = (str, int, float, bool, type(None))
_TEMPORALITY = {0: "unspecified", 1: "delta", 2: "cumulative"}


class ExpressionError(ValueError):
    """An expression that does not compile, or reads a variable that does not exist."""


class Expression:
    """A compiled CEL expression bound to the variables of one signal."""

    __slots__ = ("_builders", "_new_context", "_program", "source")

    def __init__(self, source: str, signal: RuleSignal) -> None:
        # Imported here, not at the top: loading the CEL library costs about 0.1 s and 25 MiB, which
        # only rule sets that use an expression should pay.
        import cel

        self.source = source
        self._new_context = cel.Context
        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the package raises ValueError; be safe against others
            raise ExpressionError(_first_line(exc)) from None
        names = set(self._program.variables()) - set(_MACRO_BOUND.findall(source))
        unknown = sorted(names - set(VARIABLES[signal]))
        if unknown:
            raise ExpressionError(
                f"unknown variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"{signal} expressions can read {', '.join(VARIABLES[signal])}"
            )
        self._builders = tuple((name, _BUILDERS[name]) for name in sorted(names))

    def evaluate(self, view: RecordView) -> Any:
        """The expression's value for ``view`` as plain JSON-able Python; raises ``ValueError``."""
        # One CEL context per record, shared by every expression of every rule: handing a value
        # to CEL costs about a microsecond per attribute, running a compiled program a fraction.
        state = view.cel_context
        if state is None:
            state = view.cel_context = (self._new_context(), set())
        context, added = state
        for name, build in self._builders:
            if name not in added:
                context.add_variable(name, build(view))
                added.add(name)
        try:
            result = self._program.execute(context)
        except Exception as exc:
            raise ValueError(f"expression failed: {_describe(exc)}") from None
        return result if isinstance(result, _PLAIN) else _plain(result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no such key {exc.args[0]!r}" if exc.args else "no such key"
    return _first_line(exc)


def _plain(value: Any) -> Any:
    """CEL results as JSON values: bytes → base64, timestamps → RFC 3339, durations → seconds."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        try:
            return format_time(ns)
        except ValueError:
            return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise ValueError(f"expression result of type {type(value).__name__} is not a JSON value")


# --- variables -----------------------------------------------------------------------------------
# Each builder converts what it needs once and caches the result on the view or its resource/scope
# state, so several expressions of several rules on one record share the work.


def _attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        value = any_value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


def _resource(v: RecordView) -> dict[str, Any]:
    res = v.res
    if res.cel is None:
        res.cel = {"attributes": _attrs(res.resource.attributes)}
    return res.cel


def _scope(v: RecordView) -> dict[str, Any]:
    state = v.scope
    if state.cel is None:
        scope = state.scope
        out: dict[str, Any] = {"attributes": _attrs(scope.attributes)}
        _put(out, "name", scope.name)
        _put(out, "version", scope.version)
        state.cel = out
    return state.cel


def _cache(v: RecordView) -> dict[str, Any]:
    if v.cel is None:
        v.cel = {}
    return v.cel


def _attributes(v: RecordView) -> dict[str, Any]:
    cache = _cache(v)
    out = cache.get("attributes")
    if out is None:
        out = cache["attributes"] = _attrs(v.kvs)
    return out


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value:  # OTLP zero values are "not set", as paths read them
        out[key] = value


def _record(v: RecordView) -> dict[str, Any]:
    cache = _cache(v)
    out = cache.get("record")
    if out is None:
        r = v.record
        out = cache["record"] = {"attributes": _attributes(v)}
        body = any_value(r.body)
        if body is not None:
            out["body"] = body
        _put(out, "severity_text", r.severity_text)
        _put(out, "severity_number", r.severity_number)
        _put(out, "time", r.time_unix_nano)
        _put(out, "observed_time", r.observed_time_unix_nano)
        _put(out, "event_name", r.event_name)
        _put(out, "trace_id", r.trace_id.hex())
        _put(out, "span_id", r.span_id.hex())
        _put(out, "flags", r.flags)
    return out


def _metric(v: RecordView) -> dict[str, Any]:
    cache = _cache(v)
    out = cache.get("metric")
    if out is None:
        m = v.metric
        out = cache["metric"] = {"type": v.metric_type}
        _put(out, "name", m.name)
        _put(out, "unit", m.unit)
        _put(out, "description", m.description)
        data = getattr(m, v.metric_type)
        if v.metric_type in ("sum", "histogram", "exponential_histogram"):
            temporality = 1 if v.converted else data.aggregation_temporality
            out["temporality"] = _TEMPORALITY.get(temporality, "unspecified")
        if v.metric_type == "sum":
            out["monotonic"] = data.is_monotonic
    return out


def _point(v: RecordView) -> dict[str, Any]:
    cache = _cache(v)
    cached: dict[str, Any] | None = cache.get("point")
    if cached is not None:
        return cached
    p: Any = v.point
    out = cache["point"] = {"attributes": _attributes(v)}
    _put(out, "start_time", p.start_time_unix_nano)
    _put(out, "time", p.time_unix_nano)
    _put(out, "flags", p.flags)
    kind = v.metric_type
    if kind in ("gauge", "sum"):
        which = p.WhichOneof("value")
        if which is not None:
            out["value"] = getattr(p, which)
        return out
    out["count"] = p.count
    if kind == "summary" or p.HasField("sum"):
        out["sum"] = out["value"] = p.sum
    if kind == "summary":
        out["quantiles"] = [{"quantile": q.quantile, "value": q.value} for q in p.quantile_values]
        return out
    for key in ("min", "max"):
        if p.HasField(key):
            out[key] = getattr(p, key)
    if kind == "histogram":
        out["bucket_counts"] = list(p.bucket_counts)
        out["explicit_bounds"] = list(p.explicit_bounds)
    else:
        out["scale"] = p.scale
        out["zero_count"] = p.zero_count
    return out


_BUILDERS: dict[str, Callable[[RecordView], Any]] = {
    "resource": _resource,
    "scope": _scope,
    "attributes": _attributes,
    "record": _record,
    "metric": _metric,
    "point": _point,
}
