"""One writer thread groups concurrent appends into few synced commits; close() never hangs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from otlp_meter.errors import ShuttingDownError
from otlp_meter.queue import AppendResult, LmdbQueue, QueueConfig
from otlp_meter.queue.writer import Writer
from tests.unit.queue.conftest import FakeClock, QueueFactory, events


async def test_concurrent_appends_share_fewer_commits_than_appends(make_queue: QueueFactory) -> None:
    queue = make_queue(sync=True)
    commits_before = queue.stats().commits_total

    results = await asyncio.gather(*(queue.append(events(n * 10, n * 10 + 10)) for n in range(50)))

    assert all(r.appended == 10 for r in results)
    assert queue.stats().depth == 500
    assert queue.stats().commits_total - commits_before < 50


async def test_a_refused_append_fails_alone_and_the_rest_of_its_group_commits(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue(max_bytes=5_000)

    small, big = await asyncio.gather(
        queue.append(events(0, 2)), queue.append(events(2, 100, size=300)), return_exceptions=True
    )

    assert small == AppendResult(appended=2, deduplicated=0, dead_lettered=0)
    assert isinstance(big, Exception)
    assert queue.stats().depth == 2


async def test_close_completes_appends_already_submitted(queue: LmdbQueue) -> None:
    tasks = [asyncio.create_task(queue.append(events(n, n + 1))) for n in range(20)]
    await asyncio.sleep(0)  # let every task submit its append

    queue.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)

    assert all(isinstance(r, AppendResult) and r.appended == 1 for r in results)


async def test_close_with_appends_in_every_state_does_not_hang(queue: LmdbQueue) -> None:
    early = [asyncio.create_task(queue.append(events(n, n + 1))) for n in range(10)]
    await asyncio.sleep(0)
    late = [asyncio.create_task(queue.append(events(n, n + 1))) for n in range(10, 20)]

    queue.close()
    results = await asyncio.wait_for(asyncio.gather(*early, *late, return_exceptions=True), timeout=10)

    assert all(isinstance(r, AppendResult) for r in results[:10])
    assert all(isinstance(r, ShuttingDownError) for r in results[10:])


async def test_appends_after_close_are_refused_as_shutting_down(queue: LmdbQueue) -> None:
    queue.close()

    with pytest.raises(ShuttingDownError):
        await queue.append(events(0, 1))
    with pytest.raises(ShuttingDownError):
        queue.lease(max_events=1, max_bytes=1)


async def test_close_is_idempotent(queue: LmdbQueue) -> None:
    queue.close()
    queue.close()


async def test_stats_after_close_report_the_last_known_values(queue: LmdbQueue) -> None:
    await queue.append(events(0, 3))

    queue.close()

    assert queue.stats().depth == 3


async def test_a_cancelled_append_does_not_break_the_writer(queue: LmdbQueue) -> None:
    task = asyncio.create_task(queue.append(events(0, 1)))
    await asyncio.sleep(0)
    task.cancel()

    assert (await queue.append(events(1, 2))).appended == 1
    assert task.cancelled()


async def test_a_commit_observer_that_fails_neither_hangs_the_waiters_nor_stops_the_queue(
    tmp_path: Path, clock: FakeClock
) -> None:
    commits: list[int] = []

    def observer(seconds: float, operations: int) -> None:
        commits.append(operations)
        raise RuntimeError("a bug in a metrics callback")

    config = QueueConfig.model_validate({"directory": tmp_path, "sync": False})
    queue = LmdbQueue(config, clock=clock, on_commit=observer)
    queue.open()
    try:
        for n in range(3):
            assert (await asyncio.wait_for(queue.append(events(n, n + 1)), 10)).appended == 1
        assert queue.writable
        assert queue.stats().depth == 3
    finally:
        queue.close()  # joins the writer: the observer has seen every commit
    assert commits == [1, 1, 1]


async def test_a_writer_that_breaks_after_a_commit_answers_its_waiters_and_reports_itself_stopped(
    queue: LmdbQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the ledger update")

    monkeypatch.setattr(Writer, "_record", broken)
    assert (await asyncio.wait_for(queue.append(events(0, 1)), 10)).appended == 1  # durable: answered
    writer = queue._writer
    assert writer is not None
    writer._thread.join(10)
    assert not queue.writable  # the service's readiness says "queue writer stopped"
    with pytest.raises(ShuttingDownError):
        await queue.append(events(1, 2))
