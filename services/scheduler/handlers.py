"""The scheduler's stream consumer: decode an incident event, hand it to the schedule."""

from __future__ import annotations

from redis.asyncio import Redis

from services.scheduler.ack_overdue import AckTimer, follow_ack, is_escalation
from services.scheduler.approval_timeout import ApprovalTimer, follow_approval
from services.scheduler.cadence import ScheduleItem
from services.scheduler.postmortem_reminder import PostmortemTimer, follow_postmortem
from services.scheduler.resolution_hold import ResolutionTimer, follow_incident
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.scheduling import schedule_incident_event
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import APPROVAL_EVENT, INCIDENT_EVENT, ApprovalEvent, IncidentEvent
from shared.plan import Plan
from shared.settings import Settings
from shared.streams import APPROVALS, INCIDENT_EVENTS, SCHEDULER_GROUP


def incident_event_consumer(
    redis: Redis,
    updates: ScheduleStore[ScheduleItem],
    resolutions: ScheduleStore[ResolutionTimer],
    settings: Settings,
    *,
    plan: Plan | None = None,
    acks: ScheduleStore[AckTimer] | None = None,
    reminders: ScheduleStore[PostmortemTimer] | None = None,
) -> GuardedConsumer[IncidentEvent]:
    """The guarded consumer of ``INCIDENT_EVENTS`` for the scheduler group.

    With ``acks`` and ``reminders`` (which need the ``plan``), it also keeps the
    acknowledgement escalation and the post-mortem reminder timers. The scheduler's
    own escalation events come back on this stream: they change no schedule.
    """
    if (acks is not None or reminders is not None) and plan is None:
        raise ValueError("the acknowledgement and post-mortem timers need the plan")

    async def handle(event: IncidentEvent, _entry: StreamEntry) -> None:
        if is_escalation(event):
            return
        await schedule_incident_event(updates, event)
        await follow_incident(resolutions, redis, event.incident_id)
        if plan is not None and acks is not None:
            await follow_ack(acks, redis, plan, event)
        if plan is not None and reminders is not None:
            await follow_postmortem(reminders, redis, plan, event)

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
