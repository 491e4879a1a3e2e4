"""Idempotency keys: a side effect happens once per key, however often it is retried.

A key moves from absent, to *claimed* by one owner for a lease, to *done*.
A claim that expires (its owner died mid-send) can be taken by another owner,
so a crash costs at most one repeat of the one send that was in flight.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

from shared.redis_values import as_text
from shared.streams import idempotency_key

DONE: Final = "done"

_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[3] then return 'done' end
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'claimed'
end
return 'busy'
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(StrEnum):
    CLAIMED = "claimed"  # the caller owns the key and should do the work
    DONE = "done"  # the work already happened: skip it
    BUSY = "busy"  # someone else is doing it right now: try again later


class IdempotencyStore:
    def __init__(self, redis: Redis, lease_ms: int, retention_seconds: int) -> None:
        self._redis = redis
        self._lease_ms = lease_ms
        self._retention_seconds = retention_seconds
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, key: str, owner: str) -> Claim:
        result = await self._claim(keys=[idempotency_key(key)], args=[owner, self._lease_ms, DONE])
        return Claim(as_text(result))

    async def complete(self, key: str) -> None:
        await self._redis.set(idempotency_key(key), DONE, ex=self._retention_seconds)

    async def release(self, key: str, owner: str) -> None:
        await self._release(keys=[idempotency_key(key)], args=[owner])

    async def is_done(self, key: str) -> bool:
        value = await self._redis.get(idempotency_key(key))
        return value == DONE.encode()
