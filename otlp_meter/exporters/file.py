"""The file sink: append events as JSON lines and fsync — what ``make run`` does with no OpenMeter set."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from otlp_meter.exporters.retry import Verdict
from otlp_meter.exporters.sink import SendResult


class FileSink:
    """Appends each batch to ``path``, one event per line, fsynced before it counts as delivered."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, payloads: Sequence[bytes]) -> None:
        """All of the batch or none of it: a failed write or fsync (disk full, EIO) is cut off
        again, so the retry neither duplicates events nor leaves half a line."""
        data = memoryview(b"\n".join(payloads) + b"\n")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:  # unbuffered: nothing is left behind to be written later
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)

    async def send(self, payloads: Sequence[bytes]) -> SendResult:
        """Append and fsync on a worker thread; an OSError (disk full, permissions) means retry."""
        try:
            await asyncio.to_thread(self._append, payloads)
        except OSError as exc:  # disk full, permissions: keep the events and retry
            return SendResult(Verdict.RETRY, None, None, f"{type(exc).__name__}: {exc}")
        return SendResult(Verdict.DELIVERED)

    async def close(self) -> None:
        return None
