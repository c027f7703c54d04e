"""The configuration file: YAML, ``${ENV}`` expansion, every mistake reported with its YAML path and
never with its value (a secret in the wrong field must not reach ``check`` output or logs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.config import Config, expand_env, load_config, parse_config
from otlp_meter.config_types import parse_byte_size, parse_duration
from otlp_meter.errors import ConfigError
from otlp_meter.rules import RulesEngine

SECRET = "sk_live_9f8e7d6c5b4a"
RULE_FILE = """
rules:
  - name: my-rule
    match: {signal: logs}
    event: {type: t, subject: s}
"""


def problems(document: Any, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env or {})
    return dict(caught.value.problems)


def nested(path: str, value: Any) -> dict[str, Any]:
    """``nested("a.b.c", 1)`` → ``{"a": {"b": {"c": 1}}}``."""
    for key in reversed(path.split(".")):
        value = {key: value}
    result: dict[str, Any] = value
    return result


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- ${ENV} -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expanded"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A}${B}", {"A": "x", "B": "y"}, "xy"),
        ("${A}", {"A": ""}, ""),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": ""}, "fallback"),
        ("${A:-fallback}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A-fallback}", {}, "fallback"),
        ("${A-fallback}", {"A": ""}, ""),
        ("${A:-http://host:8080/x}", {}, "http://host:8080/x"),
        ("$$", {}, "$"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("$$$${A}", {"A": "x"}, "$${A}"),
        ("price: $5", {}, "price: $5"),
        ("$HOME stays", {"HOME": "/root"}, "$HOME stays"),
    ],
)
def test_env_expansion(text: str, env: dict[str, str], expanded: str) -> None:
    assert expand_env(text, env) == expanded


def test_env_expansion_reaches_every_string_but_not_keys_or_other_scalars() -> None:
    document = {"a": ["${X}", {"${X}": "${X}"}], "n": 5, "b": True, "none": None}

    assert expand_env(document, {"X": "v"}) == {"a": ["v", {"${X}": "v"}], "n": 5, "b": True, "none": None}


def test_expanded_values_are_then_validated_as_their_field_type() -> None:
    config = parse_config(
        {"exporter": {"batch": {"max_events": "${MAX}", "max_bytes": "${SIZE:-2MiB}"}}}, {"MAX": "500"}
    )

    assert (config.exporter.batch.max_events, config.exporter.batch.max_bytes) == (500, 2 * 1024 * 1024)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"exporter": {"openmeter": {"token": "${OPENMETER_TOKEN}"}}}, "exporter.openmeter.token"),
        ({"rules": {"files": ["a.yaml", "${RULES_DIR}/b.yaml"]}}, "rules.files[1]"),
        ({"rules": {"inline": [{"event": {"data": {"k": "${X}"}}}]}}, "rules.inline[0].event.data.k"),
    ],
)
def test_a_missing_variable_is_an_error_at_its_yaml_path(document: dict[str, Any], path: str) -> None:
    found = problems(document)

    assert list(found) == [path]
    assert "is not set" in found[path]


def test_a_missing_variable_names_the_variable_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  directory: ${DATA_DIR}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: queue.directory: environment variable DATA_DIR is not set")


# -- unknown keys and wrong types -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "bogus",
        "receivers.bogus",
        "receivers.otlp.bogus",
        "receivers.otlp.grpc.bogus",
        "receivers.otlp.http.bogus",
        "rules.bogus",
        "queue.bogus",
        "exporter.bogus",
        "exporter.openmeter.bogus",
        "exporter.batch.bogus",
        "exporter.retry.bogus",
        "telemetry.bogus",
        "telemetry.logs.bogus",
        "service.bogus",
    ],
)
def test_unknown_keys_are_errors_with_their_yaml_path(path: str) -> None:
    assert problems(nested(path, 1)) == {path: "unknown key"}


def test_an_unknown_key_in_an_inline_rule_has_its_list_index() -> None:
    rule = {"name": "r", "match": {"signal": "logs"}, "event": {"type": "t", "subject": "s", "colour": 1}}

    assert "rules.inline[0].event.colour" in problems({"rules": {"inline": [rule]}})


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"queue": {"max_bytes": "big", "nope": 1}, "service": {"shutdown_timeout": "soon"}})

    assert set(found) == {"queue.max_bytes", "queue.nope", "service.shutdown_timeout"}


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("exporter.batch.max_events", "lots", "integer"),
        ("exporter.batch.max_events", 0, "greater than or equal to 1"),
        ("receivers.otlp.grpc.enabled", "maybe", "bool"),
        ("telemetry.logs.level", "loud", "'debug', 'info', 'warn' or 'error'"),
        ("queue.max_bytes", "a lot", "size"),
        ("service.shutdown_timeout", "soon", "duration"),
        ("rules.files", "one.yaml", "list"),
        ("receivers", ["grpc"], "dictionary"),
        ("receivers.otlp.grpc.endpoint", "127.0.0.1:99999", "the port must be 0 to 65535"),
        ("receivers.otlp.http.endpoint", "localhost", "must be host:port"),
        ("telemetry.endpoint", "[::1:8888", "brackets"),
        ("queue.max_bytes", "1.7", "not a whole number of bytes"),
        ("exporter.openmeter.timeout", 0, "greater than 0"),
        ("receivers.otlp.http.read_timeout", 0, "greater than 0"),
        ("receivers.events_api.max_request_body_size", 0, "greater than 0"),
    ],
)
def test_wrong_types_say_what_is_expected(path: str, value: Any, says: str) -> None:
    found = problems(nested(path, value))

    assert says in found[path]


@pytest.mark.parametrize(
    "document",
    [
        {"exporter": {"batch": {"max_events": SECRET}}},
        {"queue": {"max_bytes": SECRET}},
        {"queue": {"dedupe_window": SECRET}},
        {"service": {"shutdown_timeout": SECRET}},
        {"telemetry": {"logs": {"level": SECRET}}},
        {"exporter": {"openmeter": {"url": SECRET}}},
        {"exporter": {"openmeter": {"url": f"ftp://user:{SECRET}@host"}}},
        {"exporter": {"openmeter": {"token": {"nested": SECRET}}}},
        {"receivers": {"otlp": {"grpc": {"max_recv_msg_size": [SECRET]}}}},
    ],
)
def test_error_messages_never_contain_the_offending_value(document: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, {})

    assert caught.value.problems
    assert SECRET not in str(caught.value)
    assert all(SECRET not in message for _, message in caught.value.problems)


def test_a_secret_from_the_environment_in_the_wrong_field_is_not_echoed_either() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"exporter": {"openmeter": {"url": "${OPENMETER_TOKEN}"}}}, {"OPENMETER_TOKEN": SECRET})

    assert "exporter.openmeter.url" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- the file ---------------------------------------------------------------------------------------


def test_backoff_that_starts_above_its_cap_is_refused() -> None:
    found = problems({"exporter": {"retry": {"initial_backoff": "10m", "max_backoff": "1s"}}})
    assert "initial_backoff must not exceed max_backoff" in found["exporter.retry"]


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b'queue: {directory: "caf\xe9"}\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, {})


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_the_default_configuration(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text), {}) == Config()


def test_no_file_is_the_default_configuration() -> None:
    assert load_config(None, {}) == Config()


@pytest.mark.parametrize("text", ["- queue\n- exporter\n", "just text\n", "42\n"])
def test_a_document_that_is_not_a_mapping_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {})

    assert caught.value.problems == [("", "the config must be a mapping of sections")]


def test_invalid_yaml_is_reported_with_its_line_and_without_the_line_itself(tmp_path: Path) -> None:
    path = write(tmp_path, f'queue:\n  max_bytes: 1GiB\nexporter:\n  openmeter:\n    token: "{SECRET}\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    [(where, message)] = caught.value.problems
    assert where.startswith("line ")
    assert message.startswith("invalid YAML: ")
    assert SECRET not in str(caught.value)


def test_the_line_of_a_yaml_error_is_the_line_of_the_mistake(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  max_bytes: 1GiB\n  sync: [true\nservice: {}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    [(where, _)] = caught.value.problems
    line = int(where.split()[1])
    assert 3 <= line <= 4


def test_a_duplicate_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  max_bytes: 1GiB\n  max_bytes: 2GiB\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    [(where, message)] = caught.value.problems
    assert where.startswith("line 3")
    assert "duplicate key 'max_bytes'" in message


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "queue: !!python/object/apply:os.system ['true']\n")

    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path, {})


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", {})


# -- rule files are relative to the config file -----------------------------------------------------


def test_relative_rule_files_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc", RULE_FILE, "rules/mine.yaml")
    absolute = write(tmp_path, RULE_FILE.replace("my-rule", "other-rule"), "elsewhere/other.yaml")
    path = write(tmp_path / "etc", f"rules:\n  packs: []\n  files: [rules/mine.yaml, {absolute}]\n")
    monkeypatch.chdir(tmp_path)  # not the config's directory

    config = load_config(path, {})

    assert config.rules.files == [tmp_path / "etc" / "rules" / "mine.yaml", absolute]
    assert RulesEngine.from_config(config.rules).rule_names == ["my-rule", "other-rule"]


def test_rule_file_paths_from_the_environment_resolve_the_same_way(tmp_path: Path) -> None:
    write(tmp_path, RULE_FILE, "rules/mine.yaml")
    path = write(tmp_path, "rules:\n  files: ['${RULES:-rules}/mine.yaml']\n")

    assert load_config(path, {}).rules.files == [tmp_path / "rules" / "mine.yaml"]


def test_parse_config_without_a_file_leaves_rule_paths_alone() -> None:
    assert parse_config({"rules": {"files": ["r.yaml"]}}, {}).rules.files == [Path("r.yaml")]


# -- durations and sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("5", 5.0),
        ("1.5", 1.5),
        ("5s", 5.0),
        ("5 s", 5.0),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("100ns", 1e-7),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "s", "5x", "-5s", "5 ss", "1 5s", "5s 3", "five", True, None, [], -1, math.nan, math.inf]
)
def test_invalid_durations(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        (2048.0, 2048),
        ("512", 512),
        ("10B", 10),
        ("1KB", 1000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1KiB", 1024),
        ("64MiB", 64 * 1024**2),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("64mib", 64 * 1024**2),
        ("512Ki", 512 * 1024),
        ("2Gi", 2 * 1024**3),
        ("64m", 64 * 1024**2),
        ("1.5GiB", 1536 * 1024**2),
        (" 2 KB ", 2000),
    ],
)
def test_byte_sizes(value: Any, size: int) -> None:
    assert parse_byte_size(value) == size


@pytest.mark.parametrize("value", ["", "MiB", "64XB", "-1", -1, 1.5, True, None, math.nan, "1e3"])
def test_invalid_byte_sizes(value: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_byte_size(value)


@pytest.mark.parametrize("parse", [parse_duration, parse_byte_size])
def test_parse_errors_never_quote_the_value(parse: Any) -> None:
    with pytest.raises(ValueError, match="expected a") as caught:
        parse(SECRET)

    assert SECRET not in str(caught.value)


def test_durations_and_sizes_in_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "queue:\n  max_bytes: 512MiB\n  dedupe_window: 1h30m\nservice:\n  shutdown_timeout: 1500ms\n",
    )

    config = load_config(path, {})

    assert (config.queue.max_bytes, config.queue.dedupe_window) == (512 * 1024**2, 5400.0)
    assert config.service.shutdown_timeout == 1.5


def test_the_strict_loader_reads_ordinary_yaml_like_safe_load(tmp_path: Path) -> None:
    text = "queue:\n  directory: &dir /data\n  sync: false\nexporter:\n  file: {path: /data/out.jsonl}\n"
    path = write(tmp_path, text)

    config = load_config(path, {})

    assert (config.queue.directory, config.queue.sync) == (Path("/data"), False)
    assert config.exporter.file.path == Path("/data/out.jsonl")


# -- service.workers ----------------------------------------------------------------------------------


def test_one_process_takes_intake_unless_workers_says_more() -> None:
    assert parse_config({}, {}).service.workers == 1
    assert parse_config({"service": {"workers": "${WORKERS:-4}"}}, {}).service.workers == 4


@pytest.mark.parametrize("workers", [0, -1, 65, 1.5, "many"])
def test_workers_outside_1_to_64_are_refused_with_their_path(workers: Any) -> None:
    assert "service.workers" in problems({"service": {"workers": workers}})


def test_workers_parse_the_text_the_primary_read_not_the_file_again(tmp_path: Path) -> None:
    from otlp_meter.workers import ConfigDocument

    path = write(tmp_path, "service:\n  workers: 3\nrules:\n  files: [my.yaml]\n")
    document = ConfigDocument(path.read_text(), path)
    path.write_text("service:\n  workers: 1\n")  # edited after the primary started

    config = document.parse({})

    assert config.service.workers == 3
    assert config.rules.files == [tmp_path / "my.yaml"]  # relative to the file, as when it was read


def test_decimal_sizes_are_exact() -> None:
    config = parse_config({"queue": {"max_bytes": "4.1GB", "dead_letter_max_bytes": "1.5KiB"}}, {})
    assert (config.queue.max_bytes, config.queue.dead_letter_max_bytes) == (4_100_000_000, 1536)
