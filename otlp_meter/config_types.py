"""Building blocks every stage's config model uses: a strict base model, durations and byte sizes.

Each stage owns its config model (``queue/config.py``, ``exporters/config.py``, …); ``config.py``
composes them. All of them derive from :class:`Section` so unknown keys are errors.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

_DURATION_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)\s*")
_NUMBER_RE = re.compile(r"^\d+(?:\.\d+)?$")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
# Case-insensitive: "64MiB", "64mib" and "64Mi" are the same. Single letters (and the Kubernetes
# "Ki"/"Mi"/"Gi"/"Ti") are binary, like Docker's "64m"; "KB"/"MB"/... are decimal.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# Messages never echo the value: it may be a secret put in the wrong field.
_DURATION_HINT = "expected a duration like '5s', '500ms', '1m30s' or '24h', or a number of seconds"
_SIZE_HINT = "expected a size like '64MiB', '1GB' or a number of bytes"


def _duration_text(text: str) -> float:
    text = text.strip()
    if _NUMBER_RE.match(text):
        return float(text)
    seconds = 0.0
    position = 0
    for match in _DURATION_PART_RE.finditer(text):  # "1h30m", "1m30.5s", Go style
        if match.start() != position:
            raise ValueError(_DURATION_HINT)
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(_DURATION_HINT)
    return seconds


def parse_duration(value: Any) -> float:
    """``"1.5s"``, ``"500ms"``, ``"1m30s"``, ``"24h"`` or a number of seconds → seconds as float."""
    if isinstance(value, bool):
        raise ValueError(_DURATION_HINT)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_text(value)
    else:
        raise ValueError(_DURATION_HINT)
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_byte_size(value: Any) -> int:
    """``"64MiB"``, ``"1GB"``, ``"512Ki"`` or a number of bytes → bytes as int."""
    if isinstance(value, bool):
        raise ValueError(_SIZE_HINT)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif (
        isinstance(value, str)
        and (m := _SIZE_RE.match(value))
        and (unit := m.group(2).lower()) in _SIZE_UNITS
    ):
        scaled = Decimal(m.group(1)) * _SIZE_UNITS[unit]  # exactly: 4.1GB is 4100000000 bytes
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number of bytes")
        size = int(scaled)
    else:
        raise ValueError(_SIZE_HINT)
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; YAML may say ``5s``, ``500ms``, ``1m30s``, ``24h`` or a plain number of seconds."""

ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""Bytes; YAML may say ``64MiB``, ``1GB``, ``512Ki`` or a plain number."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"0.0.0.0:4318"`` / ``"[::1]:4318"`` / ``":8888"`` → (host, port); the port 0 to 65535
    (0: any free port), an IPv6 host in brackets."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint must be host:port, got {endpoint!r}")
    if int(port) > 65535:
        raise ValueError(f"the port must be 0 to 65535, got {port}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"an IPv6 host goes in brackets, e.g. [::1]:4318, got {endpoint!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_endpoint(value: str) -> str:
    """:func:`parse_endpoint` as a config check: the text as it is, or ValueError."""
    parse_endpoint(value)
    return value


Endpoint = Annotated[str, AfterValidator(check_endpoint)]
"""``host:port`` to listen on, checked when the config loads (not when the port is bound)."""


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """``(where, message)`` of a YAML syntax error: only the problem and its line and column —
    ``str(exc)`` quotes the offending line, which may hold a secret."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return where, f"invalid YAML: {problem}"


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the silently ignored first one is a classic trap)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_http_url(value: str) -> str:
    """An http(s) URL with a host, without trailing slashes; the message never echoes the value
    (a URL may carry credentials)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as http://localhost:8888")
    return value.rstrip("/")
