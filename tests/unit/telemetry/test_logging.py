"""Structured logs: one line per event, ``ts``/``level``/``event``/``logger`` then the fields, as JSON
for machines or as ``key=value`` text for people."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from otlp_meter.telemetry.logging import ThrottledLog, configure_logging, get_logger, redact

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TOUCHED = ("otlp_meter", "uvicorn", "uvicorn.error", "uvicorn.access", "grpc")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers; put them back after each test."""
    saved = {}
    for name in TOUCHED:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_ts_level_event_logger_and_the_fields() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    get_logger("queue").info("queue_open", events=3, path="/data/queue", ok=True)

    [line] = json_lines(stream)
    assert list(line)[:4] == ["ts", "level", "event", "logger"]
    assert TS.match(line["ts"])
    assert line == {
        "ts": line["ts"],
        "level": "info",
        "event": "queue_open",
        "logger": "otlp_meter.queue",
        "events": 3,
        "path": "/data/queue",
        "ok": True,
    }


def test_levels_are_lower_case_warn_not_warning_and_below_the_threshold_is_dropped() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = get_logger("x")

    log.debug("hidden")
    log.info("shown")
    log.warning("careful")
    log.error("broken")

    assert [(line["event"], line["level"]) for line in json_lines(stream)] == [
        ("shown", "info"),
        ("careful", "warn"),
        ("broken", "error"),
    ]


def test_debug_level_shows_debug() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)

    get_logger("x").debug("detail", n=1)

    assert json_lines(stream)[0]["level"] == "debug"


def test_an_exception_is_logged_with_its_traceback() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    try:
        raise ValueError("bad thing")
    except ValueError:
        get_logger("x").exception("step_failed", step="commit")

    [line] = json_lines(stream)
    assert line["event"] == "step_failed"
    assert line["step"] == "commit"
    assert "ValueError: bad thing" in line["exception"]


def test_exception_outside_an_except_block_adds_no_empty_traceback() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    get_logger("x").exception("odd")

    assert "exception" not in json_lines(stream)[0]


def test_fields_cannot_overwrite_the_standard_keys() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    get_logger("x").info("real_event", level="custom", logger="other", ts="then")

    [line] = json_lines(stream)
    assert (line["level"], line["logger"], line["event"]) == ("info", "otlp_meter.x", "real_event")
    assert TS.match(line["ts"])
    assert (line["field.level"], line["field.logger"], line["field.ts"]) == ("custom", "other", "then")


def test_values_json_cannot_hold_are_written_as_text_and_the_line_is_never_lost() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    get_logger("x").info("odd_values", path=io, big=2**70, items=[1, 2], mapping={"a": 1})

    [line] = json_lines(stream)
    assert line["big"] == str(2**70)
    assert line["path"].startswith("<module 'io'")
    assert (line["items"], line["mapping"]) == ([1, 2], {"a": 1})


def test_console_lines_are_readable_key_value_text() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)

    get_logger("exporter").warning("delivery_failed", status=503, error="connection refused", empty="")

    line = stream.getvalue().rstrip("\n")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN  delivery_failed ", line)
    assert line.endswith('status=503 error="connection refused" empty=""')
    assert "\n" not in line


def test_console_shows_tracebacks_below_the_line() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)

    try:
        raise KeyError("k")
    except KeyError:
        get_logger("x").exception("lookup_failed")

    first, *rest = stream.getvalue().splitlines()
    assert "ERROR lookup_failed" in first
    assert any("KeyError" in line for line in rest)


def test_configure_logging_replaces_its_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", second)

    get_logger("x").info("once")

    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_library_warnings_go_through_the_same_handler() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    logging.getLogger("uvicorn.error").info("chatty")
    logging.getLogger("uvicorn.error").warning("worth seeing")

    [line] = json_lines(stream)
    assert (line["event"], line["logger"], line["level"]) == ("worth seeing", "uvicorn.error", "warn")


# --- throttling: events a sender can cause at will ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_throttled_event_is_written_once_per_interval_per_key_with_the_count_held_back() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    clock = Clock()
    refusals = ThrottledLog(get_logger("receiver"), "receiver_refused", interval=10.0, clock=clock)

    for _ in range(1000):  # a client hammering with malformed requests
        refusals.warning("malformed", reason="malformed")
    refusals.warning("queue_full", reason="queue_full")  # another reason has its own budget
    clock.now = 10.0
    refusals.warning("malformed", reason="malformed")

    lines = [(line["reason"], line["suppressed"]) for line in json_lines(stream)]
    assert lines == [("malformed", 0), ("queue_full", 0), ("malformed", 999)]


def test_unbounded_keys_share_one_budget_beyond_max_keys() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = ThrottledLog(get_logger("x"), "odd", interval=10.0, clock=Clock(), max_keys=2)

    written = [log.info(f"key-{n}", n=n) for n in range(100)]

    assert written[:3] == [True, True, True]
    assert not any(written[3:])
    assert len(json_lines(stream)) == 3


# --- secrets: never written, even when a caller passes one by mistake -----------------------------


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_bearer_credentials_are_scrubbed_from_every_line(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream)

    get_logger("x").warning(
        "upstream_said",
        detail="401: header was 'Authorization: Bearer s3cr3t-t0ken-value'",
        auth="bearer tokens",
    )
    try:
        raise RuntimeError("request failed with Bearer another-secret-123")
    except RuntimeError:
        get_logger("x").exception("request_failed")

    text = stream.getvalue()
    assert "s3cr3t-t0ken-value" not in text
    assert "another-secret-123" not in text
    assert "Bearer ***" in text
    assert "bearer tokens" in text  # prose stays readable


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("Authorization: Bearer abc.def-123_456", "Authorization: Bearer ***"),
        ("bearer   lower-case-token, next", "bearer ***, next"),
        ("url?auth=Bearer%20token-in-a-url&x=1", "url?auth=Bearer ***&x=1"),
        ("with bearer token", "with bearer token"),
        ("nothing to see", "nothing to see"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
        ("basic settings applied", "basic settings applied"),
        ("GET http://user:hunter2pw@host:9090/api failed", "GET http://user:***@host:9090/api failed"),
        ("mail to a@b, see https://example.com/x", "mail to a@b, see https://example.com/x"),
    ],
)
def test_redact(text: str, scrubbed: str) -> None:
    assert redact(text) == scrubbed
