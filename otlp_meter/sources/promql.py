"""Prometheus instant queries: what their answers mean, and the OTLP points they become.

Pure and synchronous (the prometheus source does the I/O). An answer of the HTTP API
(``/api/v1/query``) is either an instant vector, which becomes one gauge point per series, or a
:class:`QueryFailed` with a low-cardinality ``reason`` for the counters:

    http          a non-2xx answer that is not the API's JSON (a proxy, a wrong URL, 401/403)
    api           the API's own error (bad_data: a syntax error; execution, timeout, canceled, ...)
    decode        2xx but not the API's JSON shape
    result_type   a scalar, string or range vector (matrix): the query must return an instant vector

NaN and ±Inf samples cannot be usage: they are left out of the points and counted
(:attr:`Answer.non_finite`), as are native-histogram samples (:attr:`Answer.unsupported`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.sources.base import SCOPE_PREFIX, key_values

METRIC_NAME = "prometheus.query"
"""Name of the gauge every point belongs to (the prometheus pack matches it)."""
QUERY_NAME_ATTRIBUTE = "prometheus.query.name"
"""Point attribute holding the query's configured name (the prometheus pack's event type)."""
SCOPE_NAME = f"{SCOPE_PREFIX}prometheus"

_ERROR_TEXT_LIMIT = 300


class QueryFailed(Exception):
    """One evaluation of a query failed; the tick is retried later. ``reason`` labels the counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """An instant vector: ``series`` as (labels, finite value), plus what was left out and why."""

    series: list[tuple[dict[str, str], float]]
    non_finite: int = 0
    unsupported: int = 0
    warnings: list[str] = field(default_factory=list)


def parse_answer(status: int, body: bytes) -> Answer:
    """The series of an ``/api/v1/query`` answer; raises :class:`QueryFailed` for anything else."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict) or document.get("status") not in ("success", "error"):
        if not 200 <= status < 300:
            raise QueryFailed("http", f"HTTP {status}: {_excerpt(body)}")
        raise QueryFailed("decode", f"not a Prometheus API answer: {_excerpt(body)}")
    if document["status"] == "error":
        kind = document.get("errorType", "error")
        raise QueryFailed("api", f"{kind}: {document.get('error', '')} (HTTP {status})")
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        raise QueryFailed("decode", "the answer has no data.result")
    result_type = data.get("resultType")
    if result_type != "vector":
        raise QueryFailed(
            "result_type",
            f"the query returned a {result_type}, not an instant vector: each series must have one "
            "value per tick (use e.g. sum by (customer) (increase(x[5m])) instead of x[5m])",
        )
    series: list[tuple[dict[str, str], float]] = []
    non_finite = unsupported = 0
    for item in data["result"]:
        labels, value = _sample(item)
        if value is None:
            unsupported += 1
        elif not math.isfinite(value):
            non_finite += 1
        else:
            series.append((labels, value))
    warnings = [str(w) for w in document.get("warnings") or []]
    return Answer(series, non_finite, unsupported, warnings)


def _sample(item: Any) -> tuple[dict[str, str], float | None]:
    if not isinstance(item, dict) or not isinstance(item.get("metric", {}), dict):
        raise QueryFailed("decode", f"a series is not an object with metric labels: {_excerpt(item)}")
    labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
    pair = item.get("value")
    if pair is None and "histogram" in item:
        return labels, None  # a native histogram sample: not a number we could bill
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise QueryFailed("decode", f"a series has no [time, value] pair: {_excerpt(item)}")
    try:
        return labels, float(pair[1])  # the API sends values as text: "1.5", "NaN", "+Inf"
    except ValueError:
        raise QueryFailed("decode", f"a sample value is not a number: {pair[1]!r}") from None


def _excerpt(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


def points_request(
    query_name: str,
    time_ns: int,
    series: Sequence[tuple[Mapping[str, str], float]],
    resource: Mapping[str, str],
) -> ExportMetricsServiceRequest:
    """One gauge ``prometheus.query`` with a point per series: the labels and the query's name as
    attributes, the value as a double, ``time_ns`` as the point's time."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(key_values(resource))
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = SCOPE_NAME  # no version: it is part of every event id, keep ids stable
    metric = scope_metrics.metrics.add(name=METRIC_NAME)
    points = metric.gauge.data_points
    for labels, value in series:
        point = points.add(time_unix_nano=time_ns, as_double=value)
        # Sorted: equal series serialize, and so hash to event ids, equally whatever the label order.
        attributes = {**dict(sorted(labels.items())), QUERY_NAME_ATTRIBUTE: query_name}
        point.attributes.extend(key_values(attributes))
    return request


# --- Result types evident from the query text (so `otlp-meter check` reports them) ---------------

_NUMBER = re.compile(
    r"[+-]?(?:inf|nan|0x[0-9a-f]+|(?:\d+(?:_\d+)*\.?\d*|\.\d+)(?:e[+-]?\d+)?|(?:\d+(?:ms|[smhdwy]))+)",
    re.IGNORECASE,
)
_MODIFIERS = re.compile(r"(?:\s*(?:offset\s+-?[0-9a-z.]+|@\s*(?:start\(\)|end\(\)|[0-9.e+-]+)))*\s*\Z", re.I)
_SCALAR_FUNCTION = re.compile(r"(?:scalar|time)\s*\(")


def static_result_type(promql: str) -> str | None:
    """``scalar``, ``string`` or ``matrix`` when the query's text shows it cannot return an instant
    vector (a literal, ``scalar(...)``/``time()``, a range selector or subquery at the top); None
    when it may (the answer is checked too: this only catches mistakes before the first tick)."""
    text = _unwrap(_skeleton(promql).strip())
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        return "scalar"
    if text == '""':
        return "string"
    if (m := _SCALAR_FUNCTION.match(text)) and _closing(text, m.end() - 1) == len(text) - 1:
        return "scalar"
    without_modifiers = _MODIFIERS.sub("", text)
    if without_modifiers.endswith("]"):
        return "matrix"
    return None


def _skeleton(promql: str) -> str:
    """The query with comments removed and every string literal emptied (``"a]"`` → ``""``), so
    brackets and quotes inside strings cannot mislead the checks above."""
    out: list[str] = []
    i, n = 0, len(promql)
    while i < n:
        c = promql[i]
        if c == "#":
            end = promql.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'`":
            j = i + 1
            while j < n and promql[j] != c:
                j += 2 if promql[j] == "\\" and c != "`" else 1
            out.append('""')
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start``, or -1."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    depth = 0
    for i in range(start, len(text)):
        if text[i] in pairs:
            depth += 1
        elif text[i] in pairs.values():
            depth -= 1
            if depth == 0:
                return i
    return -1


def _unwrap(text: str) -> str:
    while text.startswith("(") and _closing(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text
