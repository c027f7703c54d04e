"""Compiled rules handed to the optional C extension (``_native.c``): the hot path of mapping.

A rule whose parts C knows (attribute keys, the common point and metric paths, text and bool
tests, the usual conversions, the built-in source, time and id) gets a :data:`Program` next to its
Python ``match`` and ``build``. Called with a record's view, the program returns ``False`` (the
conditions do not hold), the :class:`~otlp_meter.events.EncodedEvent` — byte for byte what the
Python build makes — or ``None``: anything off the common path (a missing required value, a value
to reject, NaN, a conversion it does not make itself), for which the engine runs the Python
``match`` and ``build``. So the two never disagree: C either makes the same event or defers.

Whether the extension is used is decided in :mod:`otlp_meter.native`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Literal

import orjson

from otlp_meter import native
from otlp_meter.events import EncodedEvent
from otlp_meter.rules import attributes
from otlp_meter.rules.codegen import ConditionPlan, FieldPlan, Read
from otlp_meter.rules.paths import RuleSignal, parse_path
from otlp_meter.rules.values import as_float, as_int, as_number, as_string, event_string, time_millis
from otlp_meter.rules.views import RecordView

Program = Callable[[RecordView], "EncodedEvent | Literal[False] | None"]

# Step kinds, getter codes, builtins, tests, conversions, missing-value actions: as in _native.c.
_PLACES = {"record": 0, "resource": 1, "scope": 2, "body": 3}
_NATIVE_STEP, _PYTHON_STEP, _BUILTIN_STEP = 4, 5, 6
_NATIVE_GETTERS: tuple[tuple[str, RuleSignal], ...] = (
    ("point.value", "metrics"),
    ("point.sum", "metrics"),
    ("point.count", "metrics"),
    ("point.time", "metrics"),
    ("point.start_time", "metrics"),
    ("record.time", "logs"),
    ("metric.name", "metrics"),
    ("metric.unit", "metrics"),
    ("metric.type", "metrics"),
)
_GETTER_CODES: dict[Any, int] = {
    parse_path(path, signal).fixed: code for code, (path, signal) in enumerate(_NATIVE_GETTERS)
}
_TESTS = {"exists": 0, "absent": 1, "equals_text": 2, "in_text": 3, "equals_bool": 4, "call": 5}
_CONVERSIONS: dict[Any, int] = {as_int: 1, as_number: 2, as_float: 3, as_string: 4, event_string: 5}
_PYTHON_CONVERSION = 6
BUILTIN_SOURCE, BUILTIN_TIME, BUILTIN_ID = 1, 2, 3


class _Unsupported(Exception):
    """A part of the rule C does not run: the rule stays in Python."""


def _setup(module: ModuleType) -> None:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        ExponentialHistogramDataPoint,
        HistogramDataPoint,
        NumberDataPoint,
        SummaryDataPoint,
    )

    def layout(cls: Any) -> tuple[Any, ...]:
        fields = cls.DESCRIPTOR.fields_by_name
        names = (
            "attributes",
            "start_time_unix_nano",
            "time_unix_nano",
            "as_double",
            "as_int",
            "sum",
            "count",
        )
        numbers = tuple(fields[name].number if name in fields else 0 for name in names)
        return (cls, *numbers, int("sum" in fields and fields["sum"].has_presence))

    points = (NumberDataPoint, HistogramDataPoint, ExponentialHistogramDataPoint, SummaryDataPoint)
    module.setup(
        tuple(layout(cls) for cls in points), attributes.value_of, orjson.dumps, time_millis, EncodedEvent
    )


if native.module is not None:
    _setup(native.module)


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        raise _Unsupported from None


def _read(read: Read, builtins: dict[Any, int]) -> tuple[Any, ...]:
    if read.is_literal:
        return ("lit", _json(read.literal), read.literal)
    steps: list[tuple[int, Any]] = []
    for source, arg in read.steps:
        if source != "get":
            steps.append((_PLACES[source], arg))
        elif arg in builtins:
            steps.append((_BUILTIN_STEP, builtins[arg]))
        elif arg in _GETTER_CODES:
            steps.append((_NATIVE_STEP, _GETTER_CODES[arg]))
        else:
            steps.append((_PYTHON_STEP, arg))
    return ("path", tuple(steps))


def _field(plan: FieldPlan, builtins: dict[Any, int], empty: bool) -> tuple[Any, ...]:
    """What codegen's ``field`` does with ``plan``, as data (``empty``: a head field or the id)."""
    convert = plan.convert
    code = 0 if convert is None else _CONVERSIONS.get(convert, _PYTHON_CONVERSION)
    fallback: Any = None
    if plan.missing == "default":
        missing, fallback = 0, (_json(plan.fallback), plan.fallback)
    elif plan.missing == "call":
        if plan.fallback not in builtins:
            raise _Unsupported
        missing, fallback = 1, builtins[plan.fallback]
        if plan.read.steps == (("get", plan.fallback),):
            empty = False  # the builtins never give ""
    elif plan.missing == "omit":
        missing = 2
    else:  # skip, reject: the Python build decides
        missing = 3
    return (_read(plan.read, builtins), code, convert, missing, fallback, empty)


def _condition(plan: ConditionPlan, builtins: dict[Any, int]) -> tuple[Any, ...]:
    arg = tuple(sorted(plan.arg)) if plan.test == "in_text" else plan.arg
    return (_read(plan.read, builtins), _TESTS[plan.test], arg)


def program(
    signal: RuleSignal,
    conditions: Sequence[ConditionPlan],
    head: Sequence[FieldPlan],
    data: Sequence[tuple[str, FieldPlan]],
    event_id: FieldPlan,
    builtins: dict[Any, int],
    rule_key: bytes,
) -> Program | None:
    """The C program of a rule with these plans (as codegen's ``match_function`` and
    ``build_function`` take them, without a match expression or ``data_from``), or None when the
    extension is not available or the rule has a part it does not run."""
    module = native.module
    if module is None or not native.available():
        return None
    try:
        spec = (
            signal == "logs",
            tuple(_condition(plan, builtins) for plan in conditions),
            tuple(_field(plan, builtins, True) for plan in head),
            tuple((_json(key), _field(plan, builtins, False)) for key, plan in data),
            _field(event_id, builtins, True),
            rule_key,
        )
    except _Unsupported:
        return None
    try:
        made: Program = module.Program(spec)
    except UnicodeEncodeError:  # a key or text with a lone surrogate: Python compares it as it is
        return None
    return made
