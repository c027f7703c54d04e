"""Rule models → compiled rules: one ``match`` and one ``build`` function per rule.

Everything that can be decided once is decided here: paths become getters (or inlined attribute
lookups), regexes and expressions compile, literals and defaults are converted, the metric-name
glob becomes a matcher; :mod:`codegen` then writes the rule's two functions. Mapping a record
never raises for bad input: a value that is missing or cannot be converted, or an expression that
fails, raises :class:`Rejected` (caught by the engine and reported as a ``Rejection``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from otlp_meter.errors import ConfigError
from otlp_meter.events import EncodedEvent, format_time
from otlp_meter.rules import ids, native_rules
from otlp_meter.rules.codegen import (
    ConditionPlan,
    FieldPlan,
    Read,
    Rejected,
    Step,
    build_function,
    match_function,
    reject_function,
)
from otlp_meter.rules.expressions import Expression, ExpressionError
from otlp_meter.rules.model import Condition, FieldSpec, RuleModel, yaml_path
from otlp_meter.rules.paths import Getter, PathError, PathSpec, RecordView, RuleSignal, parse_path
from otlp_meter.rules.values import COERCIONS, event_source, event_string, event_time, show
from otlp_meter.rules.views import EVERY_KEY, Wanted

Predicate = Callable[[RecordView], bool]
Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run. Conditions and ``build`` raise :class:`Rejected` (an expression failed,
    a value is missing or wrong); nothing else. ``build`` returns None when an ``optional`` type
    or subject has no value: then the rule does not take the record after all."""

    name: str
    signal: RuleSignal
    continue_: bool
    match: Predicate
    """Whether the record satisfies ``match.where`` and ``match.expr`` (may raise ``Rejected``)."""
    build: Callable[[RecordView], EncodedEvent | None]
    metric_name: Callable[[str], bool] | None = None
    metric_type: str | None = None
    origin: str = ""
    """Where the rule was defined, e.g. ``rules/genai.yaml rules[0]``."""
    wanted: Wanted = EVERY_KEY
    """The attribute keys the rule reads (the engine reads only those of every record)."""
    native: native_rules.Program | None = None
    """The rule in C (``native_rules.py``): ``False`` (no match), the event, or None (run ``match``
    and ``build``); None when the C extension is off or the rule has a part C does not run."""

    def accepts_metric(self, name: str, metric_type: str) -> bool:
        """Whether points of this metric can match (``match.metric`` / ``match.metric_type``)."""
        if self.metric_type is not None and metric_type != self.metric_type:
            return False
        return self.metric_name is None or self.metric_name(name)

    def matches(self, view: RecordView) -> bool:
        """Whether every ``where`` condition (and ``match.expr``) holds for the record."""
        return self.match(view)


class _Compiler:
    def __init__(self, rule: RuleModel, where: str) -> None:
        self.rule = rule
        self.signal: RuleSignal = rule.match.signal
        self.where = where
        self.problems: list[tuple[str, str]] = []
        self.keys: dict[str, set[str]] = {"record": set(), "resource": set(), "scope": set(), "body": set()}

    def problem(self, loc: Sequence[str | int], message: str) -> None:
        self.problems.append((yaml_path(loc, self.where), message))

    def expression(self, text: str, loc: tuple[str | int, ...]) -> Expression | None:
        try:
            return Expression(text, self.signal)
        except ExpressionError as exc:
            self.problem(loc, f"invalid expression: {exc}")
            return None

    def match_expression(self) -> Predicate | None:
        text = self.rule.match.expr
        expression = None if text is None else self.expression(text, ("match", "expr"))
        if expression is None:
            return None
        evaluate = expression.evaluate

        def holds(v: RecordView) -> bool:
            try:
                result = evaluate(v)
            except ValueError as exc:
                raise Rejected(f"match.expr: {exc}") from None
            if result is True or result is False:
                return result
            raise Rejected(f"match.expr: must be true or false, got {show(result)}")

        return holds

    def read(self, paths: str | list[str], loc: tuple[str | int, ...]) -> Read:
        texts = [paths] if isinstance(paths, str) else paths
        specs: list[PathSpec] = []
        for i, text in enumerate(texts):
            try:
                specs.append(parse_path(text, self.signal))
            except PathError as exc:
                self.problem(loc if isinstance(paths, str) else (*loc, i), str(exc))
        steps: list[Step] = []
        for spec in specs:
            if spec.fixed is not None:
                steps.append(("get", spec.fixed))
            else:  # the hot path: a key of an attribute dict, inlined as a lookup
                steps.append((spec.source, spec.key))
                self.keys[spec.source].add(spec.key)
        return Read(tuple(steps))

    def wanted(self) -> Wanted:
        return Wanted(**{place: frozenset(keys) for place, keys in self.keys.items()})

    # -- match ------------------------------------------------------------------------------------

    def condition(self, cond: Condition, loc: tuple[str | int, ...]) -> ConditionPlan:
        read = self.read(cond.path, (*loc, "path"))
        if cond.exists is not None:
            return ConditionPlan(read, "exists" if cond.exists else "absent")
        if cond.regex is not None:
            return ConditionPlan(read, "call", _regex_test(re.compile(cond.regex).search))
        if cond.in_ is not None:
            if all(isinstance(option, str) for option in cond.in_):
                return ConditionPlan(read, "in_text", frozenset(cond.in_))
            return ConditionPlan(read, "call", _in_test(cond.in_))
        # Same kind only: text equals text, a number equals a number (1 == 1.0), a bool equals a bool.
        if isinstance(cond.equals, bool):
            return ConditionPlan(read, "equals_bool", cond.equals)
        if isinstance(cond.equals, str):
            return ConditionPlan(read, "equals_text", cond.equals)
        return ConditionPlan(read, "call", _equals_number_test(cond.equals))

    def metric_filter(self) -> tuple[Callable[[str], bool] | None, str | None]:
        match = self.rule.match
        if self.signal != "metrics":
            for key in ("metric", "metric_type"):
                if getattr(match, key) is not None:
                    self.problem(("match", key), "only applies to signal: metrics")
            return None, None
        name = match.metric
        if name is None:
            return None, match.metric_type
        if any(ch in name for ch in "*?["):
            return re.compile(fnmatch.translate(name)).match, match.metric_type  # type: ignore[return-value]
        return name.__eq__, match.metric_type

    # -- event ------------------------------------------------------------------------------------

    def field(
        self,
        spec: FieldSpec,
        loc: tuple[str | int, ...],
        convert: Convert | None,
        fallback: Getter | None = None,
    ) -> FieldPlan:
        """One field. No value → ``default`` → ``fallback`` (if optional) → omit/skip/reject."""
        label = yaml_path(loc[1:])  # without "event."
        if spec.as_ is not None:
            if convert is not None:
                self.problem((*loc, "as"), "only applies to data fields")
            convert = COERCIONS[spec.as_]
        if spec.expr is not None:
            expression = self.expression(spec.expr, (*loc, "expr"))
            read = Read((("get", expression.evaluate if expression is not None else _none),))
            missing = f"{label}: expression {spec.expr!r} is null"
        elif spec.path is None:
            try:
                const = spec.value if convert is None else convert(spec.value)
            except ValueError as exc:
                self.problem(loc, str(exc))
                const = None
            return FieldPlan(label, Read(literal=const, is_literal=True), None, "default")
        else:
            read = self.read(spec.path, (*loc, "path"))
            missing = f"{label}: no value at {' | '.join(spec.paths)}"
        if spec.has_default:
            default = spec.default
            if convert is not None:
                try:
                    default = convert(default)
                except ValueError as exc:
                    self.problem((*loc, "default"), str(exc))
            return FieldPlan(label, read, convert, "default", default)
        if spec.optional:
            if fallback is not None:
                return FieldPlan(label, read, convert, "call", fallback)
            in_data = loc[1:2] in (("data",), ("data_from",))
            return FieldPlan(label, read, convert, "omit" if in_data else "skip")
        return FieldPlan(label, read, convert, "reject", missing)

    def reject(self) -> Callable[[RecordView], EncodedEvent | None]:
        """``build`` of a ``reject`` rule: always :class:`Rejected`, with the reason it reads."""
        spec = self.rule.reject
        assert spec is not None
        plan = self.field(spec, ("reject",), None)
        missing = plan.fallback if plan.missing == "default" else "rejected by the rule"
        return reject_function(plan.read, missing)

    def build(
        self, conditions: Sequence[ConditionPlan], expression: Predicate | None
    ) -> tuple[Callable[[RecordView], EncodedEvent | None], native_rules.Program | None]:
        """The rule's ``build``, and its C program (None: none) given its ``match`` parts."""
        event, name = self.rule.event, self.rule.name
        assert event is not None
        logs = self.signal == "logs"

        def default_source(v: RecordView) -> str:
            return v.res.default_source()

        def default_time(v: RecordView) -> str:
            text = v.time_text
            if text is None:
                if logs:
                    ns = v.record.time_unix_nano or v.record.observed_time_unix_nano or v.received_ns
                else:
                    ns = v.point.time_unix_nano or v.received_ns
                scope = v.scope
                if scope.last_time_ns == ns:  # the points of a metric mostly share their time
                    text = scope.last_time_text
                    v.time_ms = scope.last_time_ms
                else:
                    text = scope.last_time_text = format_time(ns)
                    scope.last_time_ns = ns
                    v.time_ms = scope.last_time_ms = ns // 1_000_000
                v.time_text = text
            return text

        rule_key = ids.rule_key(name)

        def default_id(v: RecordView) -> str:
            return ids.event_id(v.hasher(), rule_key)

        def builtin(label: str, get: Getter) -> FieldPlan:
            return FieldPlan(label, Read((("get", get),)), None, "call", get)

        loc = ("event",)
        head = (
            self.field(event.type, (*loc, "type"), event_string),
            self.field(event.subject, (*loc, "subject"), event_string),
            builtin("source", default_source)
            if event.source is None
            else self.field(event.source, (*loc, "source"), event_source, default_source),
            builtin("time", default_time)
            if event.time is None
            else self.field(event.time, (*loc, "time"), event_time, default_time),
        )
        base = None if event.data_from is None else self.field(event.data_from, (*loc, "data_from"), _as_map)
        body = [(key, self.field(spec, (*loc, "data", key), None)) for key, spec in event.data.items()]
        event_id = (
            builtin("id", default_id)
            if event.id is None
            else self.field(event.id, (*loc, "id"), event_string, default_id)
        )
        program = None
        if expression is None and base is None:
            builtins: dict[Any, int] = {
                default_source: native_rules.BUILTIN_SOURCE,
                default_time: native_rules.BUILTIN_TIME,
                default_id: native_rules.BUILTIN_ID,
            }
            program = native_rules.program(self.signal, conditions, head, body, event_id, builtins, rule_key)
        return build_function(head, base, body, event_id), program


def _as_map(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a map, got {show(value)}")
    return value


def _none(v: RecordView) -> None:
    return None


def compile_rule(rule: RuleModel, *, where: str = "", source: str = "", origin: str = "") -> CompiledRule:
    """Compile one validated rule. Problems raise :class:`ConfigError` with paths under ``where``."""
    compiler = _Compiler(rule, where)
    metric_name, metric_type = compiler.metric_filter()
    conditions = [compiler.condition(cond, ("match", "where", i)) for i, cond in enumerate(rule.match.where)]
    expression = compiler.match_expression()  # after the paths: they are the cheap filter
    program = None
    if rule.event is not None:
        build, program = compiler.build(conditions, expression)
    else:
        build = compiler.reject()
    if compiler.problems:
        raise ConfigError(compiler.problems, source=source)
    return CompiledRule(
        name=rule.name,
        signal=compiler.signal,
        continue_=rule.continue_,
        match=match_function(conditions, expression),
        build=build,
        metric_name=metric_name,
        metric_type=metric_type,
        origin=origin,
        wanted=compiler.wanted(),
        native=program,
    )


# --- condition tests (on the value read) ---------------------------------------------------------


def _equals_number_test(expected: Any) -> Callable[[Any], bool]:
    def equals_number(value: Any) -> bool:
        kind = type(value)
        return (kind is int or kind is float) and value == expected

    return equals_number


def _in_test(options: Sequence[Any]) -> Callable[[Any], bool]:
    texts = frozenset(o for o in options if isinstance(o, str))
    bools = frozenset(o for o in options if isinstance(o, bool))
    numbers = frozenset(o for o in options if isinstance(o, int | float) and not isinstance(o, bool))

    def is_in(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return value in texts
        if kind is int or kind is float:
            return value in numbers
        if kind is bool:
            return value in bools
        return False

    return is_in


def _regex_test(search: Callable[[str], re.Match[str] | None]) -> Callable[[Any], bool]:
    def matches(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return search(value) is not None
        if kind is bool:
            return search("true" if value else "false") is not None
        if kind is int or kind is float:
            return search(str(value)) is not None
        return False

    return matches


__all__ = ["CompiledRule", "Rejected", "compile_rule"]
