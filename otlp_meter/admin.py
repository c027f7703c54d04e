"""``otlp-meter queue stats`` and ``otlp-meter dlq list | replay | purge``: the queue for an operator.

They run offline or next to the running service, on the same ``--config``:

* ``queue stats`` and ``dlq list`` only read (LMDB readers never block the service, nor it them);
* ``dlq replay`` and ``dlq purge`` write. LMDB serializes their transactions with the service's,
  and the queue re-reads its counters inside every write transaction, so neither process's view
  goes stale; the service's exporter notices replayed events within a second. Only a second
  *service* is refused (the owner lock), because two exporters would send every event twice.

Each handler takes the parsed arguments and returns the exit code: 0 done, 1 the queue could not
do it (no queue, queue full, records still rejected), 2 bad configuration or refused usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.admin_output import Progress, format_stats, format_time, stats_document
from otlp_meter.config import Config, load_config
from otlp_meter.errors import ConfigError, OtlpMeterError
from otlp_meter.events import EncodedEvent, payload_time_ms
from otlp_meter.queue import DeadLetterEntry, LmdbQueue
from otlp_meter.queue.lock import lock_holder
from otlp_meter.queue.types import ReplayItem, ReplayResult
from otlp_meter.rules.engine import RulesEngine
from otlp_meter.telemetry.logging import configure_logging

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

REPLAY_CHUNK = 500
"""Dead letters per replay transaction: each chunk's removals and appends commit together."""
PURGE_CHUNK = 10_000

Handler = Callable[[argparse.Namespace], int]


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_admin_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``queue stats`` and ``dlq list|replay|purge``; each sets ``handler`` (see module doc)."""
    queue = subparsers.add_parser("queue", help="inspect the durable queue")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True)
    stats = queue_sub.add_parser(
        "stats",
        help="depth, bytes, oldest age, dead letters, dedupe keys and the accounting",
        description="Read-only; safe next to the running service.",
    )
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=queue_stats)

    dlq = subparsers.add_parser("dlq", help="dead letters: list, replay, purge")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_sub.add_parser("list", help="dead letters with their reasons, oldest first")
    _common(listing)
    listing.add_argument("--limit", type=_positive, default=50, help="most entries to show (default 50)")
    listing.add_argument("--after", type=int, default=0, metavar="SEQ", help="start after this sequence")
    listing.add_argument("--json", action="store_true", help="one JSON object per line, payload included")
    listing.set_defaults(handler=dlq_list)

    replay = dlq_sub.add_parser(
        "replay",
        help="put dead letters back: events to the queue, rejected records through the rules",
        description="By default refused events go straight back to the queue and rejected records run "
        "through the rules of --config again. Each replayed dead letter is removed in the same "
        "transaction that queues what it became. Exit 1 if some records are still rejected (they "
        "stay dead letters, with the new reason).",
    )
    _common(replay)
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--to-queue", action="store_true", help="only refused events, back to the queue")
    which.add_argument(
        "--through-rules", action="store_true", help="only rejected records, through the rules"
    )
    replay.add_argument("--seq", type=int, action="append", help="only this dead letter (repeatable)")
    replay.add_argument("--limit", type=_positive, help="replay at most this many dead letters")
    replay.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    replay.set_defaults(handler=dlq_replay)

    purge = dlq_sub.add_parser("purge", help="delete dead letters for good")
    _common(purge)
    purge.add_argument("--seq", type=int, action="append", help="only this dead letter (repeatable)")
    purge.add_argument(
        "--yes", action="store_true", help="do not ask (required when stdin is not a terminal)"
    )
    purge.set_defaults(handler=dlq_purge)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the service's YAML config (default: embedded defaults)")


# -- handlers --------------------------------------------------------------------------------------


def queue_stats(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``queue stats``: what is stored, and the accounting that proves nothing went missing."""
    out = out or sys.stdout

    def run(config: Config, queue: LmdbQueue) -> int:
        stats = queue.stats()
        holder = lock_holder(config.queue.path)
        doc = stats_document(stats, config.queue, holder, time.time())
        if args.json:
            out.write(orjson.dumps(doc).decode() + "\n")
        else:
            out.write(format_stats(doc))
        return EXIT_OK

    return _with_queue(args, run, readonly=True)


def dlq_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``dlq list``: one line per dead letter (``--json``: one object, payload included)."""
    out = out or sys.stdout

    def run(_config: Config, queue: LmdbQueue) -> int:
        entries = queue.list_dead(limit=max(0, args.limit), after=args.after)
        total = queue.stats().dead_letters
        for entry in entries:
            if args.json:
                out.write(orjson.dumps(_entry_document(entry)).decode() + "\n")
            else:
                origin = entry.rule or entry.source
                reason = " ".join(entry.reason.split())
                reason = reason if len(reason) <= 160 else reason[:157] + "..."
                line = f"{entry.seq:>8}  {format_time(entry.dead_at)}  {entry.kind:<12} {origin:<24} "
                out.write(line + f"{entry.id or '-':<24} {reason}\n")
        if not args.json:
            shown = f"{len(entries)} of {total} dead letters shown"
            more = f"; next page: --after {entries[-1].seq}" if entries and len(entries) == args.limit else ""
            out.write(f"{shown}{more}\n")
        return EXIT_OK

    return _with_queue(args, run, readonly=True)


def dlq_replay(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``dlq replay``: see the subcommand's description."""
    out, err = out or sys.stdout, err or sys.stderr

    def run(config: Config, queue: LmdbQueue) -> int:
        engine = RulesEngine.from_config(config.rules) if not args.to_queue else None
        return asyncio.run(_replay(queue, engine, args, out, err))

    return _with_queue(args, run, readonly=bool(args.dry_run))


def dlq_purge(args: argparse.Namespace, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """``dlq purge``: delete dead letters after an explicit confirmation."""
    out, stdin = out or sys.stdout, stdin or sys.stdin

    def run(_config: Config, queue: LmdbQueue) -> int:
        upper = queue.last_dead_seq()
        count = len(set(args.seq)) if args.seq else queue.stats().dead_letters
        if count == 0:
            out.write("no dead letters to purge\n")
            return EXIT_OK
        what = f"{count} dead letter{'s' if count != 1 else ''}"
        if not args.yes:
            if not stdin.isatty():
                print(f"refusing to purge {what} without --yes (stdin is not a terminal)", file=sys.stderr)
                return EXIT_USAGE
            out.write(f"Delete {what} for good? Type 'yes' to confirm: ")
            out.flush()
            if stdin.readline().strip().lower() not in ("y", "yes"):
                out.write("nothing purged\n")
                return EXIT_FAILED
        purged = asyncio.run(_purge(queue, args.seq, upper))
        out.write(f"purged {purged} dead letter{'s' if purged != 1 else ''}\n")
        return EXIT_OK

    return _with_queue(args, run, readonly=False)


# -- the work --------------------------------------------------------------------------------------


async def _purge(queue: LmdbQueue, seqs: Sequence[int] | None, upper: int) -> int:
    if seqs:
        return await queue.purge_dead(sorted(set(seqs)))
    # Only what was confirmed: dead letters the service writes meanwhile are above ``upper``.
    purged = 0
    while True:
        page = [e.seq for e in queue.list_dead(limit=PURGE_CHUNK) if e.seq <= upper]
        if not page:
            return purged
        purged += await queue.purge_dead(page)


@dataclasses.dataclass
class _Plan:
    items: list[ReplayItem] = dataclasses.field(default_factory=list)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


async def _replay(
    queue: LmdbQueue, engine: RulesEngine | None, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    upper = queue.last_dead_seq()  # new dead letters (also the ones this replay writes) are above it
    wanted = set(args.seq) if args.seq else None
    budget = args.limit if args.limit is not None else None
    total = len(wanted) if wanted else queue.stats().dead_letters
    progress = Progress(min(total, budget) if budget is not None else total, err)
    done = ReplayResult(replayed=0, appended=0, deduplicated=0, rejected=0, missing=0)
    skipped: dict[str, int] = {}
    after = 0
    while budget is None or budget > 0:
        page = [e for e in queue.list_dead(limit=REPLAY_CHUNK, after=after) if e.seq <= upper]
        if not page:
            break
        after = page[-1].seq
        if wanted is not None:
            page = [e for e in page if e.seq in wanted]
        plan = _plan(page, args, engine)
        if budget is not None:
            plan.items = plan.items[:budget]
        for why, n in plan.skipped.items():
            skipped[why] = skipped.get(why, 0) + n
        if args.dry_run:
            result = _dry_result(plan.items)
        else:
            try:
                result = await queue.replay_dead(plan.items)
            except OtlpMeterError as exc:
                progress.finish()
                print(f"replay stopped: {exc}; {done.replayed} dead letters replayed so far", file=err)
                return EXIT_FAILED
        done = _add(done, result)
        if budget is not None:
            budget -= len(plan.items)
        progress.update(len(page), done)
    progress.finish()
    verb = "would replay" if args.dry_run else "replayed"
    out.write(
        f"{verb} {done.replayed} dead letters: {done.appended} events queued, {done.deduplicated} "
        f"already delivered or queued (deduplicated), {done.rejected} records still rejected\n"
    )
    for why, n in sorted(skipped.items()):
        out.write(f"left in place: {n} {why}\n")
    return EXIT_FAILED if done.rejected else EXIT_OK


def _plan(entries: Sequence[DeadLetterEntry], args: argparse.Namespace, engine: RulesEngine | None) -> _Plan:
    plan = _Plan()
    for entry in entries:
        if entry.kind == "corrupt":
            plan.skip("undecodable dead letters (inspect, then purge)")
        elif entry.kind == "event":
            if args.through_rules:
                continue
            # time_ms from the payload: the requeued event is remembered under the key it had.
            event = EncodedEvent(entry.source, entry.id, entry.payload, payload_time_ms(entry.payload))
            plan.items.append(ReplayItem(dead_seq=entry.seq, events=(event,), requeue=True))
        elif not args.to_queue and engine is not None:
            _plan_record(entry, engine, plan)
    return plan


def _plan_record(entry: DeadLetterEntry, engine: RulesEngine, plan: _Plan) -> None:
    # The dead letter's time stands in for the receive time: the record's fallback event time and
    # id come out as they would have, and the same on every replay.
    received_ns = int(entry.dead_at * 1e9)
    try:
        if entry.kind == "otlp_logs":
            mapped = engine.map_logs(ExportLogsServiceRequest.FromString(entry.payload), received_ns)
        else:
            # Stored points are deltas already (a converted point is kept as its increase), so a
            # fresh, in-memory stream state is right and the service's state is not touched.
            mapped = engine.map_metrics(ExportMetricsServiceRequest.FromString(entry.payload), received_ns)
    except ProtobufDecodeError:
        plan.skip("records that are not valid OTLP (inspect, then purge)")
        return
    if not mapped.events and not mapped.rejected:
        plan.skip("records no rule matches now (change the rules, or purge them)")
        return
    plan.items.append(
        ReplayItem(dead_seq=entry.seq, events=tuple(mapped.events), rejected=tuple(mapped.rejected))
    )


def _dry_result(items: Sequence[ReplayItem]) -> ReplayResult:
    return ReplayResult(
        replayed=len(items),
        appended=sum(len(i.events) for i in items),
        deduplicated=0,
        rejected=sum(len(i.rejected) for i in items),
        missing=0,
    )


def _add(a: ReplayResult, b: ReplayResult) -> ReplayResult:
    return ReplayResult(*(x + y for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)))


def _entry_document(entry: DeadLetterEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "seq": entry.seq,
        "kind": entry.kind,
        "dead_at": format_time(entry.dead_at),
        "reason": entry.reason,
        "rule": entry.rule or None,
        "source": entry.source or None,
        "id": entry.id or None,
        "attempts": entry.attempts,
    }
    try:
        if entry.kind == "event":
            doc["event"] = orjson.loads(entry.payload)
        elif entry.kind == "otlp_logs":
            doc["record"] = json_format.MessageToDict(ExportLogsServiceRequest.FromString(entry.payload))
        elif entry.kind == "otlp_metrics":
            doc["record"] = json_format.MessageToDict(ExportMetricsServiceRequest.FromString(entry.payload))
        else:
            doc["payload_base64"] = base64.b64encode(entry.payload).decode()
    except (orjson.JSONDecodeError, ProtobufDecodeError):
        doc["payload_base64"] = base64.b64encode(entry.payload).decode()
    return doc


def _with_queue(args: argparse.Namespace, run: Callable[[Config, LmdbQueue], int], *, readonly: bool) -> int:
    """Load the config, open its queue (never as the owner), run, close; errors become exit codes."""
    configure_logging("warn", "console")
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    queue = LmdbQueue(config.queue, batch_events=config.exporter.batch.max_events)
    if not queue.exists():
        print(f"there is no queue at {config.queue.path} (nothing was ever stored there)", file=sys.stderr)
        return EXIT_FAILED
    try:
        queue.open(owner=False, readonly=readonly)
    except OtlpMeterError as exc:
        print(f"cannot open the queue: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return run(config, queue)
    except ConfigError as exc:
        print(f"invalid rules:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except OtlpMeterError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        queue.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m otlp_meter.admin queue|dlq ...``: the same commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="otlp-meter", description="queue and dead-letter commands")
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
