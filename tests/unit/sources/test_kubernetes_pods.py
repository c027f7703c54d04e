"""Pod accounting: effective requests and limits (Kubernetes' rule), run windows, tick overlap."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from otlp_meter.sources.k8s_pods import (
    first_container_start,
    last_container_finish,
    overlap,
    parse_time,
    pod_allocation,
    run_window,
)
from tests.support.fake_kubernetes import container, make_pod, rfc3339

T0 = Fraction(1_700_000_040)  # a whole minute


def window(pod: dict[str, Any], **kwargs: Any) -> tuple[Fraction, Fraction | None]:
    found = run_window(pod, include_pending=kwargs.pop("include_pending", False), **kwargs)
    assert found is not None
    return found


def spec_pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": spec, "status": {}}


def test_requests_sum_over_app_containers() -> None:
    pod = spec_pod(
        containers=[
            container("a", {"cpu": "250m", "memory": "128Mi", "nvidia.com/gpu": 1}, {"nvidia.com/gpu": 1}),
            container("b", {"cpu": "1", "memory": "1Gi"}),
        ]
    )
    allocation = pod_allocation(pod)
    assert allocation.requests == {
        "cpu": Fraction(5, 4),
        "memory": Fraction(2**30 + 2**27),
        "nvidia.com/gpu": Fraction(1),
    }


def test_init_containers_count_by_the_effective_request_rule() -> None:
    # max(max(init), sum(app)) per resource: the big init container wins CPU, the apps win memory.
    pod = spec_pod(
        initContainers=[
            container("migrate", {"cpu": "2", "memory": "64Mi"}),
            container("warm", {"cpu": "500m"}),
        ],
        containers=[
            container("a", {"cpu": "500m", "memory": "1Gi"}),
            container("b", {"cpu": "500m", "memory": "1Gi"}),
        ],
    )
    assert pod_allocation(pod).requests == {"cpu": Fraction(2), "memory": Fraction(2**31)}


def test_sidecars_run_beside_the_apps_and_later_init_containers() -> None:
    # A restartable init container (sidecar) adds to the apps and to every init container after it.
    pod = spec_pod(
        initContainers=[
            container("proxy", {"cpu": "200m", "memory": "100Mi"}, restartPolicy="Always"),
            container("setup", {"cpu": "3", "memory": "10Mi"}),
        ],
        containers=[container("app", {"cpu": "1", "memory": "1Gi"})],
    )
    requests = pod_allocation(pod).requests
    assert requests["cpu"] == Fraction(16, 5)  # setup 3 + proxy 0.2 > app 1 + proxy 0.2
    assert requests["memory"] == Fraction(2**30 + 100 * 2**20)  # app + proxy > setup + proxy


def test_overhead_is_added_to_requests_and_to_set_limits() -> None:
    pod = spec_pod(
        containers=[container("a", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"})],
        overhead={"cpu": "250m", "memory": "120Mi"},
    )
    allocation = pod_allocation(pod)
    assert allocation.requests == {"cpu": Fraction(5, 4), "memory": Fraction(2**30 + 120 * 2**20)}
    assert allocation.limits == {"cpu": Fraction(9, 4), "memory": Fraction(2**31 + 120 * 2**20)}


def test_a_limit_is_only_reported_when_every_long_running_container_sets_it() -> None:
    pod = spec_pod(
        containers=[
            container("a", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "1Gi"}),
            container("b", {"cpu": "1", "memory": "1Gi"}, {"memory": "1Gi"}),
        ]
    )
    allocation = pod_allocation(pod)
    assert allocation.limits == {"memory": Fraction(2**31)}
    assert allocation.limit(["cpu"]) is None
    assert allocation.limit(["memory"]) == Fraction(2**31)


def test_pod_level_resources_replace_the_container_sum_for_cpu_and_memory() -> None:
    pod = spec_pod(
        resources={"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "8", "memory": "8Gi"}},
        containers=[
            container("a", {"cpu": "1", "nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"}),
            container("b"),
        ],
    )
    allocation = pod_allocation(pod)
    assert allocation.requests == {
        "cpu": Fraction(4),
        "memory": Fraction(8 * 2**30),
        "nvidia.com/gpu": Fraction(2),
    }
    assert allocation.limits == {
        "cpu": Fraction(8),
        "memory": Fraction(8 * 2**30),
        "nvidia.com/gpu": Fraction(2),
    }


def test_gpus_sum_over_the_configured_resource_names() -> None:
    pod = spec_pod(
        containers=[
            container("a", {"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"}),
            container("b", {"amd.com/gpu": "1"}, {"amd.com/gpu": "1"}),
        ]
    )
    allocation = pod_allocation(pod)
    assert allocation.request(["nvidia.com/gpu", "amd.com/gpu"]) == 3
    assert allocation.limit(["nvidia.com/gpu", "amd.com/gpu"]) == 3
    assert allocation.request(["intel.com/gpu"]) == 0


def test_times_parse_exactly_with_fractions_and_offsets() -> None:
    assert parse_time("2023-11-14T22:14:00Z") == 1_700_000_040
    assert parse_time("2023-11-14T22:14:00.250000Z") == Fraction(1_700_000_040_250, 1000)
    assert parse_time("2023-11-14T23:14:00+01:00") == 1_700_000_040
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_a_running_pod_runs_from_its_first_container_start() -> None:
    pod = make_pod(started=T0 + 10)
    assert first_container_start(pod) == T0 + 10
    running = window(pod)
    assert running == (T0 + 10, None)
    assert overlap(running, T0, T0 + 60) == 50
    assert overlap(running, T0 + 60, T0 + 120) == 60
    assert overlap(running, T0 - 60, T0) == 0


def test_a_finished_pod_runs_until_its_last_container_stops() -> None:
    pod = make_pod(started=T0 + 10, finished=T0 + 75, phase="Succeeded")
    assert last_container_finish(pod) == T0 + 75
    done = window(pod)
    assert done == (T0 + 10, T0 + 75)
    assert overlap(done, T0 + 60, T0 + 120) == 15


def test_a_restarted_container_keeps_the_earliest_start_the_cache_saw() -> None:
    pod = make_pod(started=T0 + 30)
    assert window(pod, earliest_start=T0 + 5) == (T0 + 5, None)


def test_a_pending_pod_is_not_billed_unless_pending_is_included() -> None:
    pod = make_pod(phase="Pending")
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(T0 + 3)}
    ]
    assert run_window(pod, include_pending=False) is None
    assert window(pod, include_pending=True) == (T0 + 3, None)
    unscheduled = make_pod(phase="Pending", node=None)
    assert run_window(unscheduled, include_pending=True) is None


def test_a_deleted_pod_ends_when_it_went_but_never_after_its_deadline_or_finish() -> None:
    pod = make_pod(started=T0)
    assert window(pod, gone_at=T0 + 40) == (T0, T0 + 40)
    pod["metadata"]["deletionTimestamp"] = rfc3339(T0 + 30)
    assert window(pod, gone_at=T0 + 40) == (T0, T0 + 30)
    done = make_pod(started=T0, finished=T0 + 20, phase="Succeeded")
    assert window(done, gone_at=T0 + 40) == (T0, T0 + 20)


def test_a_terminal_pod_without_container_times_ends_when_it_started() -> None:
    pod = make_pod(started=T0, phase="Failed")
    del pod["status"]["containerStatuses"]
    assert window(pod) == (T0, T0)


def rejected_pod(start: Fraction) -> dict[str, Any]:
    """A pod the kubelet refused at admission: Failed, a start time, no container ever ran."""
    pod = make_pod(phase="Failed")
    pod["status"].update(
        startTime=rfc3339(start), reason="OutOfcpu", message="Pod was rejected: Node didn't have enough cpu"
    )
    return pod


def test_a_pod_rejected_at_admission_is_never_billed() -> None:
    pod = rejected_pod(T0 - 86_400)
    assert last_container_finish(pod) is None
    rejected = window(pod)
    assert rejected == (T0 - 86_400, T0 - 86_400)  # zero length: not a second after it failed
    assert overlap(rejected, T0, T0 + 60) == 0
    assert window(pod, include_pending=True)[1] == T0 - 86_400


def test_a_terminal_pod_without_every_finish_ends_at_its_last_own_timestamp() -> None:
    # A container that never ran (still waiting) leaves no finish time: the pod ends at the latest time
    # its status shows it holding resources — a finish (also of an earlier run), or Ready going False.
    pod = make_pod(started=T0, phase="Failed", containers=[container("a"), container("b")])
    a, b = pod["status"]["containerStatuses"]
    a["state"] = {"terminated": {"startedAt": rfc3339(T0), "finishedAt": rfc3339(T0 + 30), "exitCode": 1}}
    b["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    b["lastState"] = {"terminated": {"startedAt": rfc3339(T0), "finishedAt": rfc3339(T0 + 50), "exitCode": 1}}
    assert window(pod) == (T0, T0 + 50)
    pod["status"]["conditions"] += [
        {"type": "ContainersReady", "status": "False", "lastTransitionTime": rfc3339(T0 + 70)},
        {"type": "Ready", "status": "False", "lastTransitionTime": rfc3339(T0 + 70)},
        {"type": "DisruptionTarget", "status": "True", "lastTransitionTime": rfc3339(T0 + 999)},
    ]
    assert window(pod) == (T0, T0 + 70)  # not the controllers' later conditions


def test_a_restarted_container_does_not_move_the_pod_start_past_its_start_time() -> None:
    # Two restarts replaced the container's start times; status.startTime still says when it started.
    pod = make_pod(started=T0)
    [status] = pod["status"]["containerStatuses"]
    status["state"] = {"running": {"startedAt": rfc3339(T0 + 200)}}
    status["lastState"] = {
        "terminated": {"startedAt": rfc3339(T0 + 100), "finishedAt": rfc3339(T0 + 200), "exitCode": 1}
    }
    status["restartCount"] = 2
    assert first_container_start(pod) == T0 + 100
    assert window(pod) == (T0, None)


def test_a_pod_runs_from_its_start_time_while_its_first_images_are_pulled() -> None:
    pod = make_pod(phase="Pending")
    pod["status"]["startTime"] = rfc3339(T0 + 4)  # the kubelet took the pod; no container started yet
    assert window(pod) == (T0 + 4, None)
