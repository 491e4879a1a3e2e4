"""Pending updates in Redis: a sorted set of due times and a hash of items.

``SCHEDULE_DUE`` maps incident id -> due time (epoch ms); ``SCHEDULE_ITEMS`` maps
incident id -> the item as JSON. Every write is one Lua script that first checks
the item is still what the writer read (compare-and-set), so concurrent event
handlers and tickers never lose each other's changes.

Claiming takes a lease: the due score moves to ``now + lease`` so no other
instance sees the item as due. The claimer completes the item only if the score
is still its lease and the item unchanged; if the claimer dies, the lease runs
out and another instance claims the item again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Generic, TypeVar

from redis.asyncio import Redis

from services.scheduler.cadence import DueItem, ScheduleItem, ceil_ms, floor_ms
from shared.errors import RetryableFailure
from shared.redis_batches import CoalescedCalls
from shared.redis_values import as_text
from shared.streams import SCHEDULE_DUE, SCHEDULE_ITEMS

# KEYS: due zset, items hash. ARGV: now (ms), lease score (ms), limit.
# Returns a flat list: member, item JSON ('' when missing), member, item JSON, ...
_CLAIM: Final = """
local members = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
local out = {}
for _, member in ipairs(members) do
  redis.call('ZADD', KEYS[1], ARGV[2], member)
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[2], member) or ''
end
return out
"""

# KEYS: due zset, items hash.
# ARGV: member, expected score ('' = any), expected item JSON ('' = absent),
#       new item JSON ('' = delete), new score.
# Returns 1 when written, 0 when the item was not as expected.
_COMPARE_AND_SET: Final = """
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
end
local current = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if current ~= ARGV[3] then return 0 end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
end
return 1
"""

_MAX_ATTEMPTS: Final = 20

ItemT = TypeVar("ItemT", bound=DueItem)


@dataclass(frozen=True)
class Claim(Generic[ItemT]):
    """An item this instance holds a lease on, as it was when claimed."""

    incident_id: str
    lease_score: int
    raw: str  # the item JSON as stored ('' when the hash had none)
    item: ItemT | None


class ScheduleStore(Generic[ItemT]):
    """Due items of one kind (``item_type``), one per incident, under two keys."""

    def __init__(self, redis: Redis, item_type: type[ItemT], due_key: str, items_key: str) -> None:
        self._redis = redis
        self._type = item_type
        self._due_key = due_key
        self._items_key = items_key
        self._claim = redis.register_script(_CLAIM)
        self._cas = redis.register_script(_COMPARE_AND_SET)
        self._writes = CoalescedCalls(redis)  # the writes of concurrent fires, pipelined

    def _parse(self, raw: str | bytes) -> ItemT | None:
        return self._type.model_validate_json(raw) if raw else None

    async def get(self, incident_id: str) -> ItemT | None:
        return self._parse(await self._redis.hget(self._items_key, incident_id) or "")

    async def due_score(self, incident_id: str) -> int | None:
        """The current score: the due time, or a lease while claimed."""
        score = await self._redis.zscore(self._due_key, incident_id)
        return None if score is None else int(score)

    async def change(
        self,
        incident_id: str,
        change: Callable[[ItemT | None], ItemT | None],
    ) -> tuple[ItemT | None, ItemT | None]:
        """Apply ``change`` to the stored item atomically; returns (before, after).

        ``change`` gets the current item (or ``None``) and returns the new one
        (``None`` deletes). It runs again if another writer got in between.
        """
        for _ in range(_MAX_ATTEMPTS):
            raw = _text_or_empty(await self._redis.hget(self._items_key, incident_id))
            current = self._parse(raw)
            updated = change(current)
            if updated == current:
                return current, current
            if await self._write(incident_id, None, raw, updated):
                return current, updated
        raise RetryableFailure(f"schedule item {incident_id} kept changing under us")

    async def claim(self, now: datetime, lease: timedelta, limit: int) -> list[Claim[ItemT]]:
        """Take up to ``limit`` items due at ``now``, leasing each until ``now + lease``."""
        now_ms = floor_ms(now)
        lease_score = now_ms + lease // timedelta(milliseconds=1)
        flat = await self._claim(
            keys=[self._due_key, self._items_key], args=[now_ms, lease_score, limit]
        )
        values = [_text_or_empty(v) for v in flat]
        return [
            Claim(incident_id=member, lease_score=lease_score, raw=raw, item=self._parse(raw))
            for member, raw in zip(values[::2], values[1::2], strict=True)
        ]

    async def complete(self, claim: Claim[ItemT], next_item: ItemT) -> bool:
        """Store ``next_item`` if ``claim`` still holds: same lease, item untouched."""
        return await self._write(claim.incident_id, claim.lease_score, claim.raw, next_item)

    async def drop(self, claim: Claim[ItemT]) -> bool:
        """Delete the claimed item if ``claim`` still holds."""
        return await self._write(claim.incident_id, claim.lease_score, claim.raw, None)

    async def _write(
        self,
        incident_id: str,
        expected_score: int | None,
        expected_raw: str,
        item: ItemT | None,
    ) -> bool:
        written = await self._writes.script(
            self._cas,
            [self._due_key, self._items_key],
            [
                incident_id,
                "" if expected_score is None else expected_score,
                expected_raw,
                "" if item is None else item.model_dump_json(),
                0 if item is None else ceil_ms(item.due_at),
            ],
        )
        return bool(written)


def update_schedule(redis: Redis) -> ScheduleStore[ScheduleItem]:
    """The pending "update due" of each open incident."""
    return ScheduleStore(redis, ScheduleItem, SCHEDULE_DUE, SCHEDULE_ITEMS)


def _text_or_empty(value: object) -> str:
    return "" if value is None else as_text(value)
