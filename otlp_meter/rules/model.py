"""What a rule file says, as pydantic models, and the ``rules:`` section of the main config.

These models check the shape of a rule (keys, types, exactly-one-of constraints, regexes). What
needs the rule's signal, such as whether a path exists for logs or metrics, is checked when the
rule compiles (``compile.py``). Both report problems as ``(yaml_path, message)`` pairs.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from otlp_meter.config_types import Duration, Section

Coercion = Literal["int", "float", "number", "string", "bool"]
MetricType = Literal["gauge", "sum", "histogram", "exponential_histogram", "summary"]
Scalar = str | int | float | bool

_RULE_CONFIG = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")


def _check_scalar(value: Any) -> Any:
    if not isinstance(value, str | int | float):  # bool is an int
        raise ValueError("must be a string, number or bool")
    return value


def _check_json(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        raise ValueError(f"{value} is outside the 64-bit integer range")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, list):
        return [_check_json(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _check_json(item) for key, item in value.items()}
    raise ValueError(f"must be a JSON value (string, number, bool, null, list or mapping), got {value!r}")


def _check_path_ref(value: Any) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return value
    raise ValueError("must be a path or a non-empty list of paths")


ScalarValue = Annotated[Scalar, BeforeValidator(_check_scalar)]
PathRef = Annotated[str | list[str], BeforeValidator(_check_path_ref)]
"""One path, or a list of paths of which the first that has a value wins."""


class FieldSpec(Section):
    """How one event field gets its value: from a path (with fallbacks), an expression or a literal."""

    model_config = _RULE_CONFIG

    path: PathRef | None = Field(None, description="Path, or list of paths tried in order.")
    expr: str | None = Field(None, description="A CEL expression; null means no value.")
    value: Annotated[Any, BeforeValidator(_check_json)] = Field(None, description="A literal value.")
    default: Annotated[Any, BeforeValidator(_check_json)] = Field(
        None, description="Used when no path has a value."
    )
    as_: Coercion | None = Field(None, alias="as", description="Convert the value to this type.")
    optional: bool = Field(
        False,
        description="No value is fine: data keys are left out, source/time/id use their built-in "
        "default, and a rule whose type or subject has no value does not match the record.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        given = self.model_fields_set
        if len(given & {"path", "value", "expr"}) != 1:
            raise ValueError("needs exactly one of 'path', 'expr' or 'value'")
        if "value" in given and given & {"default", "optional"}:
            raise ValueError("'default' and 'optional' only apply with 'path' or 'expr'")
        if "expr" in given and not (self.expr or "").strip():
            raise ValueError("'expr' must not be empty")
        return self

    @property
    def paths(self) -> list[str]:
        """The path list, a single path being a list of one."""
        if self.path is None:
            return []
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


def _field_from_yaml(value: Any) -> Any:
    if isinstance(value, str | int | float):
        return {"value": value}
    if isinstance(value, dict | FieldSpec):
        return value
    if value is None:
        raise ValueError("needs a value: a literal, or a mapping with 'path', 'expr' or 'value'")
    if isinstance(value, list):
        raise ValueError("a list is not a field; write {path: [...]} for fallbacks or {value: [...]}")
    raise ValueError(f"must be a literal or a mapping with 'path', 'expr' or 'value', got {value!r}")


FieldValue = Annotated[FieldSpec, BeforeValidator(_field_from_yaml)]
"""A field as written: a scalar literal, or a :class:`FieldSpec` mapping."""


class Condition(Section):
    """One ``where`` entry: a path and exactly one test."""

    model_config = _RULE_CONFIG

    path: PathRef = Field(description="Path, or list of paths of which the first with a value is tested.")
    exists: bool | None = Field(None, description="true: the path has a value; false: it has none.")
    equals: ScalarValue | None = Field(
        None, description="The value equals this (same kind: text, number, bool)."
    )
    in_: list[ScalarValue] | None = Field(None, alias="in", description="The value equals one of these.")
    regex: str | None = Field(None, description="re.search matches the value as text.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("in_")
    @classmethod
    def _not_empty(cls, value: list[Scalar] | None) -> list[Scalar] | None:
        if value is not None and not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [name for name in ("exists", "equals", "in_", "regex") if name in self.model_fields_set]
        if len(tests) != 1:
            raise ValueError("needs exactly one of 'exists', 'equals', 'in' or 'regex'")
        if getattr(self, tests[0]) is None:
            raise ValueError(f"'{tests[0].rstrip('_')}' needs a value")
        return self


class MatchModel(Section):
    """Which records a rule takes."""

    model_config = _RULE_CONFIG

    signal: Literal["logs", "metrics"] = Field(description="The OTLP signal the rule reads.")
    metric: str | None = Field(None, description="Metrics only: metric name, exact or an fnmatch glob.")
    metric_type: MetricType | None = Field(None, description="Metrics only: the metric's data type.")
    where: list[Condition] = Field(default_factory=list, description="Conditions that must all hold.")
    expr: str | None = Field(
        None, description="A CEL expression that must be true too; evaluated after 'where'."
    )

    @field_validator("expr")
    @classmethod
    def _expr_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value


class EventModel(Section):
    """The CloudEvent a matching record becomes."""

    model_config = _RULE_CONFIG

    type: FieldValue = Field(description="CloudEvent type (the OpenMeter meter's event type).")
    subject: FieldValue = Field(description="CloudEvent subject (the customer or subject key).")
    source: FieldValue | None = Field(
        None, description="CloudEvent source; default resource service.name, else 'otlp-meter'."
    )
    time: FieldValue | None = Field(None, description="Event time; default the record's own time.")
    id: FieldValue | None = Field(None, description="Event id; default a deterministic hash of the record.")
    data_from: FieldValue | None = Field(
        None, description="A map (path or expression) the data object starts from; 'data' keys go on top."
    )
    data: dict[str, FieldValue] = Field(default_factory=dict, description="The event's data object.")


class RuleModel(Section):
    """One rule: match records of a signal, make one CloudEvent from each."""

    model_config = _RULE_CONFIG

    name: str = Field(description="Unique rule name; shows in metrics, dead letters and ids.")
    description: str = Field("", description="Free text for people.")
    continue_: bool = Field(
        False, alias="continue", description="Keep evaluating later rules after this one matched."
    )
    match: MatchModel = Field(description="Which records this rule takes.")
    event: EventModel | None = Field(None, description="The event to make (or ``reject``).")
    reject: FieldValue | None = Field(
        None,
        description="Instead of an event: dead-letter every record the rule takes, with this reason "
        "(a literal, a path or an expression).",
    )

    @model_validator(mode="after")
    def _event_or_reject(self) -> RuleModel:
        if (self.event is None) == (self.reject is None):
            raise ValueError("a rule needs exactly one of 'event' (make an event) or 'reject' (dead-letter)")
        return self

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and use only letters, digits and _ . : / -")
        return value


class RuleFile(Section):
    """A rule file: a top-level ``rules:`` list."""

    rules: list[RuleModel] = Field(description="The rules, evaluated in order.")


SHIPPED_PACKS = ("genai", "http", "kubernetes", "prometheus", "runai", "s3")
"""Every pack under ``rules/``; all load by default because each matches only its own inputs."""


class CumulativeConfig(Section):
    """How cumulative sums and histograms become deltas (see docs/rules.md, "Metric semantics")."""

    initial_value: Literal["auto", "keep", "drop"] = Field(
        "auto",
        description="The first point of a stream: 'keep' bills its whole value, 'drop' only remembers "
        "it, 'auto' keeps it when the stream started after the collector first started, else drops it.",
    )
    max_streams: int = Field(
        100_000, ge=1, description="Streams kept in memory; others are read back from the queue's state."
    )
    max_staleness: Duration = Field(
        7 * 86400.0,
        description="A stream with no point for this long is forgotten (its state deleted); if it reports "
        "again it bills from its next point on, never its history. 0: never forget.",
    )


class RulesConfig(Section):
    """The ``rules:`` section of the main config: which rules run, in which order."""

    packs: list[str] = Field(
        default_factory=lambda: list(SHIPPED_PACKS),
        description="Shipped rule packs to load, by name; they run after files and inline rules.",
    )
    files: list[Path] = Field(
        default_factory=list, description="Rule files (YAML with a top-level 'rules:' list), in order."
    )
    inline: list[RuleModel] = Field(
        default_factory=list, description="Rules written in the main config; they run first."
    )
    subjects: dict[str, FieldValue] = Field(
        default_factory=dict,
        description="Per pack name: the subject every rule of that pack uses instead of its own.",
    )
    cumulative: CumulativeConfig = Field(
        default_factory=CumulativeConfig, description="Cumulative-to-delta conversion of metrics."
    )


# --- problems as YAML paths ----------------------------------------------------------------------

_KNOWN_KEYS = sorted(
    {
        field.alias or name
        for model in (
            FieldSpec,
            Condition,
            MatchModel,
            EventModel,
            RuleModel,
            RuleFile,
            RulesConfig,
            CumulativeConfig,
        )
        for name, field in model.model_fields.items()
    }
)
_SIMPLE_MESSAGES = {
    "missing": "required",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def yaml_path(loc: Sequence[str | int], prefix: str = "") -> str:
    """``("rules", 2, "event", "as")`` → ``rules[2].event.as`` (after ``prefix``)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    if kind in _SIMPLE_MESSAGES:
        return _SIMPLE_MESSAGES[kind]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
        return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        return "must be one of " + ", ".join(options)
    message = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    return message


def validation_problems(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(yaml_path, message)`` pairs, paths under ``prefix``."""
    return [(yaml_path(e["loc"], prefix), _message(e)) for e in error.errors()]
