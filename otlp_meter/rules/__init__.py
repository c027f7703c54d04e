"""Rules: turn OTLP log records and metric points into CloudEvents, as the user's YAML says.

    model.py        what a rule file says (pydantic), and ``RulesConfig``
    views.py        one record with its resource and scope, and the caches rules share
    attributes.py   OTLP attributes → plain values (through the protobuf API, or from bytes)
    paths.py        paths into a record, compiled to getter closures
    expressions.py  CEL expressions (``match.expr``, ``{expr: ...}``)
    values.py       ``as:`` coercions, event strings, RFC 3339 times
    compile.py      rule model → ``CompiledRule`` (a ``match`` and a ``build`` function)
    codegen.py      writes those two functions per rule
    ids.py          deterministic event ids
    delta.py        cumulative → delta: ``StreamStates`` and the conversion
    loader.py       inline rules, rule files and shipped packs → compiled rules
    engine.py       ``RulesEngine``: export requests → ``MappingResult``
    dry_run.py      ``otlp-meter rules test``

Everything here is pure except reading rule files at load time (and the dry run's file I/O).
"""

from otlp_meter.rules.compile import CompiledRule, compile_rule
from otlp_meter.rules.delta import StreamStates
from otlp_meter.rules.engine import MappingResult, RulesEngine
from otlp_meter.rules.loader import available_packs, load_rules, read_rule_file, rule_file_texts
from otlp_meter.rules.model import RuleModel, RulesConfig

__all__ = [
    "CompiledRule",
    "MappingResult",
    "RuleModel",
    "RulesConfig",
    "RulesEngine",
    "StreamStates",
    "available_packs",
    "compile_rule",
    "load_rules",
    "read_rule_file",
    "rule_file_texts",
]
