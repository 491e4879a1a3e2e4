"""The delivery log: one append-only record per delivery attempt.

Records live on the ``clarion:delivery-log`` stream with the recipient masked,
and each is also written as one canonical log line.
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis

from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.logs import get_logger
from shared.redaction import mask_recipient, redact_text
from shared.redis_values import DATA_FIELD, data_entries
from shared.streams import DELIVERY_LOG

DELIVERY_LOG_MAXLEN: Final = 100_000
_SCAN_PAGE: Final = 500

log = get_logger("clarion.dispatcher.delivery")


class DeliveryLog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def record(self, record: DeliveryRecorded) -> DeliveryRecorded:
        """Append ``record`` (recipient masked) and log it; returns what was stored."""
        stored = record.model_copy(
            update={
                "recipient": mask_recipient(record.recipient),
                "error": redact_text(record.error) if record.error else record.error,
            }
        )
        await self._redis.xadd(
            DELIVERY_LOG,
            {DATA_FIELD: stored.model_dump_json()},
            maxlen=DELIVERY_LOG_MAXLEN,
            approximate=True,
        )
        emit = log.warning if stored.status in _WARN else log.info
        duration_ms = (stored.recorded_at - stored.started_at).total_seconds() * 1000
        emit(
            "delivery.attempt",
            status=stored.status.value,
            attempt=stored.attempt,
            recipient=stored.recipient,
            event_id=stored.event_id,
            error=stored.error,
            provider_message_id=stored.provider_message_id,
            duration_ms=round(duration_ms, 1),
        )
        return stored

    async def recent(self, limit: int, incident_id: str | None = None) -> list[DeliveryRecorded]:
        """The newest ``limit`` records (of one incident, if given), newest first."""
        found: list[DeliveryRecorded] = []
        upper = "+"
        page = max(limit, _SCAN_PAGE) if incident_id else limit
        while len(found) < limit:
            raw = await self._redis.xrevrange(DELIVERY_LOG, max=upper, count=page)
            entries = data_entries(raw)
            for _, payload in entries:
                record = DeliveryRecorded.model_validate_json(payload)
                if incident_id is None or record.incident_id == incident_id:
                    found.append(record)
                    if len(found) == limit:
                        break
            if len(raw or ()) < page or not entries:
                break
            upper = f"({entries[-1][0]}"
        return found


_WARN: Final = frozenset({DeliveryStatus.RETRYING, DeliveryStatus.FAILED, DeliveryStatus.DEAD})
