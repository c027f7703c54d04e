"""A rule with ``reject`` instead of ``event`` dead-letters every record it takes, with its reason."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.errors import ConfigError
from otlp_meter.rules import RulesConfig, load_rules
from tests.unit.rules.otlp import RECEIVED, engine, events, log_record, logs_request, reasons


def reject_rule(reason: Any, name: str = "quarantine") -> dict[str, Any]:
    return {
        "name": name,
        "match": {"signal": "logs", "where": [{"path": "attributes.bad", "exists": True}]},
        "reject": reason,
    }


def keep_rule() -> dict[str, Any]:
    return {"name": "keep", "match": {"signal": "logs"}, "event": {"type": "usage", "subject": "acme"}}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("held for review", "held for review"),
        ({"path": "attributes.bad"}, "a.csv line 3: 2 fields"),
        ({"path": "attributes.missing"}, "rejected by the rule"),
        ({"path": "attributes.missing", "default": "no reason given"}, "no reason given"),
        ({"path": "attributes.count"}, "7"),
    ],
)
def test_the_reason_is_a_literal_a_path_or_its_default(reason: Any, expected: str) -> None:
    record = log_record({"bad": "a.csv line 3: 2 fields", "count": 7})
    result = engine(reject_rule(reason), keep_rule()).map_logs(logs_request(record), RECEIVED)
    assert result.events == []
    assert [r.rule for r in result.rejected] == ["quarantine"]
    assert reasons(result) == [expected]
    assert result.rejected_records == 1


def test_records_the_reject_rule_does_not_take_go_on_to_later_rules() -> None:
    request = logs_request(log_record({"bad": "x"}), log_record({"fine": 1}))
    result = engine(reject_rule("no"), keep_rule()).map_logs(request, RECEIVED)
    assert [e["type"] for e in events(result)] == ["usage"]
    assert reasons(result) == ["no"]


def test_the_reason_may_be_an_expression() -> None:
    rule = reject_rule({"expr": '"bad row: " + attributes["bad"]'})
    result = engine(rule).map_logs(logs_request(log_record({"bad": "x"})), RECEIVED)
    assert reasons(result) == ["bad row: x"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    "body",
    [
        "    event: {type: t, subject: s}\n    reject: no\n",
        "",
    ],
    ids=["both", "neither"],
)
def test_a_rule_needs_exactly_one_of_event_and_reject(tmp_path: Path, body: str) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    match: {signal: logs}\n" + body)
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=[], files=[path]))
    assert info.value.problems == [
        ("rules[0]", "a rule needs exactly one of 'event' (make an event) or 'reject' (dead-letter)")
    ]


def test_a_bad_reason_path_is_reported_at_reject(tmp_path: Path) -> None:
    rules = "rules:\n  - name: r\n    match: {signal: logs}\n    reject: {path: point.value}\n"
    path = write(tmp_path, rules)
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=[], files=[path]))
    [(where, _message)] = info.value.problems
    assert where == "rules[0].reject.path"
