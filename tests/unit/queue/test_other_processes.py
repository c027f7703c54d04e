"""One service owns a queue directory; admin commands read and write it next to the service.

The owner lock keeps a second exporting process out; writes from another process (a dead-letter
replay or purge) are serialized by LMDB and seen by the owner, whose counters are re-read from disk.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otlp_meter.errors import StorageError
from otlp_meter.queue import LmdbQueue, QueueConfig
from otlp_meter.queue.lock import lock_holder
from tests.unit.queue.conftest import QueueFactory, events, rejection
from tests.unit.queue.test_accounting import balanced


def in_another_process(directory: Path, body: str, *, readonly: bool = False) -> str:
    """Run ``body`` (async, with ``queue`` opened as an admin command opens it) in a new process.

    In another process because LMDB allows one open of an environment per process.
    """
    script = textwrap.dedent(
        """
        import asyncio, sys
        from otlp_meter.errors import StorageError
        from otlp_meter.events import EncodedEvent
        from otlp_meter.queue import LmdbQueue, QueueConfig
        from otlp_meter.queue.types import ReplayItem

        async def main(queue):
        {body}

        queue = LmdbQueue(QueueConfig(directory=sys.argv[1], sync=False, dedupe_max_keys=100_000))
        queue.open(owner=False, readonly=sys.argv[2] == "1")
        try:
            asyncio.run(main(queue))
        finally:
            queue.close()
        """
    ).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    done = subprocess.run(
        [sys.executable, "-c", script, str(directory), "1" if readonly else "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_second_owner_is_refused_while_the_first_holds_the_queue(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    make_queue()
    assert lock_holder(tmp_path / "queue") is not None

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from otlp_meter.queue import LmdbQueue, QueueConfig\n"
            "LmdbQueue(QueueConfig(directory=sys.argv[1])).open()",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert "another otlp-meter process" in done.stderr
    assert "send every event twice" in done.stderr


def test_the_lock_is_released_on_close(make_queue: QueueFactory, tmp_path: Path) -> None:
    make_queue().close()

    assert lock_holder(tmp_path / "queue") is None
    make_queue()  # and taken again


async def test_a_replay_by_another_process_is_leased_by_the_owner_with_exact_counters(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    owner = make_queue()
    await owner.append(events(0, 3))
    leased = owner.lease(max_events=3, max_bytes=1 << 20)
    await owner.dead_letter([(leased[1], "HTTP 400: bad")])

    in_another_process(
        tmp_path,
        """
        [dead] = queue.list_dead()
        event = EncodedEvent(source=dead.source, id=dead.id, payload=dead.payload)
        result = await queue.replay_dead([ReplayItem(dead_seq=dead.seq, events=(event,), requeue=True)])
        assert result.replayed == 1, result
        """,
    )
    stats = owner.stats()
    assert (stats.depth, stats.dead_letters) == (3, 0)
    assert owner.available() == 1
    assert [e.id for e in owner.lease(max_events=10, max_bytes=1 << 20)] == ["e-1"]

    # The owner's next commit starts from the counters on disk, not from its own stale copy.
    await owner.append(events(3, 5))
    await owner.ack([e.seq for e in leased if e.id != "e-1"])
    stats = owner.stats()
    assert stats.depth == 3
    assert [e.id for e in owner.lease(max_events=10, max_bytes=1 << 20)] == ["e-3", "e-4"]
    assert balanced(stats).replayed == 1


async def test_a_purge_by_another_process_is_seen_by_the_owner(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    owner = make_queue()
    await owner.append([], [rejection(original=bytes([n])) for n in range(3)])

    in_another_process(tmp_path, "assert await queue.purge_dead() == 3")
    await owner.append([], [rejection(original=b"later")])

    stats = owner.stats()
    assert stats.dead_letters == 1
    assert balanced(stats).dead_purged == 3


async def test_a_read_only_open_sees_the_owners_commits_and_cannot_write(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    owner = make_queue()
    await owner.append(events(0, 4))

    in_another_process(
        tmp_path,
        """
        assert queue.stats().depth == 4
        try:
            await queue.purge_dead()
        except StorageError as exc:
            assert "read-only" in str(exc)
        else:
            raise AssertionError("a read-only queue wrote")
        """,
        readonly=True,
    )


def test_a_read_only_open_of_a_missing_queue_creates_nothing(tmp_path: Path) -> None:
    reader = LmdbQueue(QueueConfig(directory=tmp_path / "nowhere"))

    with pytest.raises(StorageError, match="no queue"):
        reader.open(readonly=True)
    assert not (tmp_path / "nowhere").exists()
