"""Whether the optional C extension (``_native.c``) is used, in one place.

Without a C compiler at install time the extension is absent and everything runs in Python.
``OTLP_METER_NATIVE=0`` in the environment turns it off: rules compiled after that run in Python
(``native_rules.py``), and ids hashed by hashers made after it use :mod:`hashlib`. The test suite
runs the rules and pipeline tests both ways.
"""

from __future__ import annotations

import hashlib
import os
from types import ModuleType
from typing import Any

ABI = 4
"""The ``_native.ABI`` these sources expect; a build from other sources (an in-tree ``.so`` older than
a pull, before ``make`` rebuilt it) is not used: everything then runs in Python."""

module: ModuleType | None
try:
    from otlp_meter import _native as module
except ImportError:  # built without a C compiler: pure Python
    module = None
if module is not None and getattr(module, "ABI", None) != ABI:
    module = None


def available() -> bool:
    """Whether the C extension is built and not turned off by ``OTLP_METER_NATIVE=0``."""
    return module is not None and os.environ.get("OTLP_METER_NATIVE", "1") != "0"


def blake2b(data: bytes, *, digest_size: int, person: bytes) -> Any:
    """``hashlib.blake2b(data, digest_size=, person=)``, in C when available (the same digests; a
    rule's C program can finish an id from it without calling back into Python)."""
    if module is not None and available():
        return module.Hasher(data, digest_size=digest_size, person=person)
    return hashlib.blake2b(data, digest_size=digest_size, person=person)
