"""``otlp-meter rules test``: what rules make of an OTLP file, as people and scripts read it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otlp_meter.cli import main
from otlp_meter.receivers.otlp_json import encode_response
from otlp_meter.rules.dry_run import InputError, read_requests
from tests.unit.rules.otlp import attributes, log_record, logs_request, metric, metrics_request
from tests.unit.rules.sdk import SdkApp

RULES = """\
rules:
  - name: tokens
    match:
      signal: logs
      where: [{path: attributes.tokens, exists: true}]
    event:
      type: tokens
      subject: {path: attributes.customer}
      data:
        tokens: {path: attributes.tokens, as: int}
"""
NOW = "2024-06-01T00:00:00Z"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules" / "tokens.yaml"
    path.parent.mkdir()
    path.write_text(RULES)
    return path


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def logs_file(tmp_path: Path, name: str = "logs.json", *, protobuf: bool = False) -> Path:
    request = logs_request(
        log_record({"tokens": 12, "customer": "acme"}),
        log_record({"tokens": "many", "customer": "acme"}),
        log_record({"unrelated": True}),
        resource={"service.name": "chat-api"},
    )
    return write(tmp_path, name, request.SerializeToString() if protobuf else encode_response(request))


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["rules", "test", "--format", "json", "--now", NOW, *args])
    return code, orjson.loads(capsys.readouterr().out)


def test_json_report_lists_events_unmatched_and_rejected_records(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run_json(capsys, "--rules", str(rules), "--input", str(logs_file(tmp_path)))
    assert code == 1  # a record was rejected
    [event] = report["events"]
    assert (event["type"], event["subject"], event["source"], event["data"]) == (
        "tokens",
        "acme",
        "chat-api",
        {"tokens": 12},
    )
    [rejected] = report["rejected"]
    assert (rejected["rule"], rejected["reason"]) == ("tokens", "data.tokens: cannot convert 'many' to int")
    record = rejected["record"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert {"key": "tokens", "value": {"stringValue": "many"}} in record["attributes"]
    [unmatched] = report["unmatched"]
    assert unmatched["record"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"] == [
        {"key": "unrelated", "value": {"boolValue": True}}
    ]
    assert report["summary"] == {
        "records": 3,
        "events": 1,
        "matched": {"tokens": 2},
        "unmatched": 1,
        "rejected": 1,
        "cumulative": {},
    }


def test_protobuf_input_and_a_rules_directory(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run_json(
        capsys, "--rules", str(rules.parent), "--input", str(logs_file(tmp_path, "x.pb", protobuf=True))
    )
    assert (code, report["summary"]["events"], report["summary"]["records"]) == (1, 1, 3)
    undetectable = logs_file(tmp_path, "x.bin", protobuf=True)
    code, report = run_json(capsys, "--rules", str(rules), "--input", str(undetectable), "--signal", "logs")
    assert report["summary"]["records"] == 3


def test_json_lines_of_cumulative_exports_show_their_deltas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = SdkApp({"service.name": "chat-api", "customer.id": "acme"})
    histogram = app.meters.get_meter("openai").create_histogram("gen_ai.client.token.usage")
    attrs = {"gen_ai.request.model": "gpt-4o", "gen_ai.token.type": "input"}
    histogram.record(100, attrs)
    first = app.export_metrics()
    histogram.record(50, attrs)
    lines = encode_response(first) + b"\n" + encode_response(app.export_metrics()) + b"\n"
    code, report = run_json(capsys, "--pack", "genai", "--input", str(write(tmp_path, "m.jsonl", lines)))
    assert code == 0
    assert [e["data"]["tokens"] for e in report["events"]] == [100, 50]
    assert report["summary"]["cumulative"] == {"first_kept": 1, "converted": 1}

    later = str(time.time_ns() + 3600 * 10**9)  # the collector "first started" after the app
    code, report = run_json(
        capsys,
        "--pack",
        "genai",
        "--initial-value",
        "auto",
        "--now",
        later,
        "--input",
        str(tmp_path / "m.jsonl"),
    )
    assert [e["data"]["tokens"] for e in report["events"]] == [50]  # the stream began before --now


def test_table_report_for_people(tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["rules", "test", "--rules", str(rules), "--input", str(logs_file(tmp_path)), "--now", NOW]) == 1
    )
    out = capsys.readouterr().out
    assert "EVENTS (1)" in out
    assert "UNMATCHED (1)" in out
    assert "REJECTED (1)" in out
    assert "tokens: data.tokens: cannot convert 'many' to int" in out
    assert "  TIME " in out
    assert '{"tokens":12}' in out


def test_invalid_rules_exit_2_with_the_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        RULES.replace("attributes.tokens, as: int", "attributes.tokens, as: money").encode(),
    )
    assert main(["rules", "test", "--rules", str(bad), "--input", str(logs_file(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "rules[0].event.data.tokens.as: must be one of int, float, number, string, bool" in err


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("missing.json", None, "cannot read"),
        ("x.json", b'{"resourceSpans": []}', "neither resourceLogs nor resourceMetrics"),
        ("x.json", b'{"resourceLogs": [{"scopeLogs": 3}]}', "resourceLogs[0].scopeLogs"),
        ("x.pb", b"\xff\xff\xff", "not OTLP protobuf"),
    ],
)
def test_unreadable_input_exits_3(
    tmp_path: Path,
    rules: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    data: bytes | None,
    message: str,
) -> None:
    path = tmp_path / name if data is None else write(tmp_path, name, data)
    assert main(["rules", "test", "--rules", str(rules), "--input", str(path)]) == 3
    assert message in capsys.readouterr().err


def test_now_is_the_fallback_event_time(
    tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = logs_request(log_record({"tokens": 1, "customer": "a"}, time=0))
    path = write(tmp_path, "t.json", encode_response(request))
    _, report = run_json(capsys, "--rules", str(rules), "--input", str(path))
    assert report["events"][0]["time"] == "2024-06-01T00:00:00Z"
    assert main(["rules", "test", "--rules", str(rules), "--input", str(path), "--now", "soon"]) == 3


@pytest.mark.parametrize(
    "body", [None, "a text body", {"method": "GET", "path": "/", "user": "u"}], ids=["none", "text", "map"]
)
def test_protobuf_logs_are_told_from_metrics_whatever_their_records_hold(body: Any) -> None:
    """The two requests share field numbers down to the record: a log record's body (field 5) read
    as a metric is a gauge. Detection must not take, or fail on, logs for metrics."""
    record = log_record({"k": "v"})
    if isinstance(body, str):
        record.body.string_value = body
    elif isinstance(body, dict):
        record.body.kvlist_value.values.extend(attributes(body))
    data = logs_request(record).SerializeToString()
    [request] = read_requests(data, "export.pb")
    assert isinstance(request, ExportLogsServiceRequest)
    assert request == logs_request(record)


def test_protobuf_metrics_are_still_metrics() -> None:
    m = metric("api.requests", "sum", {"value": 3})
    [request] = read_requests(metrics_request(m).SerializeToString(), "export.pb")
    assert isinstance(request, ExportMetricsServiceRequest)


@pytest.mark.parametrize("data", [b"", b"  \n"])
def test_an_empty_input_is_unreadable_not_a_clean_run(data: bytes) -> None:
    with pytest.raises(InputError, match="empty"):
        read_requests(data, "export.json")
