"""The Lua script that commits a change to an incident, if what it was computed from stands.

:data:`COMMIT_SOURCE` writes a change (the incident, its place in the time index, the
group's pointers and every event announcing it), all or nothing, only if the
group's pointer and the incident are still as the change saw them; with nothing
to write it only checks that. Either way it answers 1, or else what is there now
(the pointer and the incident) for the caller to compute the change again:
optimistic concurrency, as ``WATCH``/``MULTI`` gave, in one command that
concurrent requests can share a pipeline with
(:mod:`shared.redis_batches`).
"""

from __future__ import annotations

import hashlib
from typing import Final

NOT_READ: Final = "*"
"""In :data:`COMMIT_SOURCE`'s expectations: this was not read, so nothing to check."""
ABSENT: Final = ""
"""In :data:`COMMIT_SOURCE`'s expectations: this did not exist."""
CHECK_ONLY: Final = ""
"""As :data:`COMMIT_SOURCE`'s incident id: nothing to write, only check."""

COMMIT_SOURCE: Final = """
-- KEYS: 1 the incident key the change read, 2 the incident key it writes, 3 the group's
-- open-incident pointer, 4 the time index, 5 the events stream, 6.. alias pointers.
-- ARGV: 1 the pointer as seen ('*': not read, '': absent), 2 the SHA-1 of the incident
-- as seen ('*': not read, '': absent), 3 the incident key prefix, 4 the incident id
-- ('': only check), 5 its JSON, 6 its time-index score, 7 '1' when it is open, 8 the
-- stream entry's field, 9.. the events, in order.
-- Answers 1 when done, else {pointer or false, incident JSON or false} as they are now
-- (the incident the pointer names; by KEYS[1] when the pointer was not read).
local pointed = false
if ARGV[1] ~= '*' then
  pointed = redis.call('GET', KEYS[3])
  if (pointed or '') ~= ARGV[1] then
    return {pointed, pointed and redis.call('GET', ARGV[3] .. pointed)}
  end
end
if ARGV[2] ~= '*' then
  local raw = redis.call('GET', KEYS[1])
  if (raw and redis.sha1hex(raw) or '') ~= ARGV[2] then return {pointed, raw} end
end
if ARGV[4] == '' then return 1 end
redis.call('SET', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[4])
if ARGV[7] == '1' then
  redis.call('SET', KEYS[3], ARGV[4])
  for i = 6, #KEYS do redis.call('SET', KEYS[i], ARGV[4]) end
elseif redis.call('GET', KEYS[3]) == ARGV[4] then
  -- A resolved group that fires again later opens a new incident.
  redis.call('DEL', KEYS[3])
end
for i = 9, #ARGV do redis.call('XADD', KEYS[5], '*', ARGV[8], ARGV[i]) end
return 1
"""


def sha1_hex(raw: bytes) -> str:
    """What :data:`COMMIT_SOURCE` compares a read incident by (``redis.sha1hex``)."""
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()
