"""Rules compile to generated functions; nothing from a rule file ever becomes code."""

from __future__ import annotations

from otlp_meter.rules.codegen import source_of
from tests.unit.rules.otlp import data_of, engine, log_record, rule

HOSTILE = '"); import os; os._exit(1); ("\n\\'


def test_keys_and_literals_are_data_never_code() -> None:
    r = rule(
        match={"where": [{"path": f"attributes.{HOSTILE}", "equals": HOSTILE}]},
        event={"data": {HOSTILE: {"path": f"attributes.{HOSTILE}"}, "literal": HOSTILE}},
    )
    assert data_of(r, log_record({HOSTILE: HOSTILE})) == {HOSTILE: HOSTILE, "literal": HOSTILE}
    compiled = engine(r).rules[0]
    for function in (compiled.match, compiled.build):
        assert "os" not in source_of(function)


def test_generated_source_is_available_for_debugging() -> None:
    compiled = engine(rule(match={"where": [{"path": "attributes.a", "exists": True}]})).rules[0]
    assert source_of(compiled.match).startswith("def match(v):")
    assert "a.get(K" in source_of(compiled.match)  # one attribute: an inlined lookup, no call
    assert source_of(compiled.build).startswith("def build(v):")
