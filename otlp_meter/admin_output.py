"""What the admin commands print: the ``queue stats`` document and text, and replay progress."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, TextIO

from otlp_meter.queue import QueueConfig, QueueStats
from otlp_meter.queue.types import Accounting, ReplayResult

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
    seconds = int(max(0.0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    parts += [f"{minutes}m"] if minutes or hours or days else []
    return "".join(parts + [f"{secs}s"])


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


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def format_stats(doc: dict[str, Any]) -> str:
    """The text form of :func:`stats_document`."""
    ev, dead, dedupe, storage = doc["events"], doc["dead_letters"], doc["dedupe"], doc["storage"]
    running = f"running (pid {doc['service_pid']})" if doc["service_pid"] else "running"
    oldest = (
        f"{ev['oldest_enqueued_at']} ({_age(ev['oldest_age_seconds'])} ago)"
        if ev["oldest_enqueued_at"]
        else "-"
    )
    lines = [
        f"queue          {doc['path']}",
        f"service        {running if doc['service_running'] else 'not running'}",
        f"queued         {ev['queued']} events, {_size(ev['bytes'])} of {_size(ev['capacity_bytes'])} "
        f"({_percent(ev['bytes'], ev['capacity_bytes'])})",
        f"oldest         {oldest}",
        f"dead letters   {dead['count']}, {_size(dead['bytes'])} of {_size(dead['capacity_bytes'])} "
        f"({_percent(dead['bytes'], dead['capacity_bytes'])})",
        f"dedupe keys    {dedupe['keys']} (max {dedupe['max_keys']}, window {_age(dedupe['window_seconds'])})",
        f"corrupt        {doc['corrupt_records']} records moved aside",
        f"storage        {_size(storage['used_bytes'])} of map {_size(storage['map_size'])} "
        f"({_percent(storage['used_bytes'], storage['map_size'])})",
    ]
    acc = doc.get("accounting")
    if acc is not None:
        lines += _accounting_lines(acc)
    return "\n".join(lines) + "\n"


def _accounting_lines(acc: dict[str, Any]) -> list[str]:
    fields = {f.name for f in dataclasses.fields(Accounting)}
    assert fields <= acc.keys()
    events_ok = "OK" if acc["unaccounted_events"] == 0 else f"MISMATCH by {acc['unaccounted_events']}"
    dead_ok = (
        "OK" if acc["unaccounted_dead_letters"] == 0 else f"MISMATCH by {acc['unaccounted_dead_letters']}"
    )
    return [
        "",
        "accounting (events since the queue was created)",
        f"  accepted       {acc['accepted']:>12}   = delivered + queued + dead-lettered + deduplicated + corrupt",
        f"  delivered      {acc['delivered']:>12}",
        f"  queued         {acc['queued']:>12}",
        f"  dead-lettered  {acc['dead_lettered']:>12}",
        f"  deduplicated   {acc['deduplicated']:>12}",
        f"  corrupt        {acc['corrupt']:>12}",
        f"  balance        {events_ok:>12}   ({acc['replayed']} of the accepted came from dead-letter replays)",
        "dead letters",
        f"  events         {acc['dead_lettered']:>12}   refused by OpenMeter or expired (max_elapsed)",
        f"  records        {acc['records_rejected']:>12}   rejected by the rules",
        f"  replayed       {acc['dead_replayed']:>12}",
        f"  purged         {acc['dead_purged']:>12}",
        f"  balance        {dead_ok:>12}",
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
