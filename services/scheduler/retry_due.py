"""Scheduled delivery retries: the dispatcher's failed or rate-limited sends, on time.

When a send fails with a retryable error (or hits a rate limit), the dispatcher
moves the delivery to ``retry:N`` and, in the same Lua script, puts the next job
on the retry schedule (``RETRY_DUE``/``RETRY_ITEMS``, keyed by delivery id, the
JSON of :class:`shared.contracts.ScheduledDelivery`). When it is due, this puts
the job back on its channel's delivery stream. Firing twice (a crash between the
XADD and the drop) is harmless: only the job that finds ``retry:N`` sends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from redis.asyncio import Redis

from services.scheduler.cadence import DueItem
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.timers import TimerFirer
from shared.clock import Clock
from shared.contracts import DeliveryJob
from shared.redis_values import DATA_FIELD, as_text
from shared.streams import RETRY_DUE, RETRY_ITEMS, delivery_stream


class RetryItem(DueItem):
    """Put ``job`` back on its channel's stream at ``due_at`` (``ScheduledDelivery``'s shape)."""

    job: DeliveryJob


def retry_schedule(redis: Redis) -> ScheduleStore[RetryItem]:
    return ScheduleStore(redis, RetryItem, RETRY_DUE, RETRY_ITEMS)


def retry_firer(
    store: ScheduleStore[RetryItem], redis: Redis, clock: Clock, lease: timedelta
) -> TimerFirer[RetryItem]:
    async def fire(item: RetryItem, _now: datetime) -> str:
        entry_id = await redis.xadd(
            delivery_stream(item.job.channel), {DATA_FIELD: item.job.model_dump_json()}
        )
        return f"{item.job.delivery_id}@{as_text(entry_id)}"

    return TimerFirer("retry", store, fire, clock, lease)
