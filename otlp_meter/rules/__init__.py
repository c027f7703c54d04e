"""Rules: turn OTLP log records and metric points into CloudEvents, as the user's YAML says.

    model.py    what a rule file says (pydantic), and ``RulesConfig``
    paths.py    paths into a record, compiled to getter closures
    values.py   ``as:`` coercions, event strings, RFC 3339 times
    compile.py  rule model → ``CompiledRule`` (predicates + event builder)
    ids.py      deterministic event ids
    loader.py   inline rules, rule files and shipped packs → compiled rules
    engine.py   ``RulesEngine``: export requests → ``MappingResult``

Everything here is pure except reading rule files at load time.
"""

from otlp_meter.rules.compile import CompiledRule, compile_rule
from otlp_meter.rules.engine import MappingResult, RulesEngine
from otlp_meter.rules.loader import available_packs, load_rules, read_rule_file
from otlp_meter.rules.model import RuleModel, RulesConfig

__all__ = [
    "CompiledRule",
    "MappingResult",
    "RuleModel",
    "RulesConfig",
    "RulesEngine",
    "available_packs",
    "compile_rule",
    "load_rules",
    "read_rule_file",
]
