"""Value conversions for event fields: ``as:`` coercions, event strings and RFC 3339 times.

Every converter takes a plain Python value (as :mod:`paths` produces them) and returns the
converted value or raises ``ValueError`` with a short reason; the caller turns that into a
rejection naming the field. They never raise anything else for any input.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import math
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from otlp_meter.events import format_time, rfc3339_millis

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # int64 and uint64 both fit in JSON for OpenMeter
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_FIRST_SEGMENT = re.compile(r"[^/?#]*")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""Numeric text as JSON and most producers write it: ASCII digits only (``int()`` and ``float()``
would also take ``1_000``, full-width digits, ``nan`` and ``infinity``)."""
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def show(value: Any, limit: int = 60) -> str:
    """``repr`` for messages, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cannot(value: Any, target: str, why: str = "") -> ValueError:
    return ValueError(f"cannot convert {show(value)} to {target}{f' ({why})' if why else ''}")


def _checked_int(value: int, original: Any, target: str = "int") -> int:
    if not _INT_MIN <= value <= _INT_MAX:
        raise _cannot(original, target, "out of 64-bit range")
    return value


def _parse_number(value: str, target: str) -> int | Decimal:
    """Numeric text, exactly: an int, or a Decimal (a float would round ``…993.0`` and ``….5``)."""
    text = value.strip()
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _NUMBER_TEXT.fullmatch(text) is None:
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise _cannot(value, target, "not finite")
        raise _cannot(value, target)
    return Decimal(text)


def _whole(number: Decimal) -> bool:
    return number == number.to_integral_value()


def as_int(value: Any) -> int:
    """Ints as they are, whole floats and numeric text as ints; fractions are refused, not cut."""
    kind = type(value)
    if kind is int:
        return _checked_int(value, value)
    if kind is str:
        number = _parse_number(value, "int")
        if isinstance(number, int):
            return _checked_int(number, value)
        if not _whole(number):
            raise _cannot(value, "int", "not a whole number")
        if number.adjusted() > 20:  # far out of range: do not build a huge int
            raise _cannot(value, "int", "out of 64-bit range")
        return _checked_int(int(number), value)
    if kind is float:
        if not value.is_integer():
            raise _cannot(value, "int", "not a whole number")
        return _checked_int(int(value), value)
    raise _cannot(value, "int")


def as_float(value: Any) -> float:
    """Numbers and numeric text as a finite float."""
    kind = type(value)
    try:
        if kind is float or kind is int:
            number = float(value)
        elif kind is str:
            number = float(_parse_number(value, "float"))  # Decimal → float: rounds once, inf if huge
        else:
            raise _cannot(value, "float")
    except OverflowError:
        raise _cannot(value, "float", "not finite") from None
    if not math.isfinite(number):
        raise _cannot(value, "float", "not finite")
    return number


def as_number(value: Any) -> int | float:
    """An int when the value is whole (``40``, ``40.0``, ``"40"``), else a finite float."""
    original, kind = value, type(value)
    if kind is str:
        parsed = _parse_number(value, "number")
        if type(parsed) is Decimal:
            if _whole(parsed) and parsed.adjusted() <= 20 and _INT_MIN <= int(parsed) <= _INT_MAX:
                return int(parsed)  # exactly, however many digits
            value = float(parsed)
        else:
            value = parsed
        kind = type(value)
    if kind is int:
        return _checked_int(value, original, "number")
    if kind is float:
        if not math.isfinite(value):
            raise _cannot(original, "number", "not finite")
        if value.is_integer() and _INT_MIN <= value <= _INT_MAX:
            return int(value)
        return float(value)
    raise _cannot(original, "number")


def as_string(value: Any) -> str:
    """Text as is; numbers in decimal; bools as ``true``/``false``. Lists and maps are refused."""
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    raise _cannot(value, "string")


def as_bool(value: Any) -> bool:
    """Bools; ints 0/1; text true/false, yes/no, on/off, 1/0 (any case)."""
    kind = type(value)
    if kind is bool:
        return bool(value)
    if kind is int and value in (0, 1):
        return bool(value)
    if kind is str:
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _cannot(value, "bool")


COERCIONS: dict[str, Callable[[Any], Any]] = {
    "int": as_int,
    "float": as_float,
    "number": as_number,
    "string": as_string,
    "bool": as_bool,
}


def event_string(value: Any) -> str:
    """``type``/``subject``/``source``/``id``: a non-empty string; numbers become their text."""
    kind = type(value)
    if kind is str:
        if not value:
            raise ValueError("must not be empty")
        return str(value)
    if kind is int or kind is float:
        return str(value)
    raise ValueError(f"must be a string, got {show(value)}")


def event_source(value: Any) -> str:
    """``source``: an event string made a URI-reference as Go's ``url.Parse`` reads it.

    OpenMeter refuses a whole batch for one bad ``source``, and OpenTelemetry SDKs default
    ``service.name`` to ``unknown_service:<process>``, which is not one (no scheme, yet a colon in
    the first segment). So offending characters are percent-encoded: control characters, a ``%``
    that starts no escape, and colons before the first ``/`` when there is no scheme.
    """
    text = event_string(value)
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", text)
    if "%" in text:
        text = _BAD_ESCAPE.sub("%25", text)
    if ":" in text and _SCHEME.match(text) is None:
        end = _FIRST_SEGMENT.match(text).end()  # type: ignore[union-attr]  # matches any text
        text = text[:end].replace(":", "%3A") + text[end:]
    return text


def event_time(value: Any) -> str:
    """A Unix timestamp or RFC 3339 text → RFC 3339 UTC text.

    A number is read in the unit its size says (a row's ``timestamp`` is as often seconds as
    nanoseconds): below 10¹¹ seconds, below 10¹⁴ milliseconds, below 10¹⁷ microseconds, else
    nanoseconds. For times from 1973 to 5138 the four ranges cannot be confused.
    """
    kind = type(value)
    if kind is int:
        return format_time(unix_nanos(value))
    if kind is float and math.isfinite(value):
        return format_time(unix_nanos(value))
    if kind is str:
        return format_time(parse_rfc3339(value))
    raise ValueError(f"must be a Unix timestamp or RFC 3339 text, got {show(value)}")


def unix_nanos(value: int | float) -> int:
    """A Unix timestamp in seconds, milliseconds, microseconds or nanoseconds (by its size) → ns."""
    size = value
    if size < 0:
        return int(value)  # before 1970: refused as it is
    for limit, scale in _TIMESTAMP_UNITS:
        if size < limit:
            if type(value) is int:
                return value * scale
            return int(Decimal(repr(value)) * scale)  # the float's digits, not its binary error
    return int(value)


_TIMESTAMP_UNITS = ((10**11, 10**9), (10**14, 10**6), (10**17, 10**3))


def parse_rfc3339(text: str) -> int:
    """RFC 3339 text → Unix nanoseconds (fraction digits beyond nine are dropped)."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {show(text)}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {show(text)} ({exc})") from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(8):
        if int(m.group(9)) > 23 or int(m.group(10)) > 59:
            raise ValueError(f"not an RFC 3339 time: {show(text)} (offset out of range)")
        offset = int(m.group(9)) * 3600 + int(m.group(10)) * 60
        seconds -= offset if m.group(8) == "+" else -offset
    fraction = int((m.group(7) or "")[:9].ljust(9, "0"))
    return seconds * 1_000_000_000 + fraction


def time_millis(text: Any) -> int:
    """Unix milliseconds of an event time (rounded down): fast for :func:`format_time`'s own text
    (``YYYY-MM-DDTHH:MM:SS[.fff…]Z``), else :func:`~otlp_meter.events.rfc3339_millis`; 0 for
    anything else."""
    if type(text) is not str:
        return 0
    if len(text) in (20, 24, 27, 30) and text[-1] == "Z" and text[19] in ".Z":
        try:
            seconds = _text_seconds(text[:19])
            return seconds * 1000 + (int(text[20:23]) if len(text) > 20 else 0)
        except ValueError:
            pass
    return rfc3339_millis(text)  # the one reading of other texts: replays rebuild keys with it too


@functools.lru_cache(maxsize=4096)
def _text_seconds(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
