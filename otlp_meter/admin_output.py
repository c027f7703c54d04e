"""What the admin commands print: the ``queue stats`` document and text, and replay progress."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, TextIO

from otlp_meter.queue import QueueConfig, QueueStats
from otlp_meter.queue.types import ReplayResult

_BAR_WIDTH = 30
_QUIET_BELOW = 1000
"""Replays smaller than this print no progress lines unless on a terminal: the summary says it all."""


def format_time(unix: float) -> str:
    if unix <= 0:
        return "-"
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _age(seconds: float) -> str:
    """``1d2h``, ``5m3s``, ``0s``: the non-zero units, largest first."""
    rest = int(max(0.0, seconds))
    parts = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        value, rest = divmod(rest, length)
        if value:
            parts.append(f"{value}{unit}")
    return "".join(parts) or "0s"


def stats_document(stats: QueueStats, config: QueueConfig, holder: int | None, now: float) -> dict[str, Any]:
    """``queue stats --json``: the snapshot plus what the operator checks (the identities)."""
    accounting = stats.accounting
    oldest = stats.oldest_enqueued_at
    doc: dict[str, Any] = {
        "path": str(config.path),
        "service_running": holder is not None,
        "service_pid": holder or None,
        "events": {
            "queued": stats.depth,
            "bytes": stats.bytes,
            "capacity_bytes": stats.capacity_bytes,
            "oldest_enqueued_at": format_time(oldest) if oldest is not None else None,
            "oldest_age_seconds": round(now - oldest, 3) if oldest is not None else None,
        },
        "dead_letters": {
            "count": stats.dead_letters,
            "bytes": stats.dead_bytes,
            "capacity_bytes": stats.dead_capacity_bytes,
        },
        "dedupe": {
            "keys": stats.dedupe_keys,
            "max_keys": config.dedupe_max_keys,
            "window_seconds": config.dedupe_window,
        },
        "corrupt_records": stats.corrupt_records,
        "storage": {"used_bytes": stats.storage_used_bytes, "map_size": stats.map_size},
    }
    if accounting is not None:
        doc["accounting"] = dataclasses.asdict(accounting)
        doc["accounting"]["queued"] = stats.depth
        doc["accounting"]["unaccounted_events"] = accounting.unaccounted_events(stats.depth)
        doc["accounting"]["unaccounted_dead_letters"] = accounting.unaccounted_dead_letters(
            stats.dead_letters
        )
    return doc


def format_stats(doc: dict[str, Any]) -> str:
    """The text form of :func:`stats_document`."""
    ev, dead, dedupe, storage = doc["events"], doc["dead_letters"], doc["dedupe"], doc["storage"]
    running = f"running (pid {doc['service_pid']})" if doc["service_pid"] else "running"
    oldest = "-"
    if ev["oldest_enqueued_at"]:
        oldest = f"{ev['oldest_enqueued_at']} ({_age(ev['oldest_age_seconds'])} ago)"
    queued = f"{ev['queued']} events, {_usage(ev['bytes'], ev['capacity_bytes'])}"
    window = _age(dedupe["window_seconds"])
    lines = [
        f"queue          {doc['path']}",
        f"service        {running if doc['service_running'] else 'not running'}",
        f"queued         {queued}",
        f"oldest         {oldest}",
        f"dead letters   {dead['count']}, {_usage(dead['bytes'], dead['capacity_bytes'])}",
        f"dedupe keys    {dedupe['keys']} (max {dedupe['max_keys']}, window {window})",
        f"corrupt        {doc['corrupt_records']} records moved aside",
        f"storage        {_usage(storage['used_bytes'], storage['map_size'])} (LMDB map)",
    ]
    acc = doc.get("accounting")
    if acc is not None:
        lines += _accounting_lines(acc)
    return "\n".join(lines) + "\n"


def _usage(used: int, limit: int) -> str:
    share = f"{100.0 * used / limit:.1f}%" if limit else "-"
    return f"{_size(used)} of {_size(limit)} ({share})"


def _balance(mismatch: int) -> str:
    return "OK" if mismatch == 0 else f"MISMATCH by {mismatch}"


def _accounting_lines(acc: dict[str, Any]) -> list[str]:
    return [
        "",
        "accounting (events since the queue was created)",
        f"  accepted       {acc['accepted']:>12}   "
        "= delivered + queued + dead-lettered + deduplicated + corrupt",
        f"  delivered      {acc['delivered']:>12}",
        f"  queued         {acc['queued']:>12}",
        f"  dead-lettered  {acc['dead_lettered']:>12}",
        f"  deduplicated   {acc['deduplicated']:>12}",
        f"  corrupt        {acc['corrupt']:>12}",
        f"  balance        {_balance(acc['unaccounted_events']):>12}   "
        f"({acc['replayed']} of the accepted came from dead-letter replays)",
        "dead letters",
        f"  events         {acc['dead_lettered']:>12}   refused by OpenMeter or expired (max_elapsed)",
        f"  records        {acc['records_rejected']:>12}   rejected by the rules",
        f"  replayed       {acc['dead_replayed']:>12}",
        f"  purged         {acc['dead_purged']:>12}",
        f"  balance        {_balance(acc['unaccounted_dead_letters']):>12}",
        f"dedupe keys expired {acc['dedupe_expired']}, evicted early {acc['dedupe_evicted']}",
        "Records no rule matched are not stored: see otlp_meter_rules_unmatched_records_total in /metrics.",
    ]


class Progress:
    """Replay progress on ``stream``: a redrawn bar on a terminal, else a line per chunk when large."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 0)
        self.scanned = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._drawn = False

    def update(self, scanned: int, done: ReplayResult) -> None:
        self.scanned += scanned
        if not self._tty and self.total < _QUIET_BELOW:
            return
        total = max(self.total, self.scanned)
        filled = _BAR_WIDTH * self.scanned // total if total else _BAR_WIDTH
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        text = (
            f"[{bar}] {self.scanned}/{total} dead letters scanned: {done.replayed} replayed, "
            f"{done.appended} events queued, {done.rejected} still rejected"
        )
        if self._tty:
            self._stream.write("\r" + text)
            self._drawn = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
