"""The dry run behind ``otlp-meter rules test``: what would these rules make of this input?

It reads OTLP export requests from a file (OTLP/JSON as the specification defines it, one request
or one per line as the Collector's file exporter writes them; or binary protobuf), maps them with
the same :class:`~otlp_meter.rules.engine.RulesEngine` the service uses, with the time given and
fresh in-memory stream states (requests of one file share them, in order, so a file of successive
cumulative exports shows their deltas), and reports the events, the unmatched records and the
rejections with their reasons. Nothing is sent or stored.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.errors import ConfigError, DecodeError
from otlp_meter.receivers.otlp_json import decode_logs_request, decode_metrics_request, encode_response
from otlp_meter.rules.engine import MappingResult, RulesEngine
from otlp_meter.rules.model import SHIPPED_PACKS, CumulativeConfig, RulesConfig
from otlp_meter.rules.values import parse_rfc3339

InputSignal = Literal["logs", "metrics"]
Request = ExportLogsServiceRequest | ExportMetricsServiceRequest

_JSON_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson"})
_PROTOBUF_SUFFIXES = frozenset({".pb", ".binpb", ".bin", ".protobuf"})
_RULE_SUFFIXES = frozenset({".yaml", ".yml"})


class InputError(ValueError):
    """The input file cannot be read as OTLP logs or metrics."""


def rule_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories as their ``*.yaml``/``*.yml`` files in name order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in _RULE_SUFFIXES and p.is_file())
        else:
            out.append(path)
    return out


def read_requests(data: bytes, name: str = "", signal: InputSignal | None = None) -> list[Request]:
    """The export requests in ``data`` (the file's ``name`` helps tell JSON from protobuf)."""
    if not data.strip():  # a truncated export must not pass for a clean run
        raise InputError("the input is empty: no export request in it")
    suffix = Path(name).suffix.lower()
    if suffix in _JSON_SUFFIXES or (suffix not in _PROTOBUF_SUFFIXES and data.lstrip()[:1] == b"{"):
        return _read_json(data, signal)
    return [_read_protobuf(data, signal)]


def _read_json(data: bytes, signal: InputSignal | None) -> list[Request]:
    try:
        documents = [orjson.loads(data)]
    except orjson.JSONDecodeError:  # JSON Lines: one request per line
        documents = []
        for number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                try:
                    documents.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"line {number}: invalid JSON: {exc}") from None
    requests: list[Request] = []
    for number, document in enumerate(documents, 1):
        where = f"request {number}: " if len(documents) > 1 else ""
        kind = signal or _json_signal(document)
        if kind is None:
            raise InputError(f"{where}neither resourceLogs nor resourceMetrics at the top level")
        body = orjson.dumps(document)
        try:
            requests.append(decode_logs_request(body) if kind == "logs" else decode_metrics_request(body))
        except DecodeError as exc:
            raise InputError(f"{where}{exc}") from None
    return requests


def _json_signal(document: Any) -> InputSignal | None:
    if not isinstance(document, dict):
        return None
    if "resourceLogs" in document or "resource_logs" in document:
        return "logs"
    if "resourceMetrics" in document or "resource_metrics" in document:
        return "metrics"
    return None


def _read_protobuf(data: bytes, signal: InputSignal | None) -> Request:
    """The request in ``data``; without ``signal``, whichever of the two reads it as it was written.

    Both requests share field numbers down to the record, so either may parse the other's bytes:
    read as the wrong type, a record's fields do not fit (a log record's time is field 1 as a
    fixed64, a metric's name is field 1 as text) and end up unknown fields, or the parse fails.
    """
    kinds: tuple[type[Request], ...] = (
        (ExportLogsServiceRequest,)
        if signal == "logs"
        else (ExportMetricsServiceRequest,)
        if signal == "metrics"
        else (ExportLogsServiceRequest, ExportMetricsServiceRequest)
    )
    parsed: list[Request] = []
    errors: list[str] = []
    for kind in kinds:
        try:
            parsed.append(kind.FromString(data))
        except ProtobufDecodeError as exc:
            errors.append(f"{kind.__name__}: {exc}")
    if not parsed:
        raise InputError(f"not OTLP protobuf: {'; '.join(errors)}")
    if len(parsed) == 1:
        return parsed[0]
    whole = [request for request in parsed if not _has_unknown_fields(request)]
    if len(whole) == 1:
        return whole[0]
    metrics = next(r for r in parsed if isinstance(r, ExportMetricsServiceRequest))
    return (
        metrics
        if _has_metric_data(metrics)
        else next(r for r in parsed if isinstance(r, ExportLogsServiceRequest))
    )


def _has_unknown_fields(request: Request) -> bool:
    copy = type(request)()
    copy.CopyFrom(request)  # type: ignore[arg-type]
    copy.DiscardUnknownFields()
    return copy.ByteSize() != request.ByteSize()


def _has_metric_data(request: ExportMetricsServiceRequest) -> bool:
    # Both requests parse either encoding (same field numbers up to the record); a log record read
    # as a Metric has no data type set, a real metric always has one.
    return any(
        metric.WhichOneof("data") is not None
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


@dataclass
class Report:
    """Everything a dry run found, in input order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    cumulative: dict[str, int] = field(default_factory=dict)

    def add(self, result: MappingResult, signal: InputSignal) -> None:
        self.events += [orjson.loads(event.payload) for event in result.events]
        self.unmatched += [
            {"signal": signal, "record": _otlp_json(signal, raw)} for raw in result.unmatched_records or []
        ]
        self.rejected += [
            {"rule": r.rule, "reason": r.reason, "signal": signal, "record": _otlp_json(signal, r.original)}
            for r in result.rejected
        ]
        self.records += result.records
        for totals, counts in ((self.matched, result.matched), (self.cumulative, result.cumulative)):
            for key, count in counts.items():
                totals[key] = totals.get(key, 0) + count

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "events": len(self.events),
            "matched": self.matched,
            "unmatched": len(self.unmatched),
            "rejected": len(self.rejected),
            "cumulative": self.cumulative,
        }


def _otlp_json(signal: InputSignal, raw: bytes) -> Any:
    message: Message = (
        ExportLogsServiceRequest.FromString(raw)
        if signal == "logs"
        else ExportMetricsServiceRequest.FromString(raw)
    )
    return orjson.loads(encode_response(message))


def run(engine: RulesEngine, requests: Sequence[Request], now_ns: int) -> Report:
    """Map ``requests`` in order with one fresh set of stream states; nothing is stored."""
    report = Report()
    states = engine.stream_states(None, now_ns)
    for request in requests:
        if isinstance(request, ExportLogsServiceRequest):
            report.add(engine.map_logs(request, now_ns, keep_unmatched=True), "logs")
        else:
            report.add(engine.map_metrics(request, now_ns, states, keep_unmatched=True), "metrics")
    return report


def render_json(report: Report) -> str:
    """The report as one JSON document: events, unmatched, rejected, summary."""
    document = {
        "events": report.events,
        "unmatched": report.unmatched,
        "rejected": report.rejected,
        "summary": report.summary(),
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def render_table(report: Report) -> str:
    """The report for people: one line per event, then the unmatched and rejected records."""
    lines = [f"EVENTS ({len(report.events)})"]
    if report.events:
        rows = [
            (e["time"], e["type"], e["subject"], e["source"], e["id"], orjson.dumps(e["data"]).decode())
            for e in report.events
        ]
        lines += _table(("TIME", "TYPE", "SUBJECT", "SOURCE", "ID", "DATA"), rows)
    lines += ["", f"UNMATCHED ({len(report.unmatched)})"]
    lines += [f"  {u['signal']}: {orjson.dumps(u['record']).decode()}" for u in report.unmatched]
    lines += ["", f"REJECTED ({len(report.rejected)})"]
    for r in report.rejected:
        lines += [f"  {r['rule']}: {r['reason']}", f"    {r['signal']}: {orjson.dumps(r['record']).decode()}"]
    summary = report.summary()
    lines += ["", "SUMMARY", *(f"  {key}: {_plain(value)}" for key, value in summary.items())]
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _table(header: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


# --- the command ---------------------------------------------------------------------------------

EXIT_OK = 0
"""Every record made events or matched no rule."""
EXIT_REJECTED = 1
"""Some records were rejected (the report says which and why)."""
EXIT_RULES = 2
"""The rules are invalid (the same problems ``otlp-meter check`` reports)."""
EXIT_INPUT = 3
"""The input cannot be read as OTLP logs or metrics."""


def rules_test(args: Any) -> int:
    """``otlp-meter rules test``: parse arguments as ``cli.py`` defines them; print; return the exit code."""
    try:
        now_ns = _now_ns(args.now)
    except ValueError as exc:
        print(f"--now: {exc}", file=sys.stderr)
        return EXIT_INPUT
    packs = args.pack if args.pack is not None else ([] if args.rules else list(SHIPPED_PACKS))
    try:
        config = RulesConfig(
            packs=packs,
            files=rule_files(args.rules),
            cumulative=CumulativeConfig(initial_value=args.initial_value),
        )
        engine = RulesEngine.from_config(config)
    except ConfigError as exc:
        print(
            f"invalid rules ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):",
            file=sys.stderr,
        )
        print(str(exc), file=sys.stderr)
        return EXIT_RULES
    try:
        data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
        requests = read_requests(data, args.input, args.signal)
    except (OSError, InputError) as exc:
        print(f"cannot read {args.input}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    report = run(engine, requests, now_ns)
    print(render_json(report) if args.format == "json" else render_table(report))
    return EXIT_REJECTED if report.rejected else EXIT_OK


def _now_ns(text: str | None) -> int:
    if text is None:
        return time.time_ns()
    if text.strip().isdigit():
        return int(text)
    return parse_rfc3339(text)
