"""Compiled rules as straight-line Python: one ``match`` and one ``build`` function per rule.

A rule's conditions and fields are known when the rules load, so instead of looping over lists
of closures per record (a tuple unpack, a call and a branch per field), each rule gets two
functions written out for it and compiled once with ``exec``. The common path — keys of the
record's, resource's, scope's or map body's attributes, with fallbacks — is inlined as dict
lookups; everything else calls the getter ``paths.py`` compiled. This is what makes a typical rule
cost microseconds, not tens of them.

Safety: nothing from a rule file is ever pasted into the generated source. Every key, literal,
getter and message is passed in the namespace under a generated name (``K3``, ``G3``, ``R3``...);
the source only contains those names, fixed keywords and integers. ``source_of`` returns the
source of a generated function, for debugging.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from otlp_meter.events import EncodedEvent, kept_bytes
from otlp_meter.rules.values import show, time_millis
from otlp_meter.rules.views import RecordView

Getter = Callable[[RecordView], Any]
Convert = Callable[[Any], Any]
Missing = Literal["default", "call", "omit", "skip", "reject"]
Test = Literal["exists", "absent", "equals_text", "equals_bool", "in_text", "call"]

_counter = itertools.count()


class Rejected(Exception):
    """A matched record cannot become an event; ``reason`` says which field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Step = tuple[str, Any]
"""One place a value may be: ``(source, key)`` with source ``record``, ``resource``, ``scope`` or
``body`` (a key of those attributes, inlined as a dict lookup), or ``("get", getter)``."""


@dataclass(frozen=True, slots=True)
class Read:
    """Where a value comes from: ``steps`` tried in order until one has a value, or a literal."""

    steps: tuple[Step, ...] = ()
    literal: Any = None
    is_literal: bool = False


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """One event field: read, then ``convert`` a value, or on no value do ``missing`` with ``fallback``
    (the default, a getter to call, or the rejection reason)."""

    label: str
    read: Read
    convert: Convert | None
    missing: Missing
    fallback: Any = None


@dataclass(frozen=True, slots=True)
class ConditionPlan:
    """One condition: read, then ``test`` (``call``: ``arg(value)``; ``equals_*``: ``== arg``;
    ``in_text``: a string in the set ``arg``)."""

    read: Read
    test: Test
    arg: Any = None


# Each attribute dict a function reads is fetched once at its top (and read once per record,
# resource or scope for every rule: views.py): local name, then the lines that fetch it.
_DICTS = {
    "record": ("a", ["    a = v.attrs", "    if a is None: a = v.values()"]),
    "resource": ("r", ["    r = v.res.attrs", "    if r is None: r = v.res.values()"]),
    "scope": ("s", ["    s = v.scope.attrs", "    if s is None: s = v.scope.values()"]),
}


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}
        self.dicts: set[str] = set()

    def name(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.names)}"
        self.names[name] = value
        return name

    def read(self, read: Read, target: str, indent: str, empty: bool = False) -> None:
        """Lines that put the value of ``read`` (None for no value) into ``target``; ``empty``: the
        empty string is no value either (the next place is tried)."""
        if read.is_literal:
            self.lines.append(f"{indent}{target} = {self.name('L', read.literal)}")
            return
        if not read.steps:
            self.lines.append(f"{indent}{target} = None")
        for i, (source, arg) in enumerate(read.steps):
            inner = indent
            if i:  # a fallback: tried only while there is no value yet
                self.lines.append(f"{indent}if {target} is None{f' or {target} == EMPTY' if empty else ''}:")
                inner = indent + "    "
            if source == "get":
                self.lines.append(f"{inner}{target} = {self.name('G', arg)}(v)")
            elif source == "body":  # read only when a rule gets this far: most bodies are no map
                self.lines += [
                    f"{inner}b = v.body",
                    f"{inner}if b is None: b = v.body_values()",
                    f"{inner}{target} = b.get({self.name('K', arg)})",
                ]
            else:
                self.dicts.add(source)
                self.lines.append(f"{inner}{target} = {_DICTS[source][0]}.get({self.name('K', arg)})")

    def function(self, name: str, body: list[str]) -> Callable[..., Any]:
        head = [f"def {name}(v):"]
        for place, (_, fetch) in _DICTS.items():
            if place in self.dicts:
                head += fetch
        source = "\n".join(head + body) + "\n"
        filename = f"<rule {name} #{next(_counter)}>"
        exec(compile(source, filename, "exec"), self.names)  # names only; see the module docstring
        function: Callable[..., Any] = self.names[name]
        function.__otlp_meter_source__ = source  # type: ignore[attr-defined]
        return function


def non_finite(value: Any, path: str = "") -> str | None:
    """Where in ``value`` (a data map) a NaN or infinite float is, as a dotted path; None if nowhere."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def source_of(function: Callable[..., Any]) -> str:
    """The generated source of a ``match`` or ``build`` function."""
    return str(getattr(function, "__otlp_meter_source__", ""))


def match_function(
    conditions: Sequence[ConditionPlan], expression: Callable[[RecordView], bool] | None
) -> Callable[[RecordView], bool]:
    """``match(view) -> bool``: every condition in order, then the expression (which may raise)."""
    w = _Writer()
    body: list[str] = []
    for plan in conditions:
        start = len(w.lines)
        w.read(plan.read, "x", "    ")
        if plan.test == "exists":
            w.lines.append("    if x is None: return False")
        elif plan.test == "absent":
            w.lines.append("    if x is not None: return False")
        elif plan.test == "equals_text":
            w.lines.append(f"    if x.__class__ is not str or x != {w.name('E', plan.arg)}: return False")
        elif plan.test == "in_text":
            w.lines.append(f"    if x.__class__ is not str or x not in {w.name('E', plan.arg)}: return False")
        elif plan.test == "equals_bool":
            w.lines.append(f"    if x is not {w.name('E', plan.arg)}: return False")
        else:
            w.lines.append(f"    if not {w.name('T', plan.arg)}(x): return False")
        body += w.lines[start:]
    if expression is not None:
        body.append(f"    return {w.name('X', expression)}(v)")
    else:
        body.append("    return True")
    return w.function("match", body)


def reject_function(reason: Read, missing: str) -> Callable[[RecordView], EncodedEvent | None]:
    """``build(view)`` of a rule that dead-letters what it takes: always :class:`Rejected`, with the
    reason read (its text; ``missing`` when there is no value)."""
    w = _Writer()
    w.names.update(Rejected=Rejected, show=show, MISSING=missing)
    w.read(reason, "reason", "    ")
    body = [
        *w.lines,
        "    raise Rejected(MISSING if reason is None else reason if type(reason) is str else show(reason))",
    ]
    return w.function("reject", body)


def build_function(
    head: Sequence[FieldPlan],
    base: FieldPlan | None,
    data: Sequence[tuple[str, FieldPlan]],
    event_id: FieldPlan,
) -> Callable[[RecordView], EncodedEvent | None]:
    """``build(view)``: the encoded event, None (an ``optional`` type/subject had no value), or
    :class:`Rejected`. ``head`` is type, subject, source, time."""
    w = _Writer()
    labels: list[str] = []
    body = ["    at = 0", "    try:"]

    def field(plan: FieldPlan, target: str, data_key: str | None = None, empty: bool = False) -> None:
        """``empty``: an empty string is no value (type, subject, source, id: the next path, the
        default or the fallback is used; data keeps "")."""
        start = len(w.lines)
        w.lines.append(f"        at = {len(labels)}")
        labels.append(plan.label)
        # The built-in defaults (source, time, id: the only step, called again when missing) never
        # give "": paths, bodies and expressions may.
        builtin = plan.missing == "call" and plan.read.steps == (("get", plan.fallback),)
        empty = empty and not builtin
        w.read(plan.read, "x", "        ", empty)
        if empty and plan.missing != "reject":  # a required one refuses "" in its conversion
            w.lines.append("        if x == EMPTY: x = None")
        store = f"data[{w.name('D', data_key)}] = x" if data_key is not None else f"{target} = x"
        if plan.read.is_literal:
            w.lines.append(f"        {store}")
            body.extend(w.lines[start:])
            return
        convert = f"x = {w.name('C', plan.convert)}(x)" if plan.convert is not None else "pass"
        if plan.missing == "omit":
            w.lines += ["        if x is not None:", f"            {convert}", f"            {store}"]
            body.extend(w.lines[start:])
            return
        if plan.missing == "default":
            on_missing = f"x = {w.name('F', plan.fallback)}"
        elif plan.missing == "call":
            on_missing = f"x = {w.name('G', plan.fallback)}(v)"
        elif plan.missing == "skip":
            on_missing = "return None"
        else:
            on_missing = f"raise Rejected({w.name('R', plan.fallback)})"
        w.lines += ["        if x is None:", f"            {on_missing}"]
        if plan.convert is not None:
            w.lines += ["        else:", f"            {convert}"]
        w.lines.append(f"        {store}")
        body.extend(w.lines[start:])

    for plan, target in zip(head, ("type_", "subject", "source", "time"), strict=True):
        field(plan, target, empty=True)
    if base is not None:
        body.append("        data = None")
        field(base, "data")
        body.append("        data = {} if data is None else dict(data)")
    else:
        body.append("        data = {}")
    for key, plan in data:
        field(plan, "", key)
    field(event_id, "event_id", empty=True)
    w.names.update(Rejected=Rejected, dumps=orjson.dumps, tight=kept_bytes, JSONError=orjson.JSONEncodeError)
    w.names.update(EMPTY="", NULL=b"null", non_finite=non_finite)
    w.names.update(LABELS=tuple(labels), new=tuple.__new__, EncodedEvent=EncodedEvent, millis=time_millis)
    body += [
        "    except ValueError as exc:",
        '        raise Rejected(f"{LABELS[at]}: {exc}") from None',
        "    try:",
        '        payload = tight(dumps({"specversion": "1.0", "id": event_id, "source": source,'
        ' "type": type_, "subject": subject, "time": time, "data": data}))',
        "    except (JSONError, TypeError) as exc:",
        '        raise Rejected(f"data: cannot encode as JSON: {exc}") from None',
        # JSON has no NaN or infinity: orjson writes them as null. A payload with a null is checked.
        "    if NULL in payload:",
        "        bad = non_finite(data)",
        "        if bad is not None:",
        '            raise Rejected(f"data.{bad}: not a finite number (NaN or infinity)")',
        # The default time (the usual one) comes with its milliseconds; any other is read back.
        "    return new(EncodedEvent, (source, event_id, payload,"
        " v.time_ms if time is v.time_text else millis(time)))",
    ]
    return w.function("build", body)
