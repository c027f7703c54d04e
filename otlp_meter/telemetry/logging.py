"""Structured logs: one event name per line, fields as keys, JSON or console format.

Use :func:`get_logger` and call ``log.info("event_name", key=value, ...)``. Never pass secrets.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_ROOT = "otlp_meter"


class EventLogger:
    """A thin wrapper over a stdlib logger that takes an event name and keyword fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=True)


def get_logger(component: str) -> EventLogger:
    """The logger of one component (``otlp_meter.<component>``)."""
    return EventLogger(f"{_ROOT}.{component}")


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


_RESERVED = ("ts", "level", "event", "logger", "exception")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event``, ``logger``, then the fields.

    A field named like one of those keys is written as ``field.<name>`` rather than replacing it.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": _level(record),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in _fields(record).items():
            entry[f"field.{key}" if key in _RESERVED else str(key)] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # e.g. an int beyond 64 bits: a log line is never lost to its encoding
            return orjson.dumps({key: _plain(value) for key, value in entry.items()}, default=str).decode()


def _plain(value: Any) -> Any:
    """``value`` if orjson can write it, else its text."""
    try:
        orjson.dumps(value, default=str)
    except TypeError:
        return str(value)
    return value


def _level(record: logging.LogRecord) -> str:
    return record.levelname.lower().replace("warning", "warn")


def _console_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return orjson.dumps(text).decode()  # quoted so that key=value pairs stay unambiguous
    return text


class ConsoleFormatter(logging.Formatter):
    """For people: ``<ts> <LEVEL> <event> key=value ...``, values with spaces quoted."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{key}={_console_value(value)}" for key, value in _fields(record).items())
        line = f"{_timestamp(record)} {_level(record).upper():<5} {record.getMessage()} {pairs}".rstrip()
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route otlp_meter's logs (and uvicorn's/grpc's warnings) to ``stream`` in ``fmt``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    root.propagate = False
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "grpc"):
        other = logging.getLogger(noisy)
        other.handlers[:] = [handler]
        other.setLevel(logging.WARNING)
        other.propagate = False
