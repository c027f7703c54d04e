"""``otlp-meter run | check | version``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from otlp_meter import __version__
from otlp_meter.config import Config, load_config
from otlp_meter.errors import ConfigError
from otlp_meter.exporters.config import resolve_target
from otlp_meter.rules.engine import RulesEngine
from otlp_meter.telemetry.logging import configure_logging, get_logger

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
    return parser


def _load(path: Path | None) -> tuple[Config, RulesEngine]:
    config = load_config(path, os.environ)
    return config, RulesEngine.from_config(config.rules)


def check(path: Path | None) -> int:
    try:
        config, engine = _load(path)
    except ConfigError as exc:
        print(
            f"invalid configuration ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):",
            file=sys.stderr,
        )
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    target = resolve_target(config.exporter, config.queue.directory, os.environ)
    print(f"configuration OK: {len(engine.rule_names)} rules; exporter: {target.describe()}")
    return EXIT_OK


def run(path: Path | None) -> int:
    try:
        config, _ = _load(path)
    except ConfigError as exc:
        configure_logging()
        log.error(
            "config_invalid", problems=[f"{p or '<root>'}: {m}" for p, m in exc.problems], source=exc.source
        )
        return EXIT_CONFIG
    configure_logging(config.telemetry.logs.level, config.telemetry.logs.format)
    from otlp_meter.service import Service  # imports grpc/uvicorn only when running

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Service(config).run(stop)

    try:
        import uvloop

        uvloop.run(main())
    except ConfigError as exc:
        log.error(
            "config_invalid", problems=[f"{p or '<root>'}: {m}" for p, m in exc.problems], source=exc.source
        )
        return EXIT_CONFIG
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        return EXIT_STARTUP
    except Exception as exc:
        log.exception("startup_failed", error=repr(exc))
        return EXIT_STARTUP
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return EXIT_OK
    if args.command == "check":
        return check(args.config)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
