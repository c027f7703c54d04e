"""Loading rules: files, packs and inline rules, in order; every problem names file and YAML path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from otlp_meter.errors import ConfigError
from otlp_meter.rules import RuleModel, RulesConfig, RulesEngine, available_packs, load_rules, read_rule_file
from otlp_meter.rules.loader import PACKS_DIR
from otlp_meter.rules.model import validation_problems

GOOD_RULE = """
  - name: {name}
    match:
      signal: logs
    event:
      type: t
      subject: s
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=[], files=[path]))
    assert info.value.source == str(path)
    return info.value.problems


def rule_text(match: str = "signal: logs", event: str = "type: t\n      subject: s", extra: str = "") -> str:
    return f"""
rules:
  - name: ok
    match:
      signal: logs
    event:
      type: t
      subject: s
  - name: bad
    {extra}
    match:
      {match}
    event:
      {event}
"""


# --- shape problems ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (rule_text(extra="mach: {}"), ("rules[1].mach", "unknown key (did you mean 'match'?)")),
        (rule_text(extra="continue: maybe"), ("rules[1].continue", "must be true or false")),
        (rule_text(match="signal: traces"), ("rules[1].match.signal", "must be one of logs, metrics")),
        (rule_text(match="signal: logs\n      where: {path: a}"), ("rules[1].match.where", "must be a list")),
        (
            rule_text(
                event="type: t\n      subject: s\n      data: {tokens: {path: attributes.n, as: long}}"
            ),
            ("rules[1].event.data.tokens.as", "must be one of int, float, number, string, bool"),
        ),
        (
            rule_text(event="type: t\n      subject: s\n      data: [a, b]"),
            ("rules[1].event.data", "must be a mapping"),
        ),
        (
            rule_text(event="type: t\n      subject: s\n      data: {k: {path: attributes.a, defualt: 1}}"),
            ("rules[1].event.data.k.defualt", "unknown key (did you mean 'default'?)"),
        ),
        (
            rule_text(event="type: t\n      subject: {path: attributes.a, value: x}"),
            ("rules[1].event.subject", "needs exactly one of 'path', 'expr' or 'value'"),
        ),
        (
            rule_text(event="type: t\n      subject: {value: x, default: y}"),
            ("rules[1].event.subject", "'default' and 'optional' only apply with 'path' or 'expr'"),
        ),
        (
            rule_text(event="type: t\n      subject: [attributes.a]"),
            (
                "rules[1].event.subject",
                "a list is not a field; write {path: [...]} for fallbacks or {value: [...]}",
            ),
        ),
        (
            rule_text(event="type: t\n      subject:"),
            (
                "rules[1].event.subject",
                "needs a value: a literal, or a mapping with 'path', 'expr' or 'value'",
            ),
        ),
        (rule_text(event="type: t"), ("rules[1].event.subject", "required")),
        (
            rule_text(event="type: t\n      subject: {path: []}"),
            ("rules[1].event.subject.path", "must be a path or a non-empty list of paths"),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: attributes.a}]"),
            ("rules[1].match.where[0]", "needs exactly one of 'exists', 'equals', 'in' or 'regex'"),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: attributes.a, exists: true, equals: 1}]"),
            ("rules[1].match.where[0]", "needs exactly one of 'exists', 'equals', 'in' or 'regex'"),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: attributes.a, regex: '(unclosed'}]"),
            (
                "rules[1].match.where[0].regex",
                "invalid regular expression: missing ), unterminated subpattern at position 0",
            ),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: attributes.a, in: []}]"),
            ("rules[1].match.where[0].in", "must not be empty"),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: attributes.a, equals: [1]}]"),
            ("rules[1].match.where[0].equals", "must be a string, number or bool"),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: attributes.a, equals: null}]"),
            ("rules[1].match.where[0]", "'equals' needs a value"),
        ),
        (
            rule_text(event="type: t\n      subject: {path: attributes.a, default: 2024-01-01}"),
            (
                "rules[1].event.subject.default",
                "must be a JSON value (string, number, bool, null, list or mapping), "
                "got datetime.date(2024, 1, 1)",
            ),
        ),
        (
            rule_text(event="type: t\n      subject: s\n      data: {n: 100000000000000000000}"),
            ("rules[1].event.data.n.value", "100000000000000000000 is outside the 64-bit integer range"),
        ),
        (
            rule_text(
                event="type: t\n      subject: s\n      data: {n: {path: attributes.n, default: .nan}}"
            ),
            ("rules[1].event.data.n.default", "nan is not a finite number"),
        ),
        (
            "rules:\n  - name: 'has space'\n    match: {signal: logs}\n    event: {type: t, subject: s}\n",
            ("rules[0].name", "must start with a letter or digit and use only letters, digits and _ . : / -"),
        ),
    ],
)
def test_shape_problem(tmp_path: Path, text: str, expected: tuple[str, str]) -> None:
    assert problems(tmp_path, text) == [expected]


# --- problems found when compiling ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            rule_text(event="type: t\n      subject: {path: attribute.user}"),
            (
                "rules[1].event.subject.path",
                "unknown path 'attribute.user'; valid forms: resource.attributes.<key>, "
                "scope.attributes.<key>, attributes.<key>, record.attributes.<key>, record.body.<key>, "
                "scope.name, scope.version, resource.attributes, scope.attributes, attributes, "
                "record.body, record.severity_text, record.severity_number, record.time, "
                "record.observed_time, record.event_name, record.attributes",
            ),
        ),
        (
            rule_text(event="type: t\n      subject: {path: [attributes.a, metric.name]}"),
            ("rules[1].event.subject.path[1]", "'metric.name' is only available in metrics rules"),
        ),
        (
            rule_text(match="signal: logs\n      where: [{path: point.attributes.k, exists: true}]"),
            (
                "rules[1].match.where[0].path",
                "'point.attributes.<key>' paths are only available in metrics rules",
            ),
        ),
        (
            rule_text(event="type: t\n      subject: {path: resource.attributes.}"),
            (
                "rules[1].event.subject.path",
                "'resource.attributes.' needs a key after 'resource.attributes.'",
            ),
        ),
        (
            rule_text(match="signal: logs\n      metric: http.*"),
            ("rules[1].match.metric", "only applies to signal: metrics"),
        ),
        (
            rule_text(event="type: t\n      subject: s\n      data_from: {path: attributes.m, as: int}"),
            ("rules[1].event.data_from.as", "only applies to data fields"),
        ),
        (
            rule_text(event="type: t\n      subject: s\n      data_from: {value: 3}"),
            ("rules[1].event.data_from", "must be a map, got 3"),
        ),
        (
            rule_text(event="type: t\n      subject: {path: attributes.a, as: string}"),
            ("rules[1].event.subject.as", "only applies to data fields"),
        ),
        (
            rule_text(event="type: true\n      subject: s"),
            ("rules[1].event.type", "must be a string, got True"),
        ),
        (
            rule_text(event="type: ''\n      subject: s"),
            ("rules[1].event.type", "must not be empty"),
        ),
        (
            rule_text(event="type: t\n      subject: s\n      time: yesterday"),
            ("rules[1].event.time", "not an RFC 3339 time: 'yesterday'"),
        ),
        (
            rule_text(
                event="type: t\n      subject: s\n      data: {n: {path: attributes.n, default: x, as: int}}"
            ),
            ("rules[1].event.data.n.default", "cannot convert 'x' to int"),
        ),
    ],
)
def test_compile_problem(tmp_path: Path, text: str, expected: tuple[str, str]) -> None:
    assert problems(tmp_path, text) == [expected]


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    text = rule_text(
        match="signal: logs\n      where: [{path: nope, exists: true}]",
        event="type: t\n      subject: {path: nope.either}",
    )
    assert [path for path, _ in problems(tmp_path, text)] == [
        "rules[1].match.where[0].path",
        "rules[1].event.subject.path",
    ]


def test_config_error_message_names_file_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, rule_text(extra="mach: {}"))
    with pytest.raises(ConfigError, match=r"rules\.yaml: rules\[1\]\.mach: unknown key"):
        load_rules(RulesConfig(packs=[], files=[path]))


# --- file problems -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a mapping with a top-level 'rules:' list"),
        ("- a\n- b\n", "must be a mapping with a top-level 'rules:' list"),
        ("rules: [\n", "invalid YAML: "),
        ("rules: []\nrules: []\n", "invalid YAML: "),
        ("rules:\n  - ? {a: 1}\n    : x\n", "invalid YAML: "),
    ],
)
def test_file_problem(tmp_path: Path, text: str, message: str) -> None:
    [(path, got)] = problems(tmp_path, text)
    assert path == "" or (message == "invalid YAML: " and path.startswith("line "))
    assert got.startswith(message)


def test_a_yaml_error_names_its_line_but_never_quotes_it(tmp_path: Path) -> None:
    """The offending line may hold a secret (a token pasted into a rule)."""
    [(path, message)] = problems(tmp_path, 'rules:\n  - token: "hunter2secret" : bad\n')
    assert path.startswith("line 2 column ")
    assert "hunter2secret" not in message


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    text = """
    rules:
      - name: a
        match: {signal: logs}
        match: {signal: metrics}
        event: {type: t, subject: s}
    """
    [(path, message)] = problems(tmp_path, text)
    assert "duplicate key 'match'" in message
    assert "line 5" in f"{path} {message}"


def test_missing_rules_key_and_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path, "rule: []\n") == [
        ("rules", "required"),
        ("rule", "unknown key (did you mean 'rules'?)"),
    ]
    with pytest.raises(ConfigError) as info:
        read_rule_file(tmp_path / "absent.yaml")
    assert info.value.problems == [("", "cannot read rule file: No such file or directory")]


# --- names, packs, order -------------------------------------------------------------------------


def test_duplicate_rule_names_in_one_file(tmp_path: Path) -> None:
    text = "rules:" + GOOD_RULE.format(name="a") + GOOD_RULE.format(name="b") + GOOD_RULE.format(name="a")
    path = write(tmp_path, text)
    assert problems(tmp_path, text) == [
        ("rules[2].name", f"duplicate rule name 'a' (first defined at {path} rules[0])")
    ]


def test_duplicate_rule_names_across_files_and_packs(tmp_path: Path) -> None:
    first = write(tmp_path, "rules:" + GOOD_RULE.format(name="mine"), "first.yaml")
    second = write(tmp_path, "rules:" + GOOD_RULE.format(name="mine"), "second.yaml")
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=[], files=[first, second]))
    assert (info.value.source, info.value.problems) == (
        str(second),
        [("rules[0].name", f"duplicate rule name 'mine' (first defined at {first} rules[0])")],
    )

    clash = write(tmp_path, "rules:" + GOOD_RULE.format(name="genai-input-tokens"), "clash.yaml")
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=["genai"], files=[clash]))
    assert info.value.source == str(PACKS_DIR / "genai.yaml")


def test_unknown_pack_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_rules(RulesConfig(packs=["genai", "kafka"]))
    assert info.value.problems == [
        ("rules.packs[1]", "unknown pack 'kafka'; available: genai, http, kubernetes, prometheus, runai, s3")
    ]
    assert available_packs() == ["genai", "http", "kubernetes", "prometheus", "runai", "s3"]


def test_evaluation_order_is_inline_then_files_then_packs(tmp_path: Path) -> None:
    a = write(tmp_path, "rules:" + GOOD_RULE.format(name="file-a"), "a.yaml")
    b = write(tmp_path, "rules:" + GOOD_RULE.format(name="file-b"), "b.yaml")
    inline = RuleModel.model_validate(
        {"name": "inline", "match": {"signal": "logs"}, "event": {"type": "t", "subject": "s"}}
    )
    config = RulesConfig(packs=["http"], files=[b, a], inline=[inline])
    assert RulesEngine.from_config(config).rule_names == [
        "inline",
        "file-b",
        "file-a",
        "http-api-call",
        "http-server-requests-metric",
    ]


def test_inline_rule_problems_are_paths_in_the_main_config() -> None:
    inline = RuleModel.model_validate(
        {
            "name": "x",
            "match": {"signal": "metrics"},
            "event": {"type": "t", "subject": {"path": "record.body"}},
        }
    )
    with pytest.raises(ConfigError) as info:
        RulesEngine.from_config(RulesConfig(packs=[], inline=[inline]))
    assert (info.value.source, info.value.problems) == (
        "",
        [("rules.inline[0].event.subject.path", "'record.body' is only available in logs rules")],
    )
    with pytest.raises(ConfigError) as info:
        RulesEngine.from_config(RulesConfig(packs=[], inline=[inline]), config_key="pipelines.main.rules")
    assert info.value.problems[0][0] == "pipelines.main.rules.inline[0].event.subject.path"


def test_rules_config_is_strict_and_reports_yaml_paths() -> None:
    raw: dict[str, Any] = {
        "pack": [],
        "inline": [{"name": "x", "match": {"signal": "logs"}, "event": {"type": "t"}}],
    }
    with pytest.raises(ValidationError) as info:
        RulesConfig.model_validate(raw)
    assert validation_problems(info.value, "rules") == [
        ("rules.inline[0].event.subject", "required"),
        ("rules.pack", "unknown key (did you mean 'packs'?)"),
    ]


def test_rules_config_defaults() -> None:
    config = RulesConfig()
    assert (config.packs, config.files, config.inline, config.subjects) == (
        ["genai", "http", "kubernetes", "prometheus", "runai", "s3"],
        [],
        [],
        {},
    )
    assert (config.cumulative.initial_value, config.cumulative.max_streams) == ("auto", 100_000)
    assert all(field.description for field in RulesConfig.model_fields.values())


def test_packs_dir_is_the_repository_rules_dir() -> None:
    assert (PACKS_DIR / "genai.yaml").read_text() == (
        Path(__file__).parents[3] / "rules" / "genai.yaml"
    ).read_text()
