"""The file sink: JSON lines, appended and fsynced before a batch counts as delivered."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from otlp_meter.exporters.file import FileSink
from otlp_meter.exporters.retry import Verdict
from tests.unit.exporters.helpers import cloud_events


async def test_each_batch_is_appended_as_one_json_line_per_event(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "events.jsonl")
    first, second = cloud_events(2), cloud_events(3, start=2)
    assert (await sink.send([e.payload for e in first])).verdict is Verdict.DELIVERED
    assert (await sink.send([e.payload for e in second])).verdict is Verdict.DELIVERED
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert lines == [e.payload for e in first + second]
    assert [json.loads(line)["id"] for line in lines] == ["e-0", "e-1", "e-2", "e-3", "e-4"]
    await sink.close()


async def test_appends_to_what_is_already_there(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":"earlier"}\n')
    await FileSink(path).send([cloud_events(1)[0].payload])
    assert [json.loads(line)["id"] for line in path.read_bytes().splitlines()] == ["earlier", "e-0"]


async def test_the_directory_is_created(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "a" / "b" / "events.jsonl")
    assert (await sink.send([cloud_events(1)[0].payload])).verdict is Verdict.DELIVERED
    assert (tmp_path / "a" / "b" / "events.jsonl").exists()


async def test_every_batch_is_fsynced_before_it_counts_as_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    synced: list[bytes] = []

    def fsync(fd: int) -> None:
        synced.append(path.read_bytes())  # what was on the file when it was synced

    monkeypatch.setattr(os, "fsync", fsync)
    sink = FileSink(path)
    await sink.send([e.payload for e in cloud_events(2)])
    await sink.send([e.payload for e in cloud_events(1, start=2)])
    assert len(synced) == 2
    assert synced[0].count(b"\n") == 2
    assert synced[1] == path.read_bytes()


async def test_a_full_disk_means_retry_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    result = await FileSink(tmp_path / "events.jsonl").send([cloud_events(1)[0].payload])
    assert (result.verdict, result.status) == (Verdict.RETRY, None)
    assert result.detail.startswith("OSError: ")
    assert "No space left on device" in result.detail


async def test_an_unwritable_path_means_retry(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").mkdir()  # a directory where the file should be
    result = await FileSink(tmp_path / "events.jsonl").send([cloud_events(1)[0].payload])
    assert result.verdict is Verdict.RETRY
    assert result.detail.startswith("IsADirectoryError: ")


async def test_a_failed_write_leaves_nothing_behind_so_the_retry_does_not_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":"earlier"}\n')
    fsync = os.fsync
    failures = [OSError(errno.EIO, os.strerror(errno.EIO))]

    def failing_once(fd: int) -> None:
        if failures:
            raise failures.pop()
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    sink = FileSink(path)
    batch = [e.payload for e in cloud_events(2)]
    assert (await sink.send(batch)).verdict is Verdict.RETRY
    assert path.read_bytes() == b'{"id":"earlier"}\n'
    assert (await sink.send(batch)).verdict is Verdict.DELIVERED
    assert path.read_bytes().splitlines() == [b'{"id":"earlier"}', *batch]


async def test_a_write_cut_short_by_a_full_disk_is_cut_off_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a batch on disk, then ENOSPC: the half is removed (no broken line, no later duplicate)."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":"earlier"}\n')
    write = os.write
    calls: list[int] = []

    def half_then_full(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    batch = [e.payload for e in cloud_events(3)]
    assert (await FileSink(path).send(batch)).verdict is Verdict.RETRY
    monkeypatch.setattr(os, "write", write)
    assert path.read_bytes() == b'{"id":"earlier"}\n'
    assert (await FileSink(path).send(batch)).verdict is Verdict.DELIVERED
    assert path.read_bytes().splitlines() == [b'{"id":"earlier"}', *batch]
