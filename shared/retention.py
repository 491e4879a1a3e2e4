"""Age-based retention of Redis streams that never drops an entry a consumer still needs.

A stream is trimmed with ``XTRIM MINID`` to the lowest of:

- ``now - max_age`` (the age cut), and, for every consumer group of the stream,
- the entry after the group's last-delivered id: nothing the group has not read yet goes;
- the smallest id in the group's pending list: nothing read but not acknowledged goes.

A stream without consumer groups is trimmed by age alone. The cut is computed and
applied in one Lua script, so a group that reads (or is created) meanwhile cannot
race it. Entry ids count milliseconds, so ``now`` must come from the clock that wrote
them (the wall clock, in production).

:class:`RetentionTask` does that every ``interval`` for a mapping of streams to ages,
and passes each cut on to the keys derived from a stream (an index of its entry ids),
so they are trimmed exactly as far as the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared.clock import Clock
from shared.logs import get_logger
from shared.redis_values import as_text

log = get_logger("clarion.retention")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# KEYS[1]: the stream. ARGV[1]: the age cut in ms. Returns {removed, cut id}.
# Ids are compared as (ms, seq) numbers: ms fit a Lua double exactly for ages to come.
_TRIM_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, ''}
end
local cut_ms, cut_seq = tonumber(ARGV[1]), 0
local function keep_from(id, plus)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq) + plus
  if ms < cut_ms or (ms == cut_ms and seq < cut_seq) then
    cut_ms, cut_seq = ms, seq
  end
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #group, 2 do
    if group[i] == 'name' then
      name = group[i + 1]
    elseif group[i] == 'last-delivered-id' then
      delivered = group[i + 1]
    end
  end
  keep_from(delivered, 1)
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then
    keep_from(pending[2], 0)
  end
end
local cut = string.format('%d-%d', cut_ms, cut_seq)
return {redis.call('XTRIM', KEYS[1], 'MINID', cut), cut}
"""


@dataclass(frozen=True)
class Trimmed:
    stream: str
    removed: int
    cut: str | None  # the MINID applied; None when the stream does not exist


class DerivedKeys(Protocol):
    """Keys that hold entry ids of a stream (an index): trimmed to the stream's cut."""

    async def trim_derived(self, cut: str) -> int:
        """Drop what refers to entries below ``cut``; returns how many were dropped."""
        ...


def age_cut_ms(max_age: timedelta, now: datetime) -> int:
    """The millisecond below which entries are older than ``max_age``."""
    return max((now - max_age - _EPOCH) // timedelta(milliseconds=1), 0)


async def trim_stream(redis: Redis, stream: str, max_age: timedelta, now: datetime) -> Trimmed:
    """Trim ``stream`` by age, keeping what any consumer group has not read or acked."""
    removed, cut = await redis.eval(_TRIM_SCRIPT, 1, stream, str(age_cut_ms(max_age, now)))
    text = as_text(cut)
    return Trimmed(stream=stream, removed=int(removed), cut=text or None)


async def trim_by_age(redis: Redis, stream: str, max_age: timedelta, now: datetime) -> int:
    """Like :func:`trim_stream`; returns how many entries it removed."""
    return (await trim_stream(redis, stream, max_age, now)).removed


class RetentionTask:
    """Every ``interval``, trims each stream of ``policies`` (stream -> max age).

    ``derived`` maps a stream to the keys that index it; they are trimmed to the same
    cut right after it. A failed run is logged and tried again at the next interval.
    Start it with :meth:`start` and stop it with :meth:`stop` (in a lifespan).
    """

    def __init__(
        self,
        redis: Redis,
        policies: Mapping[str, timedelta],
        *,
        clock: Clock,
        interval: timedelta,
        derived: Mapping[str, DerivedKeys] | None = None,
    ) -> None:
        if interval <= timedelta(0):
            raise ValueError("the retention interval must be positive")
        self._redis = redis
        self._policies = dict(policies)
        self._clock = clock
        self._interval = interval
        self._derived = dict(derived or {})
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> list[Trimmed]:
        """Trim every stream once, now; returns what was done per stream (a stream that
        cannot be trimmed, e.g. a key of another type, is logged and skipped)."""
        now = self._clock.now()
        done = []
        for stream, max_age in self._policies.items():
            try:
                trimmed = await trim_stream(self._redis, stream, max_age, now)
                derived = self._derived.get(stream)
                dropped = 0
                if derived is not None and trimmed.cut is not None:
                    dropped = await derived.trim_derived(trimmed.cut)
            except ResponseError as exc:  # e.g. not a stream: the others are still trimmed
                log.warning("retention.failed", stream=stream, error=str(exc))
                continue
            emit = log.info if trimmed.removed or dropped else log.debug
            emit(
                "retention.trimmed",
                stream=stream,
                removed=trimmed.removed,
                derived_removed=dropped,
                cut=trimmed.cut,
                max_age_seconds=max_age.total_seconds(),
            )
            done.append(trimmed)
        return done

    async def run(self) -> None:
        """Trim at once, then every interval, until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except (RedisError, OSError) as exc:
                log.warning("retention.failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:  # a bug must not end retention for the life of the process
                log.exception("retention.failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self._interval.total_seconds()
                )

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="retention")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
