"""Timers that speak about an incident as it stands when they fire.

The stored incident decides at the last moment: when the timer it needs now is
none (the reason went away), nothing is published; when that timer falls due
later (its deadline moved, and the event saying so is not handled yet), it is
re-armed there; otherwise the event the timer stands for goes out on
``INCIDENT_EVENTS``, with an id that is the same however often it fires.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from redis.asyncio import Redis

from services.scheduler.schedule_store import ItemT, ScheduleStore
from services.scheduler.timers import TimerFirer
from shared.clock import Clock
from shared.contracts import Incident, IncidentEvent
from shared.incidents import load_incident
from shared.logs import get_logger
from shared.redis_values import DATA_FIELD
from shared.streams import INCIDENT_EVENTS

log = get_logger("clarion.scheduler.incident_timers")


def incident_timer_firer(
    kind: str,
    store: ScheduleStore[ItemT],
    redis: Redis,
    clock: Clock,
    lease: timedelta,
    *,
    needed: Callable[[Incident | None], ItemT | None],
    event_for: Callable[[ItemT, Incident, datetime], IncidentEvent],
) -> TimerFirer[ItemT]:
    """Fires ``store``'s timers: ``needed(incident)`` is the timer the incident needs now,
    ``event_for(timer, incident, now)`` the event to publish when it is due."""

    async def fire(timer: ItemT, now: datetime) -> str | None:
        incident = await load_incident(redis, timer.incident_id)
        wanted = needed(incident)
        if incident is None or wanted is None:
            log.info(f"{kind}.not_needed", incident_id=timer.incident_id)
            return None
        if wanted.due_at > now:
            await store.change(timer.incident_id, lambda _current: wanted)
            log.info(f"{kind}.moved", due_at=wanted.due_at.isoformat())
            return None
        event = event_for(wanted, incident, now)
        await redis.xadd(INCIDENT_EVENTS, {DATA_FIELD: event.model_dump_json()})
        return event.event_id

    return TimerFirer(kind, store, fire, clock, lease)
