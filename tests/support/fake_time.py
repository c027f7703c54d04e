"""A clock the test moves: sources wait on it instead of sleeping, so tick schedules run instantly
and deterministically."""

from __future__ import annotations

import asyncio
import itertools


class FakeTime:
    """``clock`` and ``wait`` for a source (``Clock`` and ``Wait`` of ``sources.base``).

    A source's ``wait`` blocks until the test :meth:`advance`\\ s time past its end (or the source is
    stopped). :meth:`settle` awaits the moment every loop of the source is blocked in such a wait,
    i.e. it has done all it can at the current time.
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self._cond = asyncio.Condition()
        self._waits: dict[int, float] = {}
        self._ids = itertools.count()
        self.waited: list[float] = []

    def clock(self) -> float:
        return self.now

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool:
        if stop.is_set():
            return True
        me = next(self._ids)
        async with self._cond:
            self.waited.append(seconds)
            self._waits[me] = self.now + seconds
            self._cond.notify_all()
            try:
                await self._cond.wait_for(lambda: self.now >= self._waits[me] or stop.is_set())
            finally:
                del self._waits[me]
                self._cond.notify_all()
        return stop.is_set()

    async def advance(self, seconds: float) -> None:
        async with self._cond:
            self.now += seconds
            self._cond.notify_all()

    async def settle(self, loops: int) -> None:
        """Until exactly ``loops`` waits are blocked on a time still ahead (at most 10 s of real time)."""
        async with asyncio.timeout(10.0), self._cond:
            await self._cond.wait_for(
                lambda: len(self._waits) == loops and all(t > self.now for t in self._waits.values())
            )
