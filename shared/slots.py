"""A bounded number of holders at once, that can be closed while some wait."""

from __future__ import annotations

import asyncio


class Slots:
    """At most ``size`` holders at once. Once closed, nobody gets one, and whoever waits
    wakes: :meth:`close` frees one slot more, and whoever takes a slot after that hands
    it on. Waiting is a plain semaphore acquire (no task or future per waiter)."""

    def __init__(self, size: int) -> None:
        self._free = asyncio.Semaphore(max(size, 1))
        self.closed = False

    async def take(self) -> bool:
        """Wait for a free slot and take it; False (and no slot) once closed."""
        if self.closed:
            return False
        await self._free.acquire()
        if self.closed:
            self._free.release()  # hand it on: the next waiter wakes, and so on
            return False
        return True

    def give(self) -> None:
        """Give back a slot :meth:`take` gave."""
        self._free.release()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._free.release()  # wakes a waiter, who hands it on
