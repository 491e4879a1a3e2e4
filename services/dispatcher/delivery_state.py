"""Each delivery's state in Redis: the exactly-once guard of every send.

A delivery (one event, one channel, one recipient) has one hash,
``clarion:delivery:<delivery_id>``, holding its state and, while a worker sends
it, that worker's lease:

* ``""`` (absent): never attempted; a first job may claim it;
* ``retry:N``: attempt N is scheduled; only the job carrying ``expects=retry:N`` may claim it;
* ``dead``: retries ran out; only a replay moves it on (to ``retry:N``);
* ``done``: sent, failed for good, or suppressed; nothing ever sends it again.

Claiming takes a lease (from Redis ``TIME``, so skewed hosts agree). A lease that
runs out means its worker died mid-attempt: the next claim says so
(``interrupted``), because the provider may already have received that send.
Every transition and what goes with it (a scheduled retry, a dead letter, a
replayed job, the delivery-log record of the attempt that ended it) is one Lua
script, so a crash never leaves half of one: a delivery never ends ``done`` without
its final record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

from services.dispatcher.delivery_log import APPEND_RECORD_LUA, Entry
from shared.redis_batches import CoalescedCalls
from shared.redis_values import DATA_FIELD, as_text
from shared.streams import (
    DEAD_LETTERS,
    REPLAYED_DEAD_LETTERS,
    RETRY_DUE,
    RETRY_ITEMS,
    delivery_state_key,
)

DONE: Final = "done"
DEAD: Final = "dead"


def retry_state(attempt: int) -> str:
    return f"retry:{attempt}"


# KEYS: state hash. ARGV: owner, expected state, lease ms, retention s.
_CLAIM: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state') or ''
if state == 'done' then return {'done', 0, state, 0} end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
  if lease > now then return {'busy', 0, state, 0} end
end
if state ~= ARGV[2] then return {'stale', 0, state, 0} end
local interrupted = 0
if owner then interrupted = 1 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', now + tonumber(ARGV[3]))
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'claimed', interrupted, state, tries}
"""

# KEYS: state hash, retry zset, retry items hash, dead-letter stream, then (with a
#       record) the delivery log's keys (:attr:`delivery_log.Entry.keys`).
# ARGV: owner, new state, retention s, retry member, retry score ms, retry item JSON,
#       dead letter JSON ('' for none of those), data field, uncount ('1': the claim
#       made no attempt, e.g. a rate limit deferred it), record if lost ('1': append the
#       record even when the lease was lost), then (with a record) its arguments
#       (:attr:`delivery_log.Entry.args`).
# Returns 0 when the lease was lost (another worker holds the delivery now). Every key's
# type is checked before the first write, and the record goes first, so an error
# leaves nothing written: while the lease holds, the record is stored if and only if
# the state moved.
_FINISH: Final = (
    APPEND_RECORD_LUA
    + """
local with_record = #KEYS > 4
local owned = redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
if not owned and not (with_record and ARGV[10] == '1') then return 0 end
local kinds = {'hash', 'zset', 'hash', 'stream', 'stream', 'stream', 'zset'}
for i = 1, #KEYS do
  local found = redis.call('TYPE', KEYS[i]).ok
  if found ~= 'none' and found ~= kinds[i] then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. found .. ', not a ' .. kinds[i])
  end
end
if with_record then
  append_record(KEYS[5], KEYS[6], KEYS[7], ARGV[11], ARGV[12], ARGV[13])
end
if not owned then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('HDEL', KEYS[1], 'owner', 'lease')
if ARGV[9] == '1' then redis.call('HINCRBY', KEYS[1], 'tries', -1) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[6])
end
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[4], '*', ARGV[8], ARGV[7])
end
return 1
"""
)

# KEYS: state hash. ARGV: owner, lease ms. Extends a lease this owner still holds.
_RENEW: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease', now + tonumber(ARGV[2]))
return 1
"""

# KEYS: state hash, the channel's job stream, the replayed dead letters' hash, then (with
#       a record) the delivery log's keys (:attr:`delivery_log.Entry.keys`).
# ARGV: new state, retention s, data field, job JSON, dead letter id ('' for none), replayed
#       at, then (with a record) its arguments (:attr:`delivery_log.Entry.args`).
# Only a dead delivery with no live lease moves; the dead letter is marked replayed either
# way. The record goes first, so an error leaves nothing written.
_REPLAY: Final = (
    APPEND_RECORD_LUA
    + """
local movable = (redis.call('HGET', KEYS[1], 'state') or '') == 'dead'
  and redis.call('HEXISTS', KEYS[1], 'owner') == 0
if movable and #KEYS > 3 then
  append_record(KEYS[4], KEYS[5], KEYS[6], ARGV[7], ARGV[8], ARGV[9])
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[5], ARGV[6]) end
if not movable then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4])
return 1
"""
)


class ClaimKind(StrEnum):
    CLAIMED = "claimed"  # this worker owns the attempt
    DONE = "done"  # finished before: do nothing
    BUSY = "busy"  # another worker is on it right now: look again later
    STALE = "stale"  # another job owns the delivery (a retry is scheduled, or it is dead)


@dataclass(frozen=True)
class ClaimResult:
    kind: ClaimKind
    interrupted: bool  # a previous claim ended without finishing: its send may have happened
    state: str  # the state found
    tries: int = 0  # when claimed: the number of this try, counting interrupted ones


@dataclass(frozen=True)
class Retry:
    """Put this job JSON back on its stream at ``due_ms`` (through the scheduler)."""

    member: str
    due_ms: int
    item_json: str


class DeliveryStates:
    def __init__(self, redis: Redis, lease_ms: int, retention_seconds: int) -> None:
        self._redis = redis
        self._lease_ms = lease_ms
        self._retention = retention_seconds
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._replay = redis.register_script(_REPLAY)
        self._renew = redis.register_script(_RENEW)
        # Claims and finishes of concurrent deliveries; two turns: a batch of jobs just
        # started makes its calls in the next turn, and joins the same pipeline.
        self._calls = CoalescedCalls(redis, turns=2)

    @property
    def lease_ms(self) -> int:
        return self._lease_ms

    @property
    def calls(self) -> CoalescedCalls:
        """Where claims and finishes go: other calls queued here share their round trips."""
        return self._calls

    async def renew(self, delivery_id: str, owner: str) -> bool:
        """Extend ``owner``'s lease (a send still in progress); False once it is not theirs."""
        renewed = await self._calls.script(
            self._renew, keys=[delivery_state_key(delivery_id)], args=[owner, self._lease_ms]
        )
        return bool(renewed)

    async def claim(self, delivery_id: str, owner: str, expects: str) -> ClaimResult:
        kind, interrupted, state, tries = await self._calls.script(
            self._claim,
            keys=[delivery_state_key(delivery_id)],
            args=[owner, expects, self._lease_ms, self._retention],
        )
        return ClaimResult(
            ClaimKind(as_text(kind)), bool(int(interrupted)), as_text(state), int(tries)
        )

    async def finish(
        self,
        delivery_id: str,
        owner: str,
        state: str,
        *,
        retry: Retry | None = None,
        dead_letter_json: str = "",
        attempted: bool = True,
        record: Entry | None = None,
        record_if_lost: bool = False,
    ) -> bool:
        """Move a claimed delivery to ``state`` with its retry or dead letter, and append
        its delivery-log ``record`` (prepared by :meth:`DeliveryLog.prepare`), all in one
        atomic step; False if the lease was lost meanwhile (the other worker's outcome
        stands: nothing is written, except the record when ``record_if_lost``)."""
        keys = [delivery_state_key(delivery_id), RETRY_DUE, RETRY_ITEMS, DEAD_LETTERS]
        args: list[str | int] = [
            owner,
            state,
            self._retention,
            retry.member if retry else "",
            retry.due_ms if retry else 0,
            retry.item_json if retry else "",
            dead_letter_json,
            DATA_FIELD,
            "" if attempted else "1",
            "1" if record_if_lost else "",
        ]
        if record is not None:
            keys += record.keys
            args += record.args
        done = await self._calls.script(self._finish, keys=keys, args=args)
        return bool(done)

    async def replay(
        self,
        delivery_id: str,
        attempt: int,
        stream: str,
        job_json: str,
        *,
        dead_letter: tuple[str, str] | None = None,
        record: Entry | None = None,
    ) -> bool:
        """Move a dead delivery to ``retry:attempt``, queue its job now and append its
        delivery-log ``record``, in one atomic step; False if it is not dead (or a worker
        still holds it). ``dead_letter`` (its entry id, the time) is marked replayed
        either way."""
        letter_id, replayed_at = dead_letter or ("", "")
        keys = [delivery_state_key(delivery_id), stream, REPLAYED_DEAD_LETTERS]
        args: list[str | int] = [
            retry_state(attempt),
            self._retention,
            DATA_FIELD,
            job_json,
            letter_id,
            replayed_at,
        ]
        if record is not None:
            keys += record.keys
            args += record.args
        done = await self._replay(keys=keys, args=args)
        return bool(done)

    async def started(self, delivery_ids: Iterable[str], batch: int = 500) -> set[str]:
        """Those of ``delivery_ids`` that have a state (queued, sent, ...), read in pipelined
        batches: ten thousand deliveries are not ten thousand round trips."""
        ids = list(delivery_ids)
        found: set[str] = set()
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery_id in chunk:
                    pipe.hget(delivery_state_key(delivery_id), "state")
                states = await pipe.execute()
            found.update(d for d, state in zip(chunk, states, strict=True) if state)
        return found

    async def state(self, delivery_id: str) -> str:
        value = await self._redis.hget(delivery_state_key(delivery_id), "state")
        return "" if value is None else as_text(value)
