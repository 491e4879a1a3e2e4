"""Provider and recipient rate limits, shared by every dispatcher instance through Redis.

``CLARION_RATE_LIMITS`` lists ``<channel>=<limit>`` (the whole provider account) and
``<channel>:recipient=<limit>`` (each recipient) in the ``limits`` library's notation,
e.g. ``mastodon=300/3 hours`` or ``sms:recipient=1/minute``. A channel may have
several (``sms=30/second;1000/hour``).

The check is one Lua script over every limit that applies (GCRA: a "theoretical
arrival time" per key), so a send is allowed only when all of its limits allow it,
and nothing is counted when one refuses. Time is Redis ``TIME``: instances with
skewed clocks share one budget. A refused send is not an attempt: the pipeline
schedules it for when the budget allows, and other channels never wait for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from limits import RateLimitItem, parse_many
from redis.asyncio import Redis

from shared.redis_batches import CoalescedCalls
from shared.streams import DELIVERY_CHANNELS, PREFIX

_KEY: Final = f"{PREFIX}:rate:{{scope}}:{{index}}"

# KEYS: one per limit. ARGV: pairs of (emission interval ms, period ms).
# Returns 0 when allowed (and counted), else the ms to wait until every limit allows it.
_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local next_tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local next_tat = tat + interval
  local over = next_tat - now - period
  if over > 0 and over > wait then wait = over end
  next_tats[i] = next_tat
end
if wait > 0 then return math.ceil(wait) end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, next_tats[i], 'PX', tonumber(ARGV[2 * i]))
end
return 0
"""


@dataclass(frozen=True)
class Limit:
    item: RateLimitItem
    per_recipient: bool

    @property
    def period_ms(self) -> int:
        return int(self.item.get_expiry() * 1000)

    @property
    def interval_ms(self) -> float:
        return self.period_ms / self.item.amount


def parse_rate_limits(entries: Iterable[str]) -> dict[str, tuple[Limit, ...]]:
    """``channel[:recipient]=limit`` entries, by channel; ValueError naming the bad one."""
    limits: dict[str, list[Limit]] = {}
    for entry in entries:
        scope, sep, text = entry.partition("=")
        channel, _, qualifier = scope.strip().partition(":")
        problem = None
        if not sep or not channel:
            problem = "write <channel>=<limit> or <channel>:recipient=<limit>"
        elif channel not in DELIVERY_CHANNELS:
            problem = f"{channel!r} is not a channel ({', '.join(DELIVERY_CHANNELS)})"
        elif qualifier != "recipient" and ":" in scope:
            problem = f"{qualifier!r} is not a scope; only ':recipient' is"
        try:
            items = tuple(parse_many(text)) if not problem else ()
        except ValueError:
            items = ()
        if not problem and (not items or any(item.amount < 1 for item in items)):
            problem = "the limit is like 300/3 hours or 1/minute (amounts of at least 1)"
        if problem:
            raise ValueError(f"CLARION_RATE_LIMITS entry {entry!r}: {problem}")
        limits.setdefault(channel, []).extend(Limit(item, bool(qualifier)) for item in items)
    return {channel: tuple(found) for channel, found in limits.items()}


class RateLimits:
    def __init__(
        self,
        redis: Redis,
        limits: Mapping[str, tuple[Limit, ...]],
        calls: CoalescedCalls | None = None,
    ) -> None:
        """``calls``: where the checks go, to share round trips with other calls (each
        check is its own round trip without)."""
        self._limits = limits
        self._acquire = redis.register_script(_ACQUIRE)
        self._calls = calls

    async def acquire(self, channel: str, recipient: str) -> timedelta | None:
        """Count one send on ``channel`` to ``recipient``: None when allowed now, else how
        long until every applicable limit allows it (nothing is counted then)."""
        limits = self._limits.get(channel, ())
        if not limits:
            return None
        who = hashlib.sha256(recipient.encode()).hexdigest()[:24]  # no address in key names
        keys = [
            _KEY.format(scope=f"{channel}:{who}" if limit.per_recipient else channel, index=i)
            for i, limit in enumerate(limits)
        ]
        args: list[float] = []
        for limit in limits:
            args += [limit.interval_ms, limit.period_ms]
        if self._calls is not None:
            wait_ms = int(await self._calls.script(self._acquire, keys=keys, args=args))
        else:
            wait_ms = int(await self._acquire(keys=keys, args=args))
        return None if wait_ms <= 0 else timedelta(milliseconds=wait_ms)
