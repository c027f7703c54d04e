"""The queue's owner lock: at most one process exports from a queue directory.

Two services on one directory would each lease every stored event and send it twice, so the
service holds an exclusive ``flock`` on ``<queue>/otlp-meter.lock`` (the pid written inside, for
messages) for as long as the queue is open. The kernel drops it when the process dies, SIGKILL
included, so a crash never leaves a stale lock. Admin commands do not take it; they only ask
whether it is held (:func:`lock_holder`), since LMDB itself serializes their writes with the
service's and the queue re-reads its counters inside every write transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from otlp_meter.errors import StorageError

LOCK_FILE = "otlp-meter.lock"
_ACQUIRE_PATIENCE = 2.0
"""An admin command probing the lock holds it for microseconds; wait that out, never longer."""


class OwnerLock:
    """An exclusive flock on ``<directory>/otlp-meter.lock``; ``acquire`` raises StorageError if taken."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the queue lock {self.path}: {exc}") from exc
        deadline = time.monotonic() + _ACQUIRE_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = _read_pid(self.path)
                    raise StorageError(
                        f"another otlp-meter process{f' (pid {holder})' if holder else ''} is using "
                        f"the queue at {self.path.parent}; two would send every event twice",
                        retry_after=30.0,
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Unlock. The file stays: deleting it would race with the next owner opening it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def lock_holder(directory: Path) -> int | None:
    """The pid of the process holding the owner lock (0 if unknown), or None when nobody holds it."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
