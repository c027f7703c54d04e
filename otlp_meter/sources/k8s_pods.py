"""What a pod holds and for how long: pure functions over the pod objects of the Kubernetes API.

Pods are the API's JSON (``camelCase`` dicts, as ``kubectl get pod -o json`` shows them), so this module
needs no client and its tests need no server.

* :func:`pod_allocation` — requests and limits summed over containers with Kubernetes' effective-request
  rule (``k8s.io/component-helpers/resource.PodRequests``): ``max(sum(app containers) + sum(sidecars),
  max over init containers of (init + sidecars started before it)) + pod overhead``. Pod-level
  ``spec.resources`` (Kubernetes 1.32+) replaces the container sum for CPU and memory.
* :func:`run_window` — from when to when the pod held its allocation, from the pod's own timestamps:
  from ``status.startTime`` (when the kubelet took the pod; a container start if that is earlier) to
  its last container's finish. Never from when the collector happened to see it, so the window of a
  pod is the same whether its ticks are billed live or caught up after downtime.
* :func:`overlap` — the seconds of that window inside a tick.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from otlp_meter.sources.k8s_quantity import QuantityError, parse_quantity

Pod = Mapping[str, Any]
Resources = dict[str, Fraction]

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Conditions the kubelet moves while it runs the pod, the last time when it stops it (Ready and
# ContainersReady go False). Not DisruptionTarget and the like: controllers set those, also on pods
# that stopped long before (taint eviction, pod GC).
_KUBELET_CONDITIONS = ("Ready", "ContainersReady")
# Kubernetes honours pod-level resources for these only (KEP-2837).
_POD_LEVEL_RESOURCES = ("cpu", "memory")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII
)


@dataclass(frozen=True, slots=True)
class Allocation:
    """A pod's effective ``requests``; ``limits`` holds only resources every container bounds."""

    requests: Mapping[str, Fraction]
    limits: Mapping[str, Fraction]
    unbounded: frozenset[str] = frozenset()
    """Resources some long-running container may use without a limit (cpu, memory of BestEffort pods)."""

    def request(self, names: Iterable[str]) -> Fraction:
        """The sum of the requests of ``names`` (0 when none is requested)."""
        return sum((self.requests.get(name, Fraction(0)) for name in names), Fraction(0))

    def limit(self, names: Iterable[str]) -> Fraction | None:
        """The sum of the limits of ``names`` that the pod requests or bounds; None when one is unbounded."""
        total = Fraction(0)
        for name in names:
            if name in self.limits:
                total += self.limits[name]
            elif name in self.unbounded or self.requests.get(name):
                return None
        return total


def parse_time(text: object) -> Fraction | None:
    """RFC 3339 (``metav1.Time``/``MicroTime``) → exact Unix seconds; None for anything else."""
    if not isinstance(text, str) or (m := _RFC3339.fullmatch(text)) is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = Fraction(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if m[7]:
        seconds += Fraction(int(m[7]), 10 ** len(m[7]))
    if m[8]:
        offset = int(m[9]) * 3600 + int(m[10]) * 60
        seconds -= offset if m[8] == "+" else -offset
    return seconds


def _resources(container: Mapping[str, Any], kind: str) -> Resources:
    """One container's ``resources.requests`` or ``resources.limits``; unparseable values are skipped
    (the API server validates quantities, so this only guards against a corrupt object)."""
    out: Resources = {}
    listed = (container.get("resources") or {}).get(kind) or {}
    for name, text in listed.items():
        try:
            out[name] = parse_quantity(text)
        except QuantityError:
            continue
    return out


def _add(into: Resources, more: Mapping[str, Fraction]) -> None:
    for name, value in more.items():
        into[name] = into.get(name, Fraction(0)) + value


def _max(into: Resources, other: Mapping[str, Fraction]) -> None:
    for name, value in other.items():
        if value > into.get(name, Fraction(-1)):
            into[name] = value


def _effective(spec: Mapping[str, Any], kind: str) -> Resources:
    """Kubernetes' PodRequests / PodLimits, without overhead."""
    total: Resources = {}
    for container in spec.get("containers") or ():
        _add(total, _resources(container, kind))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for container in spec.get("initContainers") or ():
        own = _resources(container, kind)
        if container.get("restartPolicy") == "Always":
            # A sidecar runs beside the app containers for the pod's whole life, and beside every
            # init container that starts after it.
            _add(total, own)
            _add(sidecars, own)
            candidate = dict(sidecars)
        else:
            candidate = dict(own)
            _add(candidate, sidecars)
        _max(init_peak, candidate)
    _max(total, init_peak)
    pod_level = _resources(spec, kind)
    for name in _POD_LEVEL_RESOURCES:
        if name in pod_level:
            total[name] = pod_level[name]
    return total


def _unbounded(spec: Mapping[str, Any]) -> set[str]:
    """Resources some long-running container (app or sidecar) requests or uses without a limit."""
    pod_limits = _resources(spec, "limits")
    names: set[str] = set()
    long_running = list(spec.get("containers") or ())
    long_running += [c for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"]
    for container in long_running:
        limits = _resources(container, "limits")
        for name in ("cpu", "memory", *_resources(container, "requests")):
            if name not in limits and name not in pod_limits:
                names.add(name)
    return names


def pod_allocation(pod: Pod) -> Allocation:
    """The effective requests and limits of a pod, overhead included."""
    spec = pod.get("spec") or {}
    overhead: Resources = {}
    for name, text in (spec.get("overhead") or {}).items():
        try:
            overhead[name] = parse_quantity(text)
        except QuantityError:
            continue
    requests = _effective(spec, "requests")
    _add(requests, overhead)
    limits = _effective(spec, "limits")
    unbounded = _unbounded(spec)
    for name in unbounded:
        limits.pop(name, None)
    for name in list(limits):
        limits[name] += overhead.get(name, Fraction(0))  # Kubernetes adds overhead to set limits only
    return Allocation(requests, limits, frozenset(unbounded))


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]


def first_container_start(pod: Pod) -> Fraction | None:
    """The earliest start of any container (init containers included) that the pod's status shows."""
    starts: list[Fraction] = []
    for cs in _container_statuses(pod.get("status") or {}):
        for state_key in ("state", "lastState"):
            state = cs.get(state_key) or {}
            for phase in ("running", "terminated"):
                started = parse_time((state.get(phase) or {}).get("startedAt"))
                if started is not None:
                    starts.append(started)
    return min(starts, default=None)


def last_container_finish(pod: Pod) -> Fraction | None:
    """When the last container stopped, if every container has stopped; else None."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    finishes: list[Fraction] = []
    for cs in statuses:
        finished = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if finished is None:
            return None
        finishes.append(finished)
    return max(finishes, default=None)


def last_status_time(pod: Pod) -> Fraction | None:
    """The latest time the pod's status shows it still holding its allocation: a container's start or
    finish (``state`` and ``lastState``, init containers included), the kubelet's last Ready or
    ContainersReady transition, ``status.startTime``. For a terminal pod whose containers did not
    all finish (one never ran; it never got any), the best end its own object can tell; None when it
    tells nothing."""
    status = pod.get("status") or {}
    times: list[Fraction | None] = [parse_time(status.get("startTime"))]
    for cs in _container_statuses(status):
        for state_key in ("state", "lastState"):
            state = cs.get(state_key) or {}
            for phase in ("running", "terminated"):
                times.append(parse_time((state.get(phase) or {}).get("startedAt")))
            times.append(parse_time((state.get("terminated") or {}).get("finishedAt")))
    for condition in status.get("conditions") or ():
        if condition.get("type") in _KUBELET_CONDITIONS:
            times.append(parse_time(condition.get("lastTransitionTime")))
    return max((t for t in times if t is not None), default=None)


def scheduled_at(pod: Pod) -> Fraction | None:
    """When the pod was bound to its node (the PodScheduled condition), for pods that are."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return None
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            when = parse_time(condition.get("lastTransitionTime"))
            if when is not None:
                return when
    status = pod.get("status") or {}
    return parse_time(status.get("startTime")) or parse_time(
        (pod.get("metadata") or {}).get("creationTimestamp")
    )


def run_window(
    pod: Pod,
    *,
    include_pending: bool,
    earliest_start: Fraction | None = None,
    gone_at: Fraction | None = None,
) -> tuple[Fraction, Fraction | None] | None:
    """``(start, end)`` of the time the pod held its allocation; ``end`` None while it still does.

    Start: the earliest of ``status.startTime`` (the kubelet took the pod on its node: image pulls
    count) and its container starts (init containers included; ``earliest_start`` is the earliest the
    caller has seen) — a container restart replaces the container's start times, never the pod's
    ``startTime``. With ``include_pending``, the time it was bound to its node if earlier.
    End, once Succeeded/Failed: when its last container finished, else the latest time its status
    shows it holding resources (:func:`last_status_time`), else its start (it is not billed at all:
    a pod rejected at admission never ran). Never when the collector first saw it terminal: a list
    after downtime would bill the whole downtime again. A pod gone from the API ends when it went
    (``gone_at``), never after its ``deletionTimestamp`` or its last container finish. None when the
    pod never started (or, pending included, was never scheduled).
    """
    status = pod.get("status") or {}
    starts = [first_container_start(pod), earliest_start, parse_time(status.get("startTime"))]
    if include_pending:
        starts.append(scheduled_at(pod))
    start = min((t for t in starts if t is not None), default=None)
    if start is None:
        return None
    end: Fraction | None = None
    finished = last_container_finish(pod)
    if status.get("phase") in TERMINAL_PHASES:
        end = finished if finished is not None else last_status_time(pod)
        if end is None:
            end = start
    if gone_at is not None:
        deadline = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
        candidates = [t for t in (end, gone_at, deadline, finished) if t is not None]
        end = min(candidates)
    if end is not None and end < start:
        end = start
    return start, end


def overlap(window: tuple[Fraction, Fraction | None], tick_start: Fraction, tick_end: Fraction) -> Fraction:
    """Seconds of ``window`` inside ``[tick_start, tick_end)``; 0 when they do not meet."""
    start, end = window
    stop = tick_end if end is None else min(end, tick_end)
    return max(Fraction(0), stop - max(start, tick_start))
