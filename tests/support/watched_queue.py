"""An LmdbQueue a test can watch and interfere with at each append (another process's commit
between a mapping and its append, say), without repeating ``append``'s signature in every test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from otlp_meter.errors import StateConflictError
from otlp_meter.events import EncodedEvent, Rejection
from otlp_meter.queue import LmdbQueue
from otlp_meter.queue.types import AppendResult


class WatchedQueue(LmdbQueue):
    """Counts appends that expect stored state and those refused for it (``conflicts``);
    :meth:`before_append` runs first, for subclasses to commit something of "another process"."""

    appends_with_expect = 0
    conflicts = 0

    async def before_append(self, expect: Mapping[bytes, bytes | None]) -> None:
        """Runs before every append, with what it expects (empty: nothing)."""

    async def append(
        self,
        events: Sequence[EncodedEvent],
        rejected: Sequence[Rejection] = (),
        state: Mapping[bytes, bytes | None] | None = None,
        *,
        expect: Mapping[bytes, bytes | None] | None = None,
    ) -> AppendResult:
        if expect:
            self.appends_with_expect += 1
        await self.before_append(expect or {})
        try:
            return await super().append(events, rejected, state, expect=expect)
        except StateConflictError:
            self.conflicts += 1
            raise

    async def commit_elsewhere(self, state: Mapping[bytes, bytes | None]) -> None:
        """A commit of ``state`` that no hook sees (what another process writes)."""
        await LmdbQueue.append(self, (), (), state)
