"""One asyncio lock per key, kept only while somebody holds it or waits for it."""

from __future__ import annotations

import asyncio
from types import TracebackType


class KeyedLocks:
    """``async with locks.hold(key):`` runs one block per key at a time, in this process."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def hold(self, key: str) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self, key)
        return slot

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._slots)

    def _release(self, slot: _Slot) -> None:
        if slot.users == 0:
            del self._slots[slot.key]


class _Slot:
    __slots__ = ("key", "lock", "owner", "users")

    def __init__(self, owner: KeyedLocks, key: str) -> None:
        self.owner = owner
        self.key = key
        self.lock = asyncio.Lock()
        self.users = 0

    async def __aenter__(self) -> None:
        self.users += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self.users -= 1
            self.owner._release(self)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()
        self.users -= 1
        self.owner._release(self)
