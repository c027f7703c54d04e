"""Metrics computed at scrape time: the queue's state and durable ledger (read from a real LMDB
queue), the migration aliases derived from the canonical instruments, and the mapping of what
sources report onto the source metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from otlp_meter import native
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.sources.base import SourceObserver
from otlp_meter.telemetry.metrics import Metrics
from tests.unit.queue.conftest import event, events, rejection
from tests.unit.telemetry.stats import queue_stats

NOW = 1_700_000_000.0


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[LmdbQueue]:
    queue = LmdbQueue(QueueConfig(directory=tmp_path, sync=False), clock=lambda: NOW)
    queue.open()
    yield queue
    queue.close()


def value(metrics: Metrics, sample: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(sample, labels)


# --- the queue ------------------------------------------------------------------------------------


async def test_queue_state_and_ledger_are_read_from_the_queue_when_scraped(queue: LmdbQueue) -> None:
    metrics = Metrics(process=False)
    metrics.observe_queue(queue.stats, clock=lambda: NOW + 30)
    await queue.append(events(0, 5), [rejection()])
    await queue.append(events(0, 2))  # copies: deduplicated
    delivered, refused = queue.lease(2, 1 << 20), queue.lease(1, 1 << 20)
    await queue.ack([e.seq for e in delivered])
    await queue.dead_letter([(refused[0], "400 from OpenMeter")])

    assert value(metrics, "otlp_meter_queue_depth_events") == 2
    assert value(metrics, "otlp_meter_queue_oldest_event_age_seconds") == 30
    assert value(metrics, "otlp_meter_queue_appended_events_total") == 5
    assert value(metrics, "otlp_meter_queue_deduplicated_events_total") == 2
    assert value(metrics, "otlp_meter_queue_delivered_events_total") == 2
    assert value(metrics, "otlp_meter_queue_dead_lettered_events_total") == 1
    assert value(metrics, "otlp_meter_queue_rejected_records_total") == 1
    assert value(metrics, "otlp_meter_queue_dead_letters") == 2
    assert value(metrics, "otlp_meter_queue_dedupe_keys") == queue.stats().dedupe_keys > 0
    assert value(metrics, "otlp_meter_queue_full") == 0
    assert value(metrics, "otlp_meter_queue_capacity_bytes") == queue.config.max_bytes
    assert (value(metrics, "otlp_meter_queue_commits_total") or 0) >= 4


async def test_the_scraped_ledger_balances_like_queue_stats(queue: LmdbQueue) -> None:
    metrics = Metrics(process=False)
    metrics.observe_queue(queue.stats)
    await queue.append(events(0, 10), [rejection(), rejection()])
    await queue.append(events(5, 12))
    batch = queue.lease(4, 1 << 20)
    await queue.ack([e.seq for e in batch[:3]])
    await queue.dead_letter([(batch[3], "refused")])

    def get(name: str) -> float:
        return value(metrics, f"otlp_meter_queue_{name}") or 0.0

    assert get("appended_events_total") == (
        get("delivered_events_total")
        + get("depth_events")
        + get("dead_lettered_events_total")
        + get("corrupt_events_total")
    )
    removed = get("dead_letters_removed_total")  # no labels given: none removed yet
    assert get("dead_letters") == get("dead_lettered_events_total") + get("rejected_records_total") - removed


async def test_removed_dead_letters_and_forgotten_dedupe_keys_are_labelled(queue: LmdbQueue) -> None:
    metrics = Metrics(process=False)
    metrics.observe_queue(queue.stats)
    await queue.append([event(1)], [rejection(original=b"\x0a\x01a"), rejection(original=b"\x0a\x01b")])
    await queue.purge_dead()

    assert value(metrics, "otlp_meter_queue_dead_letters_removed_total", action="purged") == 2
    assert value(metrics, "otlp_meter_queue_dead_letters_removed_total", action="replayed") == 0
    assert value(metrics, "otlp_meter_queue_dedupe_keys_forgotten_total", reason="expired") == 0
    assert value(metrics, "otlp_meter_queue_dedupe_keys_forgotten_total", reason="evicted") == 0


def test_nothing_of_the_queue_is_exposed_until_it_is_open() -> None:
    metrics = Metrics(process=False)
    metrics.observe_queue(lambda: None)

    text = generate_latest(metrics.registry).decode()

    assert "otlp_meter_queue_depth_events" not in text
    assert "otlp_meter_queue_append_duration_seconds" in text  # measured in-process, always there


def test_a_full_queue_shows_as_1() -> None:
    metrics = Metrics(process=False)
    metrics.observe_queue(lambda: queue_stats(full=True, storage_used_bytes=900, map_size=1000))

    assert value(metrics, "otlp_meter_queue_full") == 1
    assert value(metrics, "otlp_meter_queue_storage_used_bytes") == 900
    assert value(metrics, "otlp_meter_queue_storage_capacity_bytes") == 1000


def test_grouped_commits_are_timed_and_sized() -> None:
    metrics = Metrics(process=False)

    metrics.observe_commit(0.004, 12)

    assert value(metrics, "otlp_meter_queue_commit_duration_seconds_sum") == 0.004
    assert value(metrics, "otlp_meter_queue_commit_batch_size_bucket", le="16.0") == 1
    assert value(metrics, "otlp_meter_queue_commit_batch_size_bucket", le="8.0") == 0


# --- migration aliases ----------------------------------------------------------------------------


def test_aliases_are_derived_from_the_canonical_metrics_summed_over_their_labels() -> None:
    metrics = Metrics(migration_aliases=True, process=False)
    metrics.exporter_batches_created.labels("openmeter").inc(5)
    metrics.exporter_batches_created.labels("file").inc(2)
    metrics.exporter_sent_batches.labels("openmeter").inc(4)
    for _ in range(3):
        metrics.queue_append_duration.observe(0.001)

    assert value(metrics, "batch_created") == 7
    assert value(metrics, "buffer_batch_sent") == 7
    assert value(metrics, "batch_sent") == 4
    assert value(metrics, "buffer_batch_received") == 3


def test_buffer_latency_ns_is_the_batch_duration_histogram_in_nanoseconds() -> None:
    metrics = Metrics(migration_aliases=True, process=False)
    metrics.exporter_batch_duration.labels("openmeter").observe(0.2)
    metrics.exporter_batch_duration.labels("openmeter").observe(20.0)

    assert value(metrics, "buffer_latency_ns_count") == 2
    assert value(metrics, "buffer_latency_ns_sum") == pytest.approx(20.2e9)
    assert value(metrics, "buffer_latency_ns_bucket", le="2.5e+08") == 1
    assert value(metrics, "buffer_latency_ns_bucket", le="3e+10") == 2
    assert value(metrics, "buffer_latency_ns_bucket", le="+Inf") == 2


def test_buffer_latency_ns_has_its_buckets_before_the_first_batch() -> None:
    metrics = Metrics(migration_aliases=True, process=False)

    assert value(metrics, "buffer_latency_ns_bucket", le="1e+07") == 0
    assert value(metrics, "buffer_latency_ns_count") == 0


# --- sources --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "metric"),
    [
        ("ticks_completed", "otlp_meter_source_ticks_run_total"),
        ("ticks_caught_up", "otlp_meter_source_ticks_caught_up_total"),
        ("ticks_skipped", "otlp_meter_source_ticks_skipped_total"),
        ("ticks_failed", "otlp_meter_source_ticks_failed_total"),
        ("points", "otlp_meter_source_objects_processed_total"),
        ("objects_completed", "otlp_meter_source_objects_processed_total"),
    ],
)
def test_what_sources_count_lands_on_its_metric(reported: str, metric: str) -> None:
    metrics = Metrics(process=False)
    observer: SourceObserver = metrics.sources  # what the sources take (checked by mypy)

    observer.count("prometheus", "gpu", reported, 3)

    assert value(metrics, metric, source="prometheus", name="gpu") == 3


def test_other_source_counts_and_gauges_are_kept_by_name() -> None:
    metrics = Metrics(process=False)

    metrics.sources.count("kubernetes", "nodes", "pod_relists", 2)
    metrics.sources.count("kubernetes", "nodes", "pod_relists", 0)
    metrics.sources.gauge("kubernetes", "nodes", "pods_cached", 40)
    metrics.sources.gauge("prometheus", "gpu", "cursor_lag_seconds", 75)

    labels = {"source": "kubernetes", "name": "nodes"}
    assert value(metrics, "otlp_meter_source_operations_total", **labels, operation="pod_relists") == 2
    assert value(metrics, "otlp_meter_source_gauge", **labels, gauge="pods_cached") == 40
    assert value(metrics, "otlp_meter_source_cursor_lag_seconds", source="prometheus", name="gpu") == 75


# --- process ----------------------------------------------------------------------------------------


def test_process_metrics_and_the_build_are_exposed() -> None:
    metrics = Metrics()

    assert (value(metrics, "process_resident_memory_bytes") or 0) > 0
    assert (value(metrics, "process_open_fds") or 0) > 0
    assert value(metrics, "process_cpu_seconds_total") is not None
    [build] = [m for m in metrics.registry.collect() if m.name == "otlp_meter_build_info"]
    assert build.samples[0].value == 1
    assert build.samples[0].labels["version"]
    assert build.samples[0].labels["native"] == str(native.available()).lower()
