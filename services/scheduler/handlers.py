"""The scheduler's stream consumer: decode an incident event, hand it to the schedule."""

from __future__ import annotations

from redis.asyncio import Redis

from services.scheduler.approval_timeout import ApprovalTimer, follow_approval
from services.scheduler.cadence import ScheduleItem
from services.scheduler.resolution_hold import ResolutionTimer, follow_incident
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.scheduling import schedule_incident_event
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import APPROVAL_EVENT, INCIDENT_EVENT, ApprovalEvent, IncidentEvent
from shared.settings import Settings
from shared.streams import APPROVALS, INCIDENT_EVENTS, SCHEDULER_GROUP


def incident_event_consumer(
    redis: Redis,
    updates: ScheduleStore[ScheduleItem],
    resolutions: ScheduleStore[ResolutionTimer],
    settings: Settings,
) -> GuardedConsumer[IncidentEvent]:
    """The guarded consumer of ``INCIDENT_EVENTS`` for the scheduler group."""

    async def handle(event: IncidentEvent, _entry: StreamEntry) -> None:
        await schedule_incident_event(updates, event)
        await follow_incident(resolutions, redis, event.incident_id)

    return GuardedConsumer(
        redis=redis,
        stream=INCIDENT_EVENTS,
        group=SCHEDULER_GROUP,
        decode=INCIDENT_EVENT.validate_json,
        handle=handle,
        max_deliveries=settings.max_deliveries,
    )


def approval_consumer(
    redis: Redis, approvals: ScheduleStore[ApprovalTimer], settings: Settings
) -> GuardedConsumer[ApprovalEvent]:
    """The guarded consumer of ``APPROVALS``: arm and cancel auto-publish timers."""

    async def handle(event: ApprovalEvent, _entry: StreamEntry) -> None:
        await follow_approval(approvals, event)

    return GuardedConsumer(
        redis=redis,
        stream=APPROVALS,
        group=SCHEDULER_GROUP,
        decode=APPROVAL_EVENT.validate_json,
        handle=handle,
        max_deliveries=settings.max_deliveries,
    )
