"""``queue stats`` and ``dlq list | replay | purge`` on a real queue in a temp dir (offline: the
service-next-door case is covered by tests/unit/queue/test_other_processes.py and the e2e tests)."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from otlp_meter.admin import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_admin_commands
from otlp_meter.cli import main
from otlp_meter.config import load_config
from otlp_meter.queue import LmdbQueue
from otlp_meter.rules import RulesEngine
from tests.unit.queue.test_accounting import balanced
from tests.unit.rules.otlp import T0, log_record, logs_request

RULE: dict[str, Any] = {
    "name": "tokens",
    "match": {"signal": "logs", "where": [{"path": "attributes.tokens", "exists": True}]},
    "event": {
        "type": "prompt",
        "source": "chat",
        "subject": {"path": "attributes.customer"},
        "data": {"tokens": {"path": "attributes.tokens", "as": "int"}},
    },
}
FIXED_RULE = {
    **RULE,
    "event": {**RULE["event"], "subject": {"path": "attributes.customer", "default": "unknown"}},
}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The commands configure otlp-meter's logging for a terminal; put it back for other tests."""
    logger = logging.getLogger("otlp_meter")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def write_config(tmp_path: Path, rule: dict[str, Any] = RULE, name: str = "config.yaml") -> Path:
    document = {
        "queue": {"directory": str(tmp_path / "data"), "sync": False},
        "rules": {"packs": [], "inline": [rule]},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def run(*argv: str, **streams: Any) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="otlp-meter")
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    code: int = args.handler(args, out, **streams)
    return code, out.getvalue()


def open_queue(config: Path) -> LmdbQueue:
    queue = LmdbQueue(load_config(config, {}).queue)
    queue.open()
    return queue


def seed(config: Path, *, refused: int = 1, rejected: int = 1, queued: int = 2) -> None:
    """``queued`` events waiting, ``refused`` events dead-lettered by OpenMeter, ``rejected`` records
    dead-lettered by the rules (no customer)."""
    asyncio.run(_seed(config, refused, rejected, queued))


async def _seed(config: Path, refused: int, rejected: int, queued: int) -> None:
    engine = RulesEngine.from_config(load_config(config, {}).rules)
    records = [log_record({"tokens": n, "customer": f"c{n}"}) for n in range(queued + refused)]
    records += [log_record({"tokens": 100 + n}) for n in range(rejected)]
    mapped = engine.map_logs(logs_request(*records), 1)
    queue = open_queue(config)
    try:
        await queue.append(mapped.events, mapped.rejected)
        leased = queue.lease(max_events=refused, max_bytes=1 << 20) if refused else []
        await queue.dead_letter([(e, "refused by OpenMeter with 400: data.tokens too large") for e in leased])
    finally:
        queue.close()


def stats_of(config: Path) -> dict[str, Any]:
    code, out = run("queue", "stats", "--config", str(config), "--json")
    assert code == EXIT_OK
    document: dict[str, Any] = orjson.loads(out)
    return document


def test_queue_stats_prints_depth_dead_letters_and_a_balanced_accounting(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config, refused=1, rejected=2, queued=3)

    code, text = run("queue", "stats", "--config", str(config))
    doc = stats_of(config)

    assert code == EXIT_OK
    assert "service        not running" in text
    assert "queued         3 events" in text
    assert text.count("OK") == 2  # both balances
    assert (doc["events"]["queued"], doc["dead_letters"]["count"], doc["dedupe"]["keys"]) == (3, 3, 6)
    accounting = doc["accounting"]
    assert (accounting["accepted"], accounting["dead_lettered"], accounting["records_rejected"]) == (4, 1, 2)
    assert (accounting["unaccounted_events"], accounting["unaccounted_dead_letters"]) == (0, 0)
    assert doc["events"]["oldest_age_seconds"] >= 0


def test_queue_stats_without_a_queue_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)

    code, _ = run("queue", "stats", "--config", str(config))

    assert code == EXIT_FAILED
    assert "no queue" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_an_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("queue: {max_bytes: lots}\n")

    assert run("dlq", "list", "--config", str(config))[0] == EXIT_USAGE
    assert "queue.max_bytes" in capsys.readouterr().err


def test_dlq_list_shows_each_dead_letter_with_its_reason(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config)

    code, text = run("dlq", "list", "--config", str(config))
    _, lines = run("dlq", "list", "--config", str(config), "--json")
    entries = [orjson.loads(line) for line in lines.splitlines()]

    assert code == EXIT_OK
    assert "refused by OpenMeter with 400: data.tokens too large" in text
    assert "subject" in text  # the rules' reason for the record
    assert "2 of 2 dead letters shown" in text
    by_kind = {e["kind"]: e for e in entries}
    assert by_kind["event"]["event"]["data"] == {"tokens": 0}
    assert by_kind["event"]["reason"].startswith("refused by OpenMeter")
    record = by_kind["otlp_logs"]["record"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert record["attributes"] == [{"key": "tokens", "value": {"intValue": "100"}}]
    assert by_kind["otlp_logs"]["rule"] == "tokens"


def test_dlq_list_pages(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config, refused=0, rejected=5)

    _, first = run("dlq", "list", "--config", str(config), "--limit", "2")
    _, rest = run("dlq", "list", "--config", str(config), "--after", "2")

    assert "2 of 5 dead letters shown; next page: --after 2" in first
    assert "3 of 5 dead letters shown" in rest


def test_replay_puts_events_back_and_runs_records_through_the_corrected_rules(tmp_path: Path) -> None:
    seed(write_config(tmp_path))
    fixed = write_config(tmp_path, FIXED_RULE, "fixed.yaml")

    code, text = run("dlq", "replay", "--config", str(fixed))

    assert code == EXIT_OK, text
    assert "replayed 2 dead letters: 2 events queued" in text
    doc = stats_of(fixed)
    assert (doc["dead_letters"]["count"], doc["events"]["queued"]) == (0, 4)
    assert doc["accounting"]["replayed"] == 2
    queue = open_queue(fixed)
    try:
        subjects = sorted(orjson.loads(e.payload)["subject"] for e in queue.lease(10, 1 << 20))
        balanced(queue.stats())
    finally:
        queue.close()
    assert subjects == ["c0", "c1", "c2", "unknown"]


def test_records_the_rules_still_reject_stay_dead_letters_and_the_exit_code_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config, refused=0, rejected=1)

    code, text = run("dlq", "replay", "--config", str(config), "--through-rules")

    assert code == EXIT_FAILED
    assert "1 records still rejected" in text
    _, listing = run("dlq", "list", "--config", str(config), "--json")
    [entry] = [orjson.loads(line) for line in listing.splitlines()]
    assert entry["attempts"] == 1


def test_replay_selects_by_kind_sequence_and_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config, refused=2, rejected=2, queued=0)
    fixed = write_config(tmp_path, FIXED_RULE, "fixed.yaml")

    assert run("dlq", "replay", "--config", str(fixed), "--to-queue", "--limit", "1")[0] == EXIT_OK
    assert run("dlq", "replay", "--config", str(fixed), "--seq", "1")[0] == EXIT_OK
    _, listing = run("dlq", "list", "--config", str(fixed), "--json")

    assert [(e["seq"], e["kind"]) for e in map(orjson.loads, listing.splitlines())] == [
        (2, "otlp_logs"),
        (4, "event"),
    ]
    assert stats_of(fixed)["events"]["queued"] == 2


def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config)
    before = stats_of(config)

    code, text = run("dlq", "replay", "--config", str(config), "--dry-run")

    assert "would replay 2 dead letters" in text
    assert code == EXIT_FAILED  # the record would still be rejected by these rules
    after = stats_of(config)
    assert (after["dead_letters"], after["accounting"]) == (before["dead_letters"], before["accounting"])


def test_records_no_rule_matches_now_are_left_in_place(tmp_path: Path) -> None:
    seed(write_config(tmp_path), refused=0, rejected=1)
    other = {**RULE, "match": {"signal": "logs", "where": [{"path": "attributes.other", "exists": True}]}}
    config = write_config(tmp_path, other, "other.yaml")

    code, text = run("dlq", "replay", "--config", str(config))

    assert code == EXIT_OK
    assert "left in place: 1 records no rule matches now" in text
    assert stats_of(config)["dead_letters"]["count"] == 1


def test_a_large_replay_reports_progress(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config, refused=1200, rejected=0, queued=0)
    err = io.StringIO()

    code, text = run("dlq", "replay", "--config", str(config), err=err)

    assert code == EXIT_OK
    assert "replayed 1200 dead letters" in text
    lines = err.getvalue().splitlines()
    assert len(lines) == 3  # one per chunk of 500
    assert lines[-1].startswith("[" + "#" * 30 + "] 1200/1200 dead letters scanned: 1200 replayed")


def test_purge_refuses_without_yes_when_stdin_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    seed(config)

    code, _ = run("dlq", "purge", "--config", str(config), stdin=io.StringIO("yes\n"))

    assert code == EXIT_USAGE
    assert "without --yes" in capsys.readouterr().err
    assert stats_of(config)["dead_letters"]["count"] == 2


def test_purge_asks_on_a_terminal_and_does_only_what_was_confirmed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    seed(config, refused=1, rejected=2)

    declined, text = run("dlq", "purge", "--config", str(config), stdin=Tty("no\n"))
    assert (declined, stats_of(config)["dead_letters"]["count"]) == (EXIT_FAILED, 3)
    assert "Delete 3 dead letters for good?" in text

    one, _ = run("dlq", "purge", "--config", str(config), "--seq", "2", stdin=Tty("yes\n"))
    assert (one, stats_of(config)["dead_letters"]["count"]) == (EXIT_OK, 2)

    code, text = run("dlq", "purge", "--config", str(config), "--yes")
    assert (code, text) == (EXIT_OK, "purged 2 dead letters\n")
    doc = stats_of(config)
    assert (doc["dead_letters"]["count"], doc["accounting"]["dead_purged"]) == (0, 3)
    assert doc["accounting"]["unaccounted_dead_letters"] == 0


def test_every_handler_is_registered(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="otlp-meter")
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    for argv in (["queue", "stats"], ["dlq", "list"], ["dlq", "replay"], ["dlq", "purge"]):
        assert callable(parser.parse_args(argv).handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["dlq", "replay", "--to-queue", "--through-rules"])


def test_writing_commands_do_not_create_a_queue_that_is_not_there(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    assert run("dlq", "replay", "--config", str(config))[0] == EXIT_FAILED
    assert run("dlq", "purge", "--config", str(config), "--yes")[0] == EXIT_FAILED
    assert not (tmp_path / "data").exists()


def test_an_event_put_back_is_remembered_under_the_key_it_had(tmp_path: Path) -> None:
    # The dedupe key holds the event's time: a dead event put back must find the key it had (its
    # time is read from its payload), not add one without a time that a copy would pass by.
    config = write_config(tmp_path)
    seed(config, refused=1, rejected=0, queued=0)
    before = dedupe_keys(config)

    assert run("dlq", "replay", "--config", str(config), "--to-queue")[0] == EXIT_OK

    assert dedupe_keys(config) == before
    [key] = before
    assert int.from_bytes(key[:6], "big") == T0 // 1_000_000


def dedupe_keys(config: Path) -> list[bytes]:
    queue = open_queue(config)
    try:
        h = queue._require_handles()
        with h.env.begin() as txn:
            return [bytes(key) for key, _ in txn.cursor(db=h.dedupe)]
    finally:
        queue.close()


@pytest.mark.parametrize("command", [["dlq", "list"], ["dlq", "replay"]])
@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_a_limit_below_one_is_refused_before_anything_runs(
    command: list[str], limit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--limit", limit])
    assert exited.value.code == 2
    assert "--limit" in capsys.readouterr().err
