"""The scheduler's stream consumer: decode an incident event, hand it to the schedule."""

from __future__ import annotations

from redis.asyncio import Redis

from services.scheduler.cadence import ScheduleItem
from services.scheduler.resolution_hold import ResolutionTimer, follow_incident
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.scheduling import schedule_incident_event
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import INCIDENT_EVENT, IncidentEvent
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, SCHEDULER_GROUP


def incident_event_consumer(
    redis: Redis,
    updates: ScheduleStore[ScheduleItem],
    resolutions: ScheduleStore[ResolutionTimer],
    settings: Settings,
) -> GuardedConsumer[IncidentEvent]:
    """The guarded consumer of ``INCIDENT_EVENTS`` for the scheduler group."""

    async def handle(event: IncidentEvent, _entry: StreamEntry) -> None:
        await schedule_incident_event(updates, event, settings.update_interval)
        await follow_incident(resolutions, redis, event.incident_id)

    return GuardedConsumer(
        redis=redis,
        stream=INCIDENT_EVENTS,
        group=SCHEDULER_GROUP,
        decode=INCIDENT_EVENT.validate_json,
        handle=handle,
        max_deliveries=settings.max_deliveries,
    )
