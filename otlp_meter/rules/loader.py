"""Find, read, validate and compile rules: inline rules, rule files, shipped packs — in that order.

User rules come before shipped ones so a user rule can take a record before a pack does. Every
problem is reported as a ``ConfigError`` whose ``source`` is the file (empty for inline rules,
which live in the main config) and whose paths are YAML paths inside it, e.g.
``rules[2].event.data.tokens.as``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from otlp_meter.config_types import StrictYamlLoader, yaml_problem
from otlp_meter.errors import ConfigError
from otlp_meter.rules.compile import CompiledRule, compile_rule
from otlp_meter.rules.model import FieldSpec, RuleFile, RuleModel, RulesConfig, validation_problems

PACKS_DIR = Path(__file__).resolve().parent.parent / "packs"
"""Where the shipped rule packs live (``otlp_meter/packs`` → the repository's ``rules/``)."""


def available_packs() -> list[str]:
    """Names of the shipped rule packs."""
    return sorted(path.stem for path in PACKS_DIR.glob("*.yaml"))


def pack_path(name: str) -> Path:
    """The file of the shipped pack ``name`` (which may not exist)."""
    return PACKS_DIR / f"{name}.yaml"


def read_rule_text(path: Path) -> str:
    """The text of one rule file; a file that cannot be read raises ``ConfigError`` with ``source=path``."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read rule file: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"cannot read rule file: not UTF-8 (byte {exc.start})")], str(path)) from None


def rule_file_texts(config: RulesConfig) -> dict[str, str]:
    """The text of each of ``config.files``, by path: what :func:`load_rules` compiles when given
    them (an intake worker compiles what its primary read, even after the files changed)."""
    return {str(path): read_rule_text(path) for path in config.files}


def read_rule_file(path: Path, text: str | None = None) -> list[RuleModel]:
    """Read (unless ``text`` is given) and validate one rule file; problems raise ``ConfigError``
    with ``source=path``."""
    source = str(path)
    if text is None:
        text = read_rule_text(path)
    try:
        document = yaml.load(text, Loader=StrictYamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc)], source) from None
    if not isinstance(document, dict):
        raise ConfigError([("", "must be a mapping with a top-level 'rules:' list")], source)
    try:
        return RuleFile.model_validate(document).rules
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc), source) from None


def _with_subject(rules: list[RuleModel], subject: FieldSpec | None) -> list[RuleModel]:
    """The pack's rules with ``subject`` (from ``rules.subjects``) instead of their own."""
    if subject is None:
        return rules
    return [
        rule
        if rule.event is None
        else rule.model_copy(update={"event": rule.event.model_copy(update={"subject": subject})})
        for rule in rules
    ]


def _check_subjects(config: RulesConfig, config_key: str) -> None:
    """Compile each subject override for its pack's signals; problems name ``rules.subjects.<pack>``."""
    problems: list[tuple[str, str]] = []
    for name, subject in config.subjects.items():
        signals = sorted({rule.match.signal for rule in read_rule_file(pack_path(name))})
        for signal in signals:
            probe = RuleModel.model_validate(
                {"name": "probe", "match": {"signal": signal}, "event": {"type": "t", "subject": subject}}
            )
            try:
                compile_rule(probe)
            except ConfigError as exc:
                where = f"{config_key}.subjects.{name}"
                problems += [(where + path.removeprefix("event.subject"), msg) for path, msg in exc.problems]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))


def load_rules(
    config: RulesConfig, *, config_key: str = "rules", texts: Mapping[str, str] | None = None
) -> list[CompiledRule]:
    """Compile ``config``'s rules in evaluation order: inline, then files, then packs.

    ``config_key`` is where ``config`` sits in the main config; it prefixes the problem paths of
    inline rules and packs. Rule names must be unique across everything loaded. ``texts``: the rule
    files' texts by path (:func:`rule_file_texts`), instead of reading them now.
    """
    texts = texts or {}
    known = available_packs()
    unknown = [
        (f"{config_key}.packs[{i}]", f"unknown pack '{name}'; available: {', '.join(known) or 'none'}")
        for i, name in enumerate(config.packs)
        if name not in known
    ]
    unknown += [
        (f"{config_key}.subjects.{name}", f"'{name}' is not in {config_key}.packs")
        for name in config.subjects
        if name not in config.packs
    ]
    if unknown:
        raise ConfigError(unknown)
    _check_subjects(config, config_key)
    groups: list[tuple[Sequence[RuleModel], str, str]] = [(config.inline, "", f"{config_key}.inline")]
    groups += [(read_rule_file(path, texts.get(str(path))), str(path), "rules") for path in config.files]
    groups += [
        (
            _with_subject(read_rule_file(pack_path(name)), config.subjects.get(name)),
            str(pack_path(name)),
            "rules",
        )
        for name in config.packs
    ]

    compiled: list[CompiledRule] = []
    first_seen: dict[str, str] = {}
    for rules, source, prefix in groups:
        problems: list[tuple[str, str]] = []
        for i, rule in enumerate(rules):
            where = f"{prefix}[{i}]"
            origin = f"{source} {where}" if source else where
            if rule.name in first_seen:
                problems.append(
                    (
                        f"{where}.name",
                        f"duplicate rule name '{rule.name}' (first defined at {first_seen[rule.name]})",
                    )
                )
            else:
                first_seen[rule.name] = origin
            try:
                compiled.append(compile_rule(rule, where=where, source=source, origin=origin))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems, source)
    return compiled
