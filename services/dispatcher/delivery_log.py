"""The delivery log: one append-only record per delivery attempt.

Records live on the ``clarion:delivery-log`` stream with the recipient masked and the
error and note redacted; each is also written as one canonical log line and counted
in the dispatcher's metrics. An entry's id is the millisecond the attempt was
recorded at, so time ranges are id ranges; every record's id is also added to its
incident's index in the same atomic step (see :mod:`delivery_query`). A record that
goes with a delivery's state change (an attempt's outcome) is appended in the same
script as that change (:mod:`delivery_state` composes its script with
:data:`APPEND_RECORD_LUA`), so one is never stored without the other.

There is no length cap: :class:`shared.retention.RetentionTask` trims the stream by
age (``CLARION_DELIVERY_LOG_RETENTION``) and the indexes to the same cut. A cap
would drop records by count, whatever their age and whether a consumer still needs
them, and one high enough never to fire on a legitimate burst (an incident sent to
10,000 subscribers, retried) would be too high to protect memory anyway: that is
Redis's ``maxmemory``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from redis.asyncio import Redis

from services.dispatcher.delivery_query import (
    INDEXED_INCIDENTS,
    MAX_LIMIT,
    DeliveryPage,
    DeliveryQuery,
    decode_cursor,
    epoch_ms,
    incident_index_key,
    run_query,
)
from services.dispatcher.metrics import DispatcherMetrics
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.logs import get_logger
from shared.redaction import mask_recipient, redact_text
from shared.redis_values import as_text
from shared.retention import trim_stream
from shared.streams import DELIVERY_LOG

_INDEX_TRIM_BATCH: Final = 200

# A Lua function, shared by every script that appends a record (this module's and
# :data:`delivery_state._FINISH`'s): append ``record`` (its JSON, at ``at_ms``) to ``log``
# and its id to ``incident``'s ``index``, noting the incident in ``indexed``.
# Returns the entry id.
APPEND_RECORD_LUA: Final = """
local function append_record(log, index, indexed, at_ms, record, incident)
  local id = redis.pcall('XADD', log, at_ms .. '-*', '__data__', record)
  if type(id) == 'table' then
    if not string.find(id.err, 'equal or smaller', 1, true) then
      error(id)  -- raise it: the calling script stops before anything else it writes
    end
    -- This clock is behind the newest entry (another instance's clock): append right
    -- after the newest id, so ids keep increasing and a follower misses nothing.
    local last = '0'
    local info = redis.call('XINFO', 'STREAM', log)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        last = string.match(info[i + 1], '^(%d+)-')
      end
    end
    id = redis.call('XADD', log, last .. '-*', '__data__', record)
  end
  redis.call('XADD', index, id, 'e', '')
  redis.call('ZADD', indexed, string.match(id, '^(%d+)-'), incident)
  return id
end
"""

# KEYS: the log, the incident's index, the set of indexed incidents (:attr:`Entry.keys`).
# ARGV: the record's time in ms, its JSON, its incident id (:attr:`Entry.args`).
# Returns the entry id.
_APPEND_SCRIPT: Final = (
    APPEND_RECORD_LUA
    + """
return append_record(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: the set of indexed incidents, then their indexes. ARGV: the cut, then the
# incident ids (in the order of KEYS[2..]). Returns how many index entries went.
_TRIM_INDEX_SCRIPT: Final = """
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('XTRIM', KEYS[i], 'MINID', ARGV[1])
  if redis.call('XLEN', KEYS[i]) == 0 then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""

log = get_logger("clarion.dispatcher.delivery")


@dataclass(frozen=True)
class Entry:
    """A record made ready to store (redacted, logged and counted), with the keys and
    arguments that :data:`APPEND_RECORD_LUA`'s ``append_record`` takes, in order."""

    record: DeliveryRecorded

    @property
    def keys(self) -> list[str]:
        return [DELIVERY_LOG, incident_index_key(self.record.incident_id), INDEXED_INCIDENTS]

    @property
    def args(self) -> list[str | int]:
        return [
            epoch_ms(self.record.recorded_at),
            self.record.model_dump_json(),
            self.record.incident_id,
        ]


class DeliveryLog:
    def __init__(self, redis: Redis, metrics: DispatcherMetrics | None = None) -> None:
        self._redis = redis
        self._metrics = metrics
        self._append = redis.register_script(_APPEND_SCRIPT)
        self._trim_index = redis.register_script(_TRIM_INDEX_SCRIPT)

    @property
    def metrics(self) -> DispatcherMetrics | None:
        return self._metrics

    def prepare(self, record: DeliveryRecorded) -> Entry:
        """Redact ``record``, write its log line and count it: the entry to store.

        The log line and the metrics come first: the attempt happened even if Redis
        cannot store the record. Store it with :meth:`append`, or with the state change
        it goes with (:meth:`DeliveryStates.finish`), in one atomic step.
        """
        entry = self.redact(record)
        self.announce(entry)
        return entry

    @staticmethod
    def redact(record: DeliveryRecorded) -> Entry:
        """``record`` as it is stored (recipient masked, error and note redacted), not yet
        logged: for a record that is stored only if its state change happens (see
        :meth:`announce`)."""
        return Entry(
            record.model_copy(
                update={
                    "recipient": mask_recipient(record.recipient),
                    "error": redact_text(record.error) if record.error else record.error,
                    "note": redact_text(record.note) if record.note else record.note,
                }
            )
        )

    def announce(self, entry: Entry) -> None:
        """Write ``entry``'s log line and count it in the metrics."""
        _log_attempt(entry.record)
        if self._metrics is not None:
            self._metrics.observe(entry.record)

    async def append(self, entry: Entry) -> None:
        """Store a prepared entry on its own (no state change goes with it)."""
        await self._append(keys=entry.keys, args=entry.args)

    async def record(self, record: DeliveryRecorded) -> DeliveryRecorded:
        """Log, count and append ``record`` (redacted); returns what was stored.

        If Redis cannot store it, the log line and the metrics still say it happened
        (the caller then sees the error).
        """
        entry = self.prepare(record)
        await self.append(entry)
        return entry.record

    async def query(self, query: DeliveryQuery) -> DeliveryPage:
        """One page of records matching ``query``."""
        return await run_query(self._redis, query)

    async def recent(self, limit: int, incident_id: str | None = None) -> list[DeliveryRecorded]:
        """The newest ``limit`` records (of one incident, if given), newest first."""
        found: list[DeliveryRecorded] = []
        cursor: str | None = None
        while len(found) < limit:
            page = await self.query(
                DeliveryQuery(
                    incident_id=incident_id,
                    limit=min(limit - len(found), MAX_LIMIT),
                    before=decode_cursor(cursor) if cursor else None,
                )
            )
            found.extend(page.deliveries)
            cursor = page.next_cursor
            if cursor is None:
                break
        return found

    async def trim_derived(self, cut: str) -> int:
        """Trim every incident's index to ``cut`` (the log's own retention cut), dropping
        the indexes left empty; returns how many index entries went."""
        removed = 0
        batch: list[str] = []
        async for member, _ in self._redis.zscan_iter(INDEXED_INCIDENTS, count=_INDEX_TRIM_BATCH):
            batch.append(as_text(member))
            if len(batch) == _INDEX_TRIM_BATCH:
                removed += await self._trim_indexes(batch, cut)
                batch = []
        if batch:
            removed += await self._trim_indexes(batch, cut)
        return removed

    async def trim(self, max_age: timedelta, now: datetime) -> tuple[int, int]:
        """Apply retention to the log and its indexes at once: (records, index entries)
        removed. :class:`shared.retention.RetentionTask` does the same, periodically."""
        trimmed = await trim_stream(self._redis, DELIVERY_LOG, max_age, now)
        indexed = await self.trim_derived(trimmed.cut) if trimmed.cut else 0
        return trimmed.removed, indexed

    async def _trim_indexes(self, incident_ids: list[str], cut: str) -> int:
        keys = [INDEXED_INCIDENTS, *(incident_index_key(i) for i in incident_ids)]
        removed = await self._trim_index(keys=keys, args=[cut, *incident_ids])
        return int(removed)


def _log_attempt(stored: DeliveryRecorded) -> None:
    """The canonical line of one attempt: everything the delivery log holds, redacted."""
    emit = log.warning if stored.status in _WARN or stored.possible_duplicate else log.info
    emit(
        "delivery.attempt",
        status=stored.status.value,
        attempt=stored.attempt,
        channel=stored.channel,
        audience=stored.audience,
        incident_id=stored.incident_id,
        event_id=stored.event_id,
        delivery_id=stored.delivery_id,
        recipient=stored.recipient,
        error=stored.error,
        note=stored.note,
        provider_message_id=stored.provider_message_id,
        latency_ms=None if stored.latency_ms is None else round(stored.latency_ms, 1),
        possible_duplicate=stored.possible_duplicate,
        shortened=stored.shortened,
        next_attempt_at=stored.next_attempt_at.isoformat() if stored.next_attempt_at else None,
    )


_WARN: Final = frozenset({DeliveryStatus.RETRYING, DeliveryStatus.FAILED, DeliveryStatus.DEAD})
