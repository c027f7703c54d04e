"""The primary's worker pool: spawning and stopping intake processes, with stand-in workers.

A stand-in is a small Python script in place of ``otlp-meter worker``: the pool's side (spawn,
signal, wait, what the child inherits) is what is under test here; the real worker is in
tests/e2e/test_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import uvloop

from otlp_meter.telemetry.metrics import Metrics
from otlp_meter.workers import ConfigDocument, WorkerPool, _Control, _Slot
from tests.support.service import wait_until


def pool_of(script: Path, count: int = 1) -> WorkerPool:
    return WorkerPool(
        count,
        ConfigDocument("", None),
        {},
        lambda: None,
        Metrics(process=False),
        command=[sys.executable, str(script)],
    )


@pytest.mark.parametrize("turns", [0, 1, 2, 5, 20])
async def test_a_worker_still_being_spawned_when_the_pool_stops_is_stopped_with_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, turns: int
) -> None:
    """``stop`` may come while a spawn is in flight (a SIGTERM right after start): the process
    that appears after it must get the SIGTERM too, not serve on until the grace period ends."""
    script = tmp_path / "worker.py"
    script.write_text("import time\ntime.sleep(120)\n")
    pool = pool_of(script, 2)
    pool.start()
    for _ in range(turns):
        await asyncio.sleep(0)
    await asyncio.wait_for(pool.stop(60.0), 30.0)
    assert "worker_stop_timeout" not in caplog.text
    assert pool.pids == []


def test_a_worker_inherits_no_descriptor_of_the_primary_but_the_pipes_it_is_given(tmp_path: Path) -> None:
    """uvloop (what the service runs on) does not close descriptors when it spawns: the pool
    makes everything it holds close on exec first."""
    listing = tmp_path / "fds"
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, time\n"
        f"open({str(listing)!r}, 'w').write(' '.join(os.listdir('/proc/self/fd')))\n"
        "time.sleep(120)\n"
    )
    inherited_r, inherited_w = os.pipe()
    os.set_inheritable(inherited_w, True)  # like a pipe the primary got from whatever started it

    async def main() -> None:
        pool = pool_of(script)
        pool.start()
        await asyncio.to_thread(
            wait_until, lambda: listing.exists() and listing.read_text() != "", 20, "spawned"
        )
        await pool.stop(10.0)

    try:
        uvloop.run(main())
        # (libuv's child keeps copies of its own stdio: those are not the primary's)
        assert inherited_w not in {int(fd) for fd in listing.read_text().split()}
    finally:
        os.close(inherited_r)
        os.close(inherited_w)


def test_a_ready_message_of_a_process_that_has_exited_does_not_make_its_slot_ready() -> None:
    pool = pool_of(Path("unused"))
    slot = _Slot(1, link=8)  # the slot's process now: link 8; link 7 was its predecessor
    _Control(pool, slot, 7).data_received(b'{"type":"ready","pid":1}\n')
    assert not slot.ready
    _Control(pool, slot, 8).data_received(b'{"type":"ready","pid":2}\n')
    assert slot.ready


def test_workers_are_started_without_the_working_directory_on_their_path(tmp_path: Path) -> None:
    """``python -m`` would import an ``otlp_meter`` lying in the directory the service runs in."""
    pool = WorkerPool(1, ConfigDocument("", None), {}, lambda: None, Metrics(process=False))
    command = pool._command
    assert command[:4] == [sys.executable, "-P", "-m", "otlp_meter"]
