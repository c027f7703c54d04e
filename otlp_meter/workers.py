"""Intake workers (``service.workers``): more processes taking data, one process exporting.

One Python process tops out well below what the disk and LMDB can commit, so intake scales over
processes::

    otlp-meter run (the primary)                      intake workers (workers - 1)
      owner lock, exporter, sources, telemetry          receivers on the same ports
      receivers (SO_REUSEPORT) ── the kernel spreads connections ──┘
      pipeline ─┐                                        pipeline ─┐
                ▼                                                  ▼
            one LMDB environment: LMDB serializes the writers, each re-reads the counters inside
            its write transaction; acknowledged only after the synced commit, as always

The primary spawns each worker as ``python -m otlp_meter`` with :data:`WORKER_COMMAND`, and talks
to it over pipes, all of them awaited by the event loops, none polled:

* **lifeline** (the worker's stdin): the primary writes one framed message — the config *text* it
  read (never the file again: an edit since cannot give a worker another config), the addresses
  its receivers actually bound (an endpoint may say port 0) and the worker's slot — and keeps the
  pipe open. EOF means the primary is gone: the worker shuts down. ``PR_SET_PDEATHSIG`` (Linux)
  sends it SIGTERM as well; the pipe also covers a primary that died before the worker set it.
* **control** (worker → primary, newline-delimited JSON): ``ready`` once its receivers listen,
  then ``metrics`` every second and once more when it stops: a snapshot of its intake metrics
  (cumulative, per series; :mod:`otlp_meter.telemetry.peers`), which the primary adds to its own
  on ``/metrics``. The pipe's end (the worker exited) retires the worker's last snapshot into the
  base of its slot, so the sums never drop when it is started again.
* **wake** (worker → primary, shared by all workers): one byte after each commit that appended
  events, written non-blocking and dropped when the pipe is full (one pending byte is enough);
  the primary then wakes its exporter, as its own commits do.

The primary supervises: a worker that exits while the service runs is logged (exit code or
signal) and started again after a capped backoff (the exporter's retry policy); readiness holds
``workers`` not ready until every worker is. At shutdown the workers get SIGTERM together with the
primary's own receivers, finish their in-flight requests (acknowledged only after the commit) and
have up to ``service.shutdown_timeout``, then SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import os
import signal
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from otlp_meter.config import Config, parse_config, parse_config_text
from otlp_meter.exporters.config import RetryConfig
from otlp_meter.exporters.retry import Backoff
from otlp_meter.telemetry.logging import get_logger

if TYPE_CHECKING:  # the CLI imports this module; grpc and prometheus_client only when running
    from otlp_meter.telemetry.health import Check
    from otlp_meter.telemetry.metrics import Metrics

log = get_logger("workers")

WORKER_COMMAND = "__intake-worker"
"""The hidden command line of an intake worker (``python -m otlp_meter __intake-worker ...``)."""

RESTART_BACKOFF = RetryConfig(initial_backoff=0.5, max_backoff=30.0, multiplier=2.0, jitter=0.2)
"""Waits before starting a worker again after it exited: 0.5 s, 1 s, 2 s … capped at 30 s."""
STABLE_AFTER = 60.0
"""A worker that ran this long before it exited starts the backoff afresh."""

_FRAME = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """The config as the primary read it: the file's text and path (None: the embedded defaults),
    and the texts of the rule files it names, as the primary read them when it started (a worker
    started later compiles those, not what the files say by then)."""

    text: str
    path: Path | None
    rule_files: Mapping[str, str] = field(default_factory=dict)

    def parse(self, env: Mapping[str, str]) -> Config:
        if self.path is None:
            return parse_config({}, env, "<defaults>")
        return parse_config_text(self.text, self.path, env)


# -- the worker's side ------------------------------------------------------------------------------


class _Written(asyncio.Protocol):
    """The control pipe's writing end: ``closed`` resolves once the transport flushed and closed."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class WorkerLink:
    """An intake worker's end of the pipes to its primary."""

    def __init__(self, slot: int, control_fd: int, wake_fd: int) -> None:
        self.slot = slot
        self._control_fd = control_fd
        self._wake_fd = wake_fd
        os.set_blocking(wake_fd, False)
        self._control: asyncio.WriteTransport | None = None
        self._written: _Written | None = None
        self._snapshot: Callable[[], Mapping[str, Any]] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._snapshot_failed = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self._control_fd, "wb", buffering=0)
        self._control, self._written = await loop.connect_write_pipe(_Written, pipe)

    def report(self, snapshot: Callable[[], Mapping[str, Any]], interval: float) -> None:
        """Send ``snapshot()`` (the worker's metrics) every ``interval`` seconds until :meth:`finish`."""
        self._snapshot = snapshot
        self._reporter = asyncio.create_task(self._report(interval), name="worker-metrics")

    async def _report(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            # Snapshots are cumulative: while the last one is still buffered (the primary is not
            # reading), this one is skipped rather than queued; the next one carries its counts.
            if self._control is not None and self._control.get_write_buffer_size() == 0:
                self._send_snapshot()

    def _send_snapshot(self) -> None:
        if self._snapshot is None:
            return
        try:
            message = self._snapshot()
        except Exception as exc:  # metrics must never take the intake down
            if not self._snapshot_failed:
                log.exception("worker_metrics_failed", error=repr(exc))
            self._snapshot_failed = True
            return
        self.send(message)

    async def finish(self, flush_within: float = 2.0) -> None:
        """Stop reporting, send the last snapshot and close the control pipe once it is written
        (up to ``flush_within`` seconds: a primary that does not read loses the last interval)."""
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
            self._reporter = None
        self._send_snapshot()
        if self._control is not None and self._written is not None and not self._control.is_closing():
            self._control.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._written.closed), flush_within)

    def wake(self) -> None:
        """Tell the primary that events were appended (its exporter should look)."""
        try:
            os.write(self._wake_fd, b"\x01")
        except BlockingIOError:
            pass  # a byte is pending already: the primary will look anyway
        except OSError:
            pass  # the primary is gone; the lifeline ends this worker

    def send(self, message: Mapping[str, Any]) -> None:
        if self._control is not None and not self._control.is_closing():
            self._control.write(orjson.dumps(message) + b"\n")

    def close(self) -> None:
        if self._control is not None and not self._control.is_closing():
            self._control.close()
        with contextlib.suppress(OSError):
            os.close(self._wake_fd)


def set_parent_death_signal(signum: int) -> bool:
    """Linux ``prctl(PR_SET_PDEATHSIG)``: the kernel sends ``signum`` when the parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the primary closed the pipe")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def frame(message: Mapping[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _FRAME.pack(len(body)) + body


def read_frame(fd: int) -> dict[str, Any]:
    (size,) = _FRAME.unpack(_read_exactly(fd, _FRAME.size))
    message = orjson.loads(_read_exactly(fd, size))
    if not isinstance(message, dict):
        raise ValueError("the primary's message is not an object")
    return message


def with_endpoints(config: Config, endpoints: Mapping[str, str]) -> Config:
    """``config`` with the receivers' endpoints replaced by the addresses the primary bound."""
    r = config.receivers
    otlp = r.otlp
    grpc = otlp.grpc.model_copy(update={"endpoint": endpoints.get("otlp_grpc", otlp.grpc.endpoint)})
    http = otlp.http.model_copy(update={"endpoint": endpoints.get("otlp_http", otlp.http.endpoint)})
    events = r.events_api.model_copy(update={"endpoint": endpoints.get("events_api", r.events_api.endpoint)})
    receivers = r.model_copy(
        update={"otlp": otlp.model_copy(update={"grpc": grpc, "http": http}), "events_api": events}
    )
    return config.model_copy(update={"receivers": receivers})


def worker_main(argv: Sequence[str]) -> int:
    """The intake worker process: receivers, rules, pipeline and the shared queue; nothing else."""
    parser = argparse.ArgumentParser(prog=f"otlp-meter {WORKER_COMMAND}")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--wake-fd", type=int, required=True)
    args = parser.parse_args(argv)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != args.parent:
        return 0  # the primary died before the line above: nobody to work for
    from otlp_meter.cli import EXIT_CONFIG, EXIT_OK, log_config_error, serve
    from otlp_meter.errors import ConfigError
    from otlp_meter.telemetry.logging import configure_logging

    try:
        message = read_frame(0)
        path = Path(message["path"]) if message["path"] else None
        document = ConfigDocument(message["config"], path, dict(message.get("rule_files") or {}))
        config = with_endpoints(document.parse(os.environ), message["endpoints"])
    except EOFError:
        return EXIT_OK
    except ConfigError as exc:
        configure_logging()
        log_config_error(exc)
        return EXIT_CONFIG
    configure_logging(config.telemetry.logs.level, config.telemetry.logs.format, fields={"worker": args.slot})
    link = WorkerLink(args.slot, args.control_fd, args.wake_fd)
    from otlp_meter.service import Service

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def lifeline() -> None:
            try:
                data = os.read(0, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(0)
                log.warning("primary_gone", action="shutting down")
                stop.set()

        os.set_blocking(0, False)
        loop.add_reader(0, lifeline)
        await Service(config, document=document, worker=link).run(stop)

    try:
        return serve(main)
    finally:
        link.close()


# -- the primary's side -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    number: int
    process: asyncio.subprocess.Process | None = None
    link: int = 0
    """The link of the slot's current process (its messages; a dead predecessor's are ignored)."""
    ready: bool = False
    restarts: int = 0
    task: asyncio.Task[None] | None = None
    buffer: bytearray = field(default_factory=bytearray)


class _Control(asyncio.Protocol):
    """Reads one worker process's control pipe: newline-delimited JSON messages. ``link`` names
    the process (a slot's next process gets a new one)."""

    def __init__(self, pool: WorkerPool, slot: _Slot, link: int) -> None:
        self._pool = pool
        self._slot = slot
        self._link = link
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("worker_message_invalid", worker=self._slot.number)
                continue
            if isinstance(message, dict):
                self._pool.on_message(self._slot, message, self._link)

    def connection_lost(self, exc: Exception | None) -> None:
        # Every message of the process was read: its last metrics snapshot is final.
        self._pool.on_control_closed(self._slot, self._link)


class WorkerPool:
    """The primary's intake workers: spawned, watched, restarted, stopped.

    ``endpoints`` are the addresses the primary's receivers bound; ``on_wake`` is called (on the
    loop) when a worker appended events.
    """

    def __init__(
        self,
        count: int,
        document: ConfigDocument,
        endpoints: Mapping[str, str],
        on_wake: Callable[[], None],
        metrics: Metrics,
        *,
        backoff: Backoff | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self._slots = [_Slot(number) for number in range(1, count + 1)]
        self._document = document
        self._endpoints = dict(endpoints)
        self._on_wake = on_wake
        self._metrics = metrics
        self._backoff = backoff or Backoff(RESTART_BACKOFF)
        # -P: the working directory is not put on sys.path, so a worker imports the primary's code,
        # not whatever otlp_meter/ (or a module named like the stdlib's) lies where it was started.
        self._command = list(command or [sys.executable, "-P", "-m", "otlp_meter", WORKER_COMMAND])
        self._stopping = asyncio.Event()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._links = itertools.count(1)
        self._invalid_logged: set[int] = set()

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.returncode is None]

    def start(self) -> None:
        """Spawn every worker (on the running loop); readiness follows as they report."""
        loop = asyncio.get_running_loop()
        _stop_inheritance()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._wake_r, self._drain_wake)
        for slot in self._slots:
            slot.task = asyncio.create_task(self._supervise(slot), name=f"worker-{slot.number}")
        self._observe()

    def check(self) -> Check:
        """The ``workers`` readiness check: every worker started and listening."""
        from otlp_meter.telemetry.health import Check

        ready = [s.number for s in self._slots if s.ready]
        details = {"expected": len(self._slots), "ready": len(ready), "pids": self.pids}
        if len(ready) < len(self._slots):
            missing = [s.number for s in self._slots if not s.ready]
            return Check(False, f"workers not ready: {', '.join(map(str, missing))}", details)
        return Check(True, details=details)

    def on_message(self, slot: _Slot, message: Mapping[str, Any], link: int = 0) -> None:
        kind = message.get("type")
        if kind == "metrics":  # otlp_meter.telemetry.peers.MESSAGE_TYPE
            try:
                self._metrics.peers.update(link, slot.number, message)
            except (ValueError, TypeError) as exc:
                if link not in self._invalid_logged:  # once per process, not every second
                    self._invalid_logged.add(link)
                    log.warning("worker_metrics_invalid", worker=slot.number, error=str(exc))
        elif kind == "ready":
            if link and link != slot.link:
                return  # a message of a process that has exited since: not this slot's readiness
            slot.ready = True
            self._observe()
            log.info("worker_ready", worker=slot.number, pid=message.get("pid"))

    def on_control_closed(self, slot: _Slot, link: int) -> None:
        """A worker process's control pipe ended: keep its last metrics as the slot's base."""
        self._metrics.peers.retire(link)
        self._invalid_logged.discard(link)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker, wait up to ``grace`` seconds, SIGKILL the rest."""
        self._stopping.set()
        for slot in self._slots:
            _signal(slot.process, signal.SIGTERM)
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                for slot in self._slots:
                    if slot.process is not None and slot.process.returncode is None:
                        log.error("worker_stop_timeout", worker=slot.number, pid=slot.process.pid)
                        _signal(slot.process, signal.SIGKILL)
                await asyncio.wait(pending)
        if self._wake_r is not None:
            asyncio.get_running_loop().remove_reader(self._wake_r)
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError, TypeError):
                    os.close(fd)  # type: ignore[arg-type]
            self._wake_r = self._wake_w = None
        self._observe()

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        self._on_wake()

    def _observe(self) -> None:
        self._metrics.workers.set(sum(1 for s in self._slots if s.ready))

    async def _supervise(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping.is_set():
            started = loop.time()
            try:
                process = await self._spawn(slot)
            except Exception as exc:
                log.error("worker_spawn_failed", worker=slot.number, error=repr(exc))
            else:
                if self._stopping.is_set():  # stop() ran while it was being spawned: it missed it
                    _signal(process, signal.SIGTERM)
                code = await process.wait()
                if process.stdin is not None:
                    process.stdin.close()
                slot.ready = False
                slot.process = None
                self._observe()
                if self._stopping.is_set():
                    log.info("worker_stopped", worker=slot.number, pid=process.pid, **_exit(code))
                    return
                self._metrics.worker_exits.inc()
                log.error("worker_exited", worker=slot.number, pid=process.pid, **_exit(code))
            failures = 1 if loop.time() - started >= STABLE_AFTER else failures + 1
            delay = self._backoff.delay(failures)
            log.info("worker_restarting", worker=slot.number, in_seconds=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            slot.restarts += 1

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        assert self._wake_w is not None
        loop = asyncio.get_running_loop()
        control_r, control_w = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                "--slot",
                str(slot.number),
                "--parent",
                str(os.getpid()),
                "--control-fd",
                str(control_w),
                "--wake-fd",
                str(self._wake_w),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(control_w, self._wake_w),
                # Its own session: a terminal's Ctrl-C reaches the primary, which stops the workers
                # in its order, rather than every process at once.
                start_new_session=True,
            )
        except BaseException:
            os.close(control_r)
            raise
        finally:
            os.close(control_w)
        slot.process = process
        slot.link = link = next(self._links)
        try:
            await loop.connect_read_pipe(
                lambda: _Control(self, slot, link), os.fdopen(control_r, "rb", buffering=0)
            )
            assert process.stdin is not None
            path = self._document.path
            message = {
                "config": self._document.text,
                "path": str(path) if path else None,
                "rule_files": dict(self._document.rule_files),
            }
            process.stdin.write(frame({**message, "endpoints": self._endpoints, "slot": slot.number}))
            # The pipe stays open: its end is how the worker learns that the primary is gone.
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
        except BaseException:  # not supervised: it must not run on (the slot spawns another)
            _signal(process, signal.SIGKILL)
            await process.wait()
            slot.process = None
            raise
        log.info("worker_started", worker=slot.number, pid=process.pid)
        return process


def _stop_inheritance() -> None:
    """Make every descriptor the primary holds close on exec: the workers get what ``pass_fds``
    names and nothing else (uvloop's subprocesses do not implement ``close_fds``), so a pipe or
    socket the primary inherited from whatever started it does not live on in every worker."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                    if os.get_inheritable(fd):
                        os.set_inheritable(fd, False)


def _signal(process: asyncio.subprocess.Process | None, signum: int) -> None:
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _exit(code: int) -> dict[str, Any]:
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
        return {"signal": -code}
    return {"exit_code": code}
