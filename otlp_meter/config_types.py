"""Building blocks every stage's config model uses: a strict base model, durations and byte sizes.

Each stage owns its config model (``queue/config.py``, ``exporters/config.py``, …); ``config.py``
composes them. All of them derive from :class:`Section` so unknown keys are errors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    None: 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|k|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "k": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_duration(value: Any) -> float:
    """``"1.5s"``, ``"500ms"``, ``"24h"`` or a number of seconds → seconds as float."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '5s', '500ms' or '24h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like '5s', '500ms' or '24h', got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_byte_size(value: Any) -> int:
    """``"64MiB"``, ``"1GB"`` or a number of bytes → bytes as int."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '64MiB' or a number of bytes")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(f"expected a size like '64MiB', '1GB' or a number of bytes, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; YAML may say ``5s``, ``500ms``, ``24h`` or a plain number of seconds."""

ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""Bytes; YAML may say ``64MiB``, ``1GB`` or a plain number."""


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)
