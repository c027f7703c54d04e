"""The metrics spec: every metric otlp-meter exports, as data (name, type, labels, help).

``docs/metrics.md`` is the human side of this module and a test keeps the two identical. The
instruments in :mod:`otlp_meter.telemetry.metrics` and the scrape-time collectors in
:mod:`otlp_meter.telemetry.collectors` are built from these declarations and from nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "otlp_meter"

# Histogram bounds are part of the spec: dashboards and the migration aliases depend on them.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A batch's life includes retries: during an outage it can last hours, and that is worth seeing.
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
SIZE_BUCKETS = tuple(float(4**n * 256) for n in range(10))  # 256 B … 64 MiB
BATCH_SIZE_BUCKETS = tuple(float(2**n) for n in range(11))  # 1 … 1024 operations

MetricType = Literal["counter", "gauge", "histogram", "untyped"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as exposed: ``name`` is what a query uses (counters end in ``_total``)."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str

    @property
    def family(self) -> str:
        """The name prometheus_client registers (a counter's without ``_total``)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name


ALL: list[MetricSpec] = []
"""Every metric, in declaration order: exactly what ``docs/metrics.md`` lists."""


def _declare(spec: MetricSpec) -> MetricSpec:
    ALL.append(spec)
    return spec


def _declare_all(*specs: MetricSpec) -> tuple[MetricSpec, ...]:
    ALL.extend(specs)
    return specs


def _counter(name: str, labels: tuple[str, ...], help: str) -> MetricSpec:
    return _declare(MetricSpec(f"{PREFIX}_{name}", "counter", labels, help))


def _gauge(name: str, labels: tuple[str, ...], help: str) -> MetricSpec:
    return _declare(MetricSpec(f"{PREFIX}_{name}", "gauge", labels, help))


def _histogram(name: str, labels: tuple[str, ...], help: str) -> MetricSpec:
    return _declare(MetricSpec(f"{PREFIX}_{name}", "histogram", labels, help))


def _alias(name: str, kind: MetricType, help: str) -> MetricSpec:
    """A migration alias: a foreign name, kept exactly (no prefix), without labels."""
    return _declare(MetricSpec(name, kind, (), help))


TS = ("transport", "signal")
EXPORTER = ("exporter",)
SOURCE = ("source", "name")

# -- receivers -----------------------------------------------------------------------------------
RECEIVER_ACCEPTED = _counter(
    "receiver_accepted_records_total",
    TS,
    "Records a receiver accepted: committed to the queue, or matched no rule.",
)
RECEIVER_REFUSED = _counter(
    "receiver_refused_records_total",
    (*TS, "reason"),
    "Records a receiver did not accept, by reason (rejected_by_rules: answered in partial_success "
    "and kept as dead letters).",
)
RECEIVER_REQUESTS = _counter(
    "receiver_requests_total",
    (*TS, "outcome"),
    "Requests a receiver answered, by outcome (ok, partial, or the refusal reason).",
)
RECEIVER_SIZE = _histogram(
    "receiver_request_size_bytes", TS, "Size of request bodies that decoded, after decompression."
)
RECEIVER_DURATION = _histogram(
    "receiver_request_duration_seconds",
    TS,
    "Time from a decoded request to its answer (rules and the grouped, synced commit), for accepted "
    "requests.",
)
RECEIVER_AUTH = _counter(
    "receiver_auth_failures_total",
    ("receiver", "reason"),
    "Requests refused for missing or invalid credentials, by receiver and reason (missing, invalid).",
)
RECEIVER_LIMITS = _counter(
    "receiver_limit_violations_total",
    ("transport", "limit"),
    "Requests refused for breaking an input limit, by limit.",
)
SERVER_CLOSED = _counter(
    "server_connections_closed_total",
    ("server", "reason"),
    "Connections a server closed to protect itself (header_timeout, header_too_large, body_timeout, "
    "connection_limit).",
)
TLS_RELOADS = _counter(
    "tls_reloads_total",
    ("server", "outcome"),
    "Certificate reloads after the files changed (outcome ok or failed; a failed reload keeps the "
    "previous certificate).",
)
# -- rules ---------------------------------------------------------------------------------------
RULES_MATCHED = _counter("rules_matched_records_total", ("rule",), "Records a rule matched.")
RULES_UNMATCHED = _counter(
    "rules_unmatched_records_total",
    ("signal",),
    "Records no rule matched; they are not usage and are dropped.",
)
RULES_REJECTED = _counter(
    "rules_rejected_records_total",
    ("rule", "reason"),
    "Records a rule matched but could not map, by rule and reason; they are kept as dead letters.",
)
RULES_CUMULATIVE = _counter(
    "rules_cumulative_points_total",
    ("outcome",),
    "Cumulative metric points, by what the conversion to deltas did with them.",
)
RULES_CUMULATIVE_EXPIRED = _counter(
    "rules_cumulative_streams_expired_total",
    (),
    "Cumulative streams forgotten (state deleted) after no point for rules.cumulative.max_staleness.",
)
# -- queue: intake and writer --------------------------------------------------------------------
QUEUE_APPEND_DURATION = _histogram(
    "queue_append_duration_seconds", (), "Time a request's append waited for its grouped, synced commit."
)
QUEUE_COMMIT_DURATION = _histogram(
    "queue_commit_duration_seconds",
    (),
    "Time one grouped write transaction took to apply and commit (with fsync when queue.sync is on).",
)
QUEUE_COMMIT_BATCH = _histogram(
    "queue_commit_batch_size",
    (),
    "Operations (appends, acks, dead letters) committed together in one grouped write transaction.",
)
QUEUE_COMMITS = _counter(
    "queue_commits_total",
    (),
    "Grouped write transactions committed since the service started (its intake workers' included).",
)
# -- queue: state at scrape time -----------------------------------------------------------------
QUEUE_DEPTH = _gauge("queue_depth_events", (), "Events stored and not yet delivered.")
QUEUE_SIZE = _gauge("queue_size_bytes", (), "Bytes of events stored and not yet delivered.")
QUEUE_CAPACITY = _gauge("queue_capacity_bytes", (), "Byte limit of the queue; intake is refused beyond it.")
QUEUE_OLDEST_AGE = _gauge(
    "queue_oldest_event_age_seconds", (), "Age of the oldest undelivered event (0 when empty)."
)
QUEUE_LEASED = _gauge(
    "queue_leased_events",
    (),
    "Events handed to the exporter and not yet acknowledged, dead-lettered or released.",
)
QUEUE_FULL = _gauge(
    "queue_full", (), "1 while intake is refused for lack of space (byte limit or disk), else 0."
)
QUEUE_STORAGE_USED = _gauge(
    "queue_storage_used_bytes",
    (),
    "Bytes of storage pages in use (events, dedupe keys, dead letters, state).",
)
QUEUE_STORAGE_CAPACITY = _gauge(
    "queue_storage_capacity_bytes", (), "Size of the storage map: the most the queue's files can hold."
)
QUEUE_DEAD = _gauge("queue_dead_letters", (), "Events and records held in the dead-letter store.")
QUEUE_DEAD_SIZE = _gauge("queue_dead_letter_size_bytes", (), "Bytes held in the dead-letter store.")
QUEUE_DEAD_CAPACITY = _gauge("queue_dead_letter_capacity_bytes", (), "Byte limit of the dead-letter store.")
QUEUE_CORRUPT_HELD = _gauge(
    "queue_corrupt_records", (), "Unreadable records moved aside and kept for inspection."
)
QUEUE_DEDUPE_KEYS = _gauge("queue_dedupe_keys", (), "Pairs of source and id remembered to drop copies.")
# -- queue: the durable ledger, at scrape time ---------------------------------------------------
QUEUE_APPENDED = _counter(
    "queue_appended_events_total",
    (),
    "Events stored in the queue since it was created (copies dropped at append excluded, "
    "dead-letter replays included).",
)
QUEUE_DEDUPLICATED = _counter(
    "queue_deduplicated_events_total",
    (),
    "Events dropped at append as copies of a source and id seen within the dedupe window, since the "
    "queue was created.",
)
QUEUE_DELIVERED = _counter(
    "queue_delivered_events_total", (), "Events the destination acknowledged, since the queue was created."
)
QUEUE_DEAD_LETTERED = _counter(
    "queue_dead_lettered_events_total",
    (),
    "Events moved to the dead-letter store (refused by the destination, or expired), since the "
    "queue was created.",
)
QUEUE_REJECTED = _counter(
    "queue_rejected_records_total",
    (),
    "Dead letters written for records the rules could not map, since the queue was created.",
)
QUEUE_CORRUPT = _counter(
    "queue_corrupt_events_total",
    (),
    "Stored events found unreadable and moved aside, since the queue was created.",
)
QUEUE_REPLAYED = _counter(
    "queue_replayed_events_total",
    (),
    "Events put back into the queue from the dead-letter store, since the queue was created.",
)
QUEUE_DEAD_REMOVED = _counter(
    "queue_dead_letters_removed_total",
    ("action",),
    "Dead letters taken out of the store (action replayed or purged), since the queue was created.",
)
QUEUE_DEDUPE_FORGOTTEN = _counter(
    "queue_dedupe_keys_forgotten_total",
    ("reason",),
    "Dedupe keys forgotten (reason expired at the end of the window, or evicted early for "
    "queue.dedupe_max_keys), since the queue was created.",
)
# -- exporter ------------------------------------------------------------------------------------
EXPORTER_CREATED = _counter(
    "exporter_batches_created_total", EXPORTER, "Batches the exporter leased from the queue to deliver."
)
EXPORTER_SENT_BATCHES = _counter(
    "exporter_sent_batches_total",
    EXPORTER,
    "Batches (or parts of split batches) the destination acknowledged.",
)
EXPORTER_SENT_EVENTS = _counter(
    "exporter_sent_events_total", EXPORTER, "Events the destination acknowledged."
)
EXPORTER_FAILED = _counter(
    "exporter_failed_requests_total",
    (*EXPORTER, "status_class"),
    "Delivery attempts that failed, by status class (network, auth, 429, 4xx, 5xx).",
)
EXPORTER_RETRIES = _counter(
    "exporter_retries_total", EXPORTER, "Delivery attempts that repeated a failed one."
)
EXPORTER_SPLITS = _counter(
    "exporter_batch_splits_total",
    EXPORTER,
    "Refused batches split in two to isolate the events the destination refuses.",
)
EXPORTER_DEAD = _counter(
    "exporter_dead_lettered_events_total",
    EXPORTER,
    "Events the destination refused, or that expired, moved to the dead-letter store.",
)
EXPORTER_IN_FLIGHT = _gauge("exporter_in_flight_batches", EXPORTER, "Batches being delivered now.")
EXPORTER_REQUEST_DURATION = _histogram(
    "exporter_request_duration_seconds",
    EXPORTER,
    "Duration of one delivery attempt (one request to the destination).",
)
EXPORTER_BATCH_DURATION = _histogram(
    "exporter_batch_duration_seconds",
    EXPORTER,
    "Time from leasing a batch to settling it (delivered, dead-lettered or released), retries included.",
)
EXPORTER_LAST_SUCCESS = _gauge(
    "exporter_last_success_timestamp_seconds", EXPORTER, "Unix time of the last acknowledged batch."
)
# -- sources -------------------------------------------------------------------------------------
SOURCE_TICKS_RUN = _counter(
    "source_ticks_run_total",
    SOURCE,
    "Intervals a periodic source completed and committed together with its cursor.",
)
SOURCE_TICKS_CAUGHT_UP = _counter(
    "source_ticks_caught_up_total", SOURCE, "Of the ticks run, those run late to catch up after downtime."
)
SOURCE_TICKS_SKIPPED = _counter(
    "source_ticks_skipped_total",
    SOURCE,
    "Ticks older than max_catch_up, skipped after downtime (each skip is logged).",
)
SOURCE_TICKS_FAILED = _counter(
    "source_ticks_failed_total",
    SOURCE,
    "Tick attempts that failed; the same tick is tried again, never skipped.",
)
SOURCE_OBJECTS = _counter(
    "source_objects_processed_total",
    SOURCE,
    "Units of input a source turned into records (data points of its ticks, or objects read).",
)
SOURCE_CURSOR_LAG = _gauge(
    "source_cursor_lag_seconds", SOURCE, "How far the source's committed cursor is behind the present."
)
SOURCE_OPERATIONS = _counter(
    "source_operations_total",
    (*SOURCE, "operation"),
    "Any other count a source reports, by operation (for example commits_retried, pod_relists, "
    "reads_failed).",
)
SOURCE_GAUGE = _gauge(
    "source_gauge",
    (*SOURCE, "gauge"),
    "Any other level a source reports, by gauge (for example pods_cached).",
)
# -- process -------------------------------------------------------------------------------------
WORKERS = _gauge(
    "workers", (), "Intake worker processes running and listening (service.workers - 1 when all are up)."
)
WORKER_EXITS = _counter(
    "worker_exits_total", (), "Intake worker processes that exited while the service ran (each is restarted)."
)
BUILD_INFO = _gauge(
    "build_info",
    ("version", "native"),
    "Always 1; version names the running otlp-meter, native whether its C extension is used (true) "
    "or pure Python runs (false: no C compiler at install, or OTLP_METER_NATIVE=0).",
)
# Declared by prometheus_client's ProcessCollector and PlatformCollector; listed to be documented.
PROCESS = _declare_all(
    MetricSpec(
        "process_cpu_seconds_total", "counter", (), "Total user and system CPU time spent in seconds."
    ),
    MetricSpec("process_resident_memory_bytes", "gauge", (), "Resident memory size in bytes."),
    MetricSpec("process_virtual_memory_bytes", "gauge", (), "Virtual memory size in bytes."),
    MetricSpec("process_open_fds", "gauge", (), "Number of open file descriptors."),
    MetricSpec("process_max_fds", "gauge", (), "Maximum number of open file descriptors."),
    MetricSpec(
        "process_start_time_seconds", "gauge", (), "Start time of the process since unix epoch in seconds."
    ),
    MetricSpec(
        "python_info",
        "gauge",
        ("implementation", "major", "minor", "patchlevel", "version"),
        "Python platform information",
    ),
)
# -- migration aliases (Redpanda Connect names; untyped so the names stay exact) -----------------
ALIAS_BATCH_CREATED = _alias(
    "batch_created",
    "untyped",
    "Migration alias of batch_created: batches the exporter formed from the queue (sum of "
    "otlp_meter_exporter_batches_created_total).",
)
ALIAS_BATCH_SENT = _alias(
    "batch_sent",
    "untyped",
    "Migration alias of batch_sent: batches the destination acknowledged (sum of "
    "otlp_meter_exporter_sent_batches_total).",
)
ALIAS_BUFFER_RECEIVED = _alias(
    "buffer_batch_received",
    "untyped",
    "Migration alias of buffer_batch_received: request batches committed to the queue (count of "
    "otlp_meter_queue_append_duration_seconds).",
)
ALIAS_BUFFER_SENT = _alias(
    "buffer_batch_sent",
    "untyped",
    "Migration alias of buffer_batch_sent: batches read out of the queue by the exporter (sum "
    "of otlp_meter_exporter_batches_created_total).",
)
ALIAS_BUFFER_LATENCY = _alias(
    "buffer_latency_ns",
    "histogram",
    "Migration alias of buffer_latency_ns: nanoseconds from a batch leaving the queue to its "
    "settlement (otlp_meter_exporter_batch_duration_seconds in nanoseconds).",
)
ALIASES = (
    ALIAS_BATCH_CREATED,
    ALIAS_BATCH_SENT,
    ALIAS_BUFFER_RECEIVED,
    ALIAS_BUFFER_SENT,
    ALIAS_BUFFER_LATENCY,
)


def rule_rejection_reason(detail: str) -> str:
    """The low-cardinality ``reason`` label of a rule rejection, from its message.

    Rejection messages name the event field and what went wrong (``subject: no value at …``); the
    field is configuration and the rest is data, so neither is a label. The wording is pinned by
    a test against the real rules engine.
    """
    if detail.startswith("internal error:"):
        return "internal"
    if detail.startswith("match.expr:"):
        return "match_error"
    if "cannot encode as JSON" in detail:
        return "not_json"
    if ": no value at " in detail or (": expression " in detail and detail.endswith(" is null")):
        return "missing_value"
    return "invalid_value"
