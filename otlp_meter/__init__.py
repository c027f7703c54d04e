"""otlp-meter: OpenTelemetry and CloudEvents in, durable CloudEvents out to OpenMeter."""

import sys as _sys

__version__ = "0.1.0"

# httpx imports its command-line tool (and with it `rich` and `pygments`: ~45 ms and ~3 MiB) whenever
# `click` and `rich` are installed, as they are here for other packages' CLIs. The service never runs
# httpx's CLI; a None entry makes that optional import fail fast, as httpx expects it may.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
