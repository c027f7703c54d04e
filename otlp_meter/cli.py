"""``otlp-meter run | check | rules test | queue stats | dlq list|replay|purge | version``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from otlp_meter import __version__
from otlp_meter.admin import add_admin_commands
from otlp_meter.config import Config, read_config_text
from otlp_meter.errors import ConfigError, OtlpMeterError
from otlp_meter.rules.engine import RulesEngine
from otlp_meter.telemetry.logging import configure_logging, get_logger
from otlp_meter.workers import WORKER_COMMAND, ConfigDocument

log = get_logger("cli")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STARTUP = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otlp-meter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the collector")
    run.add_argument("--config", type=Path, help="YAML config file (default: embedded defaults)")
    check = sub.add_parser("check", help="validate a config and its rules, then exit")
    check.add_argument("--config", type=Path, help="YAML config file (default: embedded defaults)")
    sub.add_parser("version", help="print the version")
    _add_rules_commands(sub)
    add_admin_commands(sub)
    return parser


def _add_rules_commands(sub: Any) -> None:
    rules = sub.add_parser("rules", help="work with rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    test = rules_sub.add_parser(
        "test",
        help="show what rules make of an OTLP file; nothing is sent or stored",
        description="Exit codes: 0 every record made events or matched no rule; 1 some records were "
        "rejected; 2 the rules are invalid; 3 the input cannot be read.",
    )
    test.add_argument(
        "--rules", type=Path, action="append", default=[], help="rule file or directory of them (repeatable)"
    )
    test.add_argument(
        "--pack",
        action="append",
        help="shipped pack to load after the rule files (repeatable); default: every pack without --rules",
    )
    test.add_argument(
        "--input", required=True, help="OTLP/JSON (a request, or one per line) or protobuf; - for stdin"
    )
    test.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    test.add_argument("--now", help="receive time, RFC 3339 or Unix nanoseconds (default: now)")
    test.add_argument("--signal", choices=["logs", "metrics"], help="the input's signal if it cannot be told")
    test.add_argument(
        "--initial-value",
        choices=["auto", "keep", "drop"],
        default="keep",
        help="first point of a cumulative stream (default keep: show its whole value; the service "
        "defaults to auto)",
    )


def _read(path: Path | None) -> tuple[Config, ConfigDocument]:
    """The config and the text it was parsed from (intake workers parse that same text)."""
    document = ConfigDocument(read_config_text(path) if path is not None else "", path)
    return document.parse(os.environ), document


def check(path: Path | None) -> int:
    try:
        config, document = _read(path)
        # What ``run`` reads before it starts, read the same way: rule files, token files,
        # certificates, the exporter's target (nothing is opened or bound). Not the sources: they
        # read what only the pod's environment has ($NODE_NAME, $RUNAI_APP_SECRET).
        from otlp_meter.service import Service

        service = Service(config, document=document, with_sources=False)
        engine, target = service.engine, service.target
    except ConfigError as exc:
        print(
            f"invalid configuration ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):",
            file=sys.stderr,
        )
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    print(f"configuration OK: {len(engine.rule_names)} rules; exporter: {target.describe()}")
    return EXIT_OK


def run(path: Path | None) -> int:
    try:
        config, document = _read(path)
        RulesEngine.from_config(config.rules)  # invalid rules: a config error before anything starts
    except ConfigError as exc:
        configure_logging()
        log_config_error(exc)
        return EXIT_CONFIG
    configure_logging(config.telemetry.logs.level, config.telemetry.logs.format)
    if config.service.workers > 1:
        # Workers are spawned by fork + exec: gRPC's fork handlers (for a fork that goes on running
        # gRPC) have nothing to do, and would only log a line for each spawn. Read at import.
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from otlp_meter.service import Service  # imports grpc/uvicorn only when running

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Service(config, document=document).run(stop)

    return serve(main)


def serve(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``main`` on uvloop until it returns; the exit code says how it ended (the primary's and
    an intake worker's alike)."""
    try:
        import uvloop

        uvloop.run(main())
    except ConfigError as exc:
        log_config_error(exc)
        return EXIT_CONFIG
    except (OSError, OtlpMeterError) as exc:  # a port in use, a queue another process holds: no stack
        log.error("startup_failed", error=str(exc))
        return EXIT_STARTUP
    except Exception as exc:
        log.exception("startup_failed", error=repr(exc))
        return EXIT_STARTUP
    return EXIT_OK


def log_config_error(exc: ConfigError) -> None:
    log.error(
        "config_invalid", problems=[f"{p or '<root>'}: {m}" for p, m in exc.problems], source=exc.source
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `otlp-meter dlq list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [WORKER_COMMAND]:  # spawned by `run` with service.workers > 1; not for people
        from otlp_meter.workers import worker_main

        return worker_main(argv[1:])
    args = _parser().parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    if args.command == "rules":
        from otlp_meter.rules.dry_run import rules_test

        return rules_test(args)
    if args.command == "version":
        print(__version__)
        return EXIT_OK
    if args.command == "check":
        return check(args.config)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
