"""Structured logs: one event name per line, fields as keys, JSON or console format.

Use :func:`get_logger` and call ``log.info("event_name", key=value, ...)``. Never pass secrets; as a
second line of defence every line is scrubbed of ``Bearer <credentials>`` before it is written.
Events a sender can trigger at will go through :class:`ThrottledLog`, so that a misbehaving client
cannot flood the log.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
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


THROTTLE_INTERVAL = 10.0


class ThrottledLog:
    """One event, written at most once per ``interval`` seconds for each key (e.g. a refusal reason).

    The first line of every key is always written; lines held back are counted and reported as
    ``suppressed`` in the next line of that key. Keys must be low-cardinality; beyond ``max_keys``
    the new ones share one budget, so even unbounded keys cannot flood the log.
    """

    def __init__(
        self,
        logger: EventLogger,
        event: str,
        *,
        interval: float = THROTTLE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 64,
    ) -> None:
        self._logger = logger
        self._event = event
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, **fields: Any) -> bool:
        """Write a warning unless this key wrote one less than ``interval`` ago; True if written."""
        return self._emit(self._logger.warning, key, fields)

    def info(self, key: str, **fields: Any) -> bool:
        """Like :meth:`warning`, at info level."""
        return self._emit(self._logger.info, key, fields)

    def exception(self, key: str, **fields: Any) -> bool:
        """Like :meth:`warning`, at error level with the current exception's traceback."""
        return self._emit(self._logger.exception, key, fields)

    def _emit(self, write: Callable[..., None], key: str, fields: dict[str, Any]) -> bool:
        now = self._clock()
        if key not in self._last and len(self._last) >= self._max_keys:
            key = "(other)"
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        write(self._event, **fields, suppressed=self._suppressed.pop(key, 0))
        return True


# Credentials after "Bearer" (any case), wherever they appear: a header echoed in an error
# message, a repr of a request. Tokens are opaque strings up to whitespace, quotes or separators;
# 8 characters at least, so that prose such as "bearer token" stays readable.
_BEARER = re.compile(r"(?i)\b(bearer)(?:\s+|%20|\\t)[^\s\"'\\,;&]{8,}")
# Basic credentials: base64 with a digit, a capital or +/ in it (not prose like "basic settings").
_BASIC = re.compile(r"\b((?i:basic))(?:\s+|%20|\\t)(?=[A-Za-z0-9+/]*[0-9+/A-Z])[A-Za-z0-9+/]{8,}={0,2}")
# A password in a URL (``scheme://user:password@host``).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with every ``Bearer <credentials>`` (and ``Basic``) replaced by ``Bearer ***``, and a
    password in a URL by ``***``."""
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1 ***", text)
    if "basic" in lowered:
        text = _BASIC.sub(r"\1 ***", text)
    if "://" in text and "@" in text:
        text = _USERINFO.sub(r"\1:***@", text)
    return text


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
            line = orjson.dumps(entry, default=str).decode()
        except TypeError:  # e.g. an int beyond 64 bits: a log line is never lost to its encoding
            line = orjson.dumps({key: _plain(value) for key, value in entry.items()}, default=str).decode()
        return redact(line)


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
        return redact(line)


class _StaticFields(logging.Filter):
    """Adds the same fields to every line (an intake worker's number)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self._static = fields

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**self._static, **_fields(record)}
        return True


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """Route otlp_meter's logs (and uvicorn's/grpc's warnings) to ``stream`` in ``fmt``; ``fields``
    are added to every line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    if fields:
        handler.addFilter(_StaticFields(dict(fields)))
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    root.propagate = False
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "grpc"):
        other = logging.getLogger(noisy)
        other.handlers[:] = [handler]
        other.setLevel(logging.WARNING)
        other.propagate = False
