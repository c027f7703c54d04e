"""Run:ai usage arithmetic: sample integration, pod windows, exact numbers — pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from fractions import Fraction

from otlp_meter.sources.base import SourceStats
from otlp_meter.sources.k8s_pods import parse_time
from otlp_meter.sources.runai_client import Row


def iso(seconds: Fraction | float) -> str:
    """Unix seconds → RFC 3339 UTC with milliseconds, as Run:ai writes times."""
    moment = datetime.fromtimestamp(float(seconds), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def number(value: object) -> Fraction | None:
    """A metric sample or resource amount (Run:ai sends numbers and numeric text) exactly; else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Fraction(str(value))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def integrate(
    samples: Mapping[Fraction, Fraction], start: Fraction, end: Fraction, step: Fraction
) -> tuple[Fraction, Fraction]:
    """``(integral, covered seconds)`` of samples over ``[start, end)``: each sample holds until the
    next one, at most ``step`` (a gap in the series means the resource was not there)."""
    times = sorted(t for t in samples if start <= t < end)
    integral = covered = Fraction(0)
    for i, t in enumerate(times):
        following = times[i + 1] if i + 1 < len(times) else end
        hold = min(following - t, step, end - t)
        integral += samples[t] * hold
        covered += hold
    return integral, covered


def series_by_type(measurements: Sequence[Row], stats: SourceStats) -> dict[str, dict[Fraction, Fraction]]:
    """Samples per metric type; series of one type (split by labels) are added up per timestamp."""
    out: dict[str, dict[Fraction, Fraction]] = {}
    for measurement in measurements:
        series = out.setdefault(str(measurement.get("type")), {})
        for sample in measurement.get("values") or ():
            when = parse_time(sample.get("timestamp")) if isinstance(sample, dict) else None
            value = number(sample.get("value")) if isinstance(sample, dict) else None
            if when is None or value is None:
                stats.add("samples_invalid")
                continue
            series[when] = series.get(when, Fraction(0)) + value
    return out


def may_have_run(row: Row, start: Fraction, end: Fraction) -> bool:
    """False for rows created after the tick, or completed/deleted before it (no metrics to fetch)."""
    created = parse_time(row.get("createdAt"))
    if created is not None and created >= end:
        return False
    for key in ("completedAt", "deletedAt"):
        when = parse_time(row.get(key))
        if when is not None and when < start:
            return False
    return True


def pod_window(pod: Row) -> tuple[Fraction, Fraction | None] | None:
    """From the first container start (else creation, once running) to completion or deletion."""
    starts = [t for c in pod.get("containers") or () if (t := parse_time(c.get("startedAt"))) is not None]
    start = min(starts) if starts else None
    if start is None and pod.get("k8sPhase") in ("Running", "Succeeded", "Failed"):
        start = parse_time(pod.get("createdAt"))
    if start is None:
        return None
    ends = [t for key in ("completedAt", "deletedAt") if (t := parse_time(pod.get(key))) is not None]
    return start, min(ends) if ends else None


def allocated_gpus(pod: Row) -> Fraction:
    """GPUs allocated to a pod (fractions allowed), else requested, else 0."""
    allocated = number((pod.get("allocatedResources") or {}).get("gpu"))
    if allocated is not None:
        return allocated
    requested = number(((pod.get("requestedResources") or {}).get("gpu") or {}).get("request"))
    return requested if requested is not None else Fraction(0)
