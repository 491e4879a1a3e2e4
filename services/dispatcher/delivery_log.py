"""The delivery log: one append-only record per delivery attempt.

Records live on the ``clarion:delivery-log`` stream with the recipient masked and the
error and note redacted; each is also written as one canonical log line and counted
in the dispatcher's metrics. An entry's id is the millisecond the attempt was
recorded at, so time ranges are id ranges; every record's id is also added to its
incident's index in the same atomic step (see :mod:`delivery_query`).

There is no length cap: :class:`shared.retention.RetentionTask` trims the stream by
age (``CLARION_DELIVERY_LOG_RETENTION``) and the indexes to the same cut. A cap
would drop records by count, whatever their age and whether a consumer still needs
them, and one high enough never to fire on a legitimate burst (an incident sent to
10,000 subscribers, retried) would be too high to protect memory anyway: that is
Redis's ``maxmemory``'s job.
"""

from __future__ import annotations

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

# KEYS: the log, the incident's index, the set of indexed incidents.
# ARGV: the record's time in ms, its JSON, its incident id. Returns the entry id.
_APPEND_SCRIPT: Final = """
local id = redis.pcall('XADD', KEYS[1], ARGV[1] .. '-*', '__data__', ARGV[2])
if type(id) == 'table' then
  if not string.find(id.err, 'equal or smaller', 1, true) then
    return redis.error_reply(id.err)
  end
  -- This clock is behind the newest entry (another instance's clock): append right
  -- after the newest id, so ids keep increasing and a follower misses nothing.
  local last = '0'
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = string.match(info[i + 1], '^(%d+)-')
    end
  end
  id = redis.call('XADD', KEYS[1], last .. '-*', '__data__', ARGV[2])
end
redis.call('XADD', KEYS[2], id, 'e', '')
redis.call('ZADD', KEYS[3], string.match(id, '^(%d+)-'), ARGV[3])
return id
"""

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


class DeliveryLog:
    def __init__(self, redis: Redis, metrics: DispatcherMetrics | None = None) -> None:
        self._redis = redis
        self._metrics = metrics
        self._append = redis.register_script(_APPEND_SCRIPT)
        self._trim_index = redis.register_script(_TRIM_INDEX_SCRIPT)

    @property
    def metrics(self) -> DispatcherMetrics | None:
        return self._metrics

    async def record(self, record: DeliveryRecorded) -> DeliveryRecorded:
        """Log, count and append ``record`` (redacted); returns what was stored.

        The log line and the metrics come first: the attempt happened even if Redis
        cannot store the record (the caller then sees the error).
        """
        stored = record.model_copy(
            update={
                "recipient": mask_recipient(record.recipient),
                "error": redact_text(record.error) if record.error else record.error,
                "note": redact_text(record.note) if record.note else record.note,
            }
        )
        _log_attempt(stored)
        if self._metrics is not None:
            self._metrics.observe(stored)
        await self._append(
            keys=[DELIVERY_LOG, incident_index_key(stored.incident_id), INDEXED_INCIDENTS],
            args=[epoch_ms(stored.recorded_at), stored.model_dump_json(), stored.incident_id],
        )
        return stored

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
