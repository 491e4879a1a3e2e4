"""Post-mortem reminder: a resolved incident still owes its team a post-mortem.

When an incident is resolved and the plan has ``postmortem_reminder_after`` (48 h by
default; null turns it off), a timer is armed at ``resolved_at`` plus that time, one
per incident. Publishing the post-mortem (``incident.postmortem_published``, or any
event whose incident has a ``postmortem_url``) or the incident opening again cancels
it. When it fires, the stored incident is read again and, if it is still resolved at
the same time with no post-mortem, the scheduler publishes
:class:`~shared.contracts.IncidentPostmortemDue` for internal audiences, telling them
how to post it. The customers who were told about the incident hear of the
post-mortem itself, through ``incident.postmortem_published`` and the plan's routes.

The reminder travels like the acknowledgement escalation, on ``INCIDENT_EVENTS``
(see :mod:`services.scheduler.ack_overdue` for why), with a deterministic id per
resolution (:func:`shared.contracts.postmortem_due_event_id`), so a double fire is a
duplicate the dispatcher drops.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import AwareDatetime
from redis.asyncio import Redis

from services.scheduler.ack_overdue import is_escalation, latest
from services.scheduler.cadence import DueItem
from services.scheduler.incident_timers import incident_timer_firer
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.timers import TimerFirer
from shared.clock import Clock
from shared.contracts import (
    Incident,
    IncidentEvent,
    IncidentPostmortemDue,
    IncidentResolved,
    postmortem_due_event_id,
)
from shared.incidents import load_incident
from shared.logs import get_logger
from shared.plan import Plan
from shared.streams import POSTMORTEM_REMINDER_DUE, POSTMORTEM_REMINDER_ITEMS

log = get_logger("clarion.scheduler.postmortem_reminder")


class PostmortemTimer(DueItem):
    """Remind the team at ``due_at`` if the resolution of ``resolved_at`` has no post-mortem."""

    resolved_at: AwareDatetime


def postmortem_reminder_schedule(redis: Redis) -> ScheduleStore[PostmortemTimer]:
    return ScheduleStore(redis, PostmortemTimer, POSTMORTEM_REMINDER_DUE, POSTMORTEM_REMINDER_ITEMS)


def reminder_for(incident: Incident | None, plan: Plan) -> PostmortemTimer | None:
    """The timer ``incident`` needs as it stands: resolved, no post-mortem, reminders on."""
    after = plan.postmortem_reminder_after
    if (
        after is None
        or incident is None
        or incident.is_open
        or incident.resolved_at is None
        or incident.postmortem_url is not None
    ):
        return None
    return PostmortemTimer(
        incident_id=incident.id,
        resolved_at=incident.resolved_at,
        due_at=incident.resolved_at + after,
    )


def next_reminder(
    current: PostmortemTimer | None, event: IncidentEvent, incident: Incident | None, plan: Plan
) -> PostmortemTimer | None:
    """The timer after ``event``, with ``incident`` as it now stands. Pure.

    Cancelled by a post-mortem or a reopening; armed only by a resolution, so a
    reminder that already fired is not armed again by a later event.
    """
    if is_escalation(event):
        return current
    wanted = reminder_for(incident, plan)
    if wanted is None:
        return None
    if current is not None or isinstance(event, IncidentResolved):
        return wanted
    return None


async def follow_postmortem(
    store: ScheduleStore[PostmortemTimer], redis: Redis, plan: Plan, event: IncidentEvent
) -> PostmortemTimer | None:
    """Arm, move or cancel the incident's post-mortem reminder after ``event``."""
    if is_escalation(event):
        return await store.get(event.incident_id)
    incident = latest(event, await load_incident(redis, event.incident_id))
    before, after = await store.change(
        event.incident_id, lambda current: next_reminder(current, event, incident, plan)
    )
    if before != after:
        log.info(
            "postmortem_reminder.timer_set" if after else "postmortem_reminder.timer_cancelled",
            incident_id=event.incident_id,
            event_id=event.event_id,
            due_at=after.due_at.isoformat() if after else None,
        )
    return after


def postmortem_due_event(
    timer: PostmortemTimer, incident: Incident, now: datetime
) -> IncidentPostmortemDue:
    """The reminder for a fired timer; its id is the same however often it fires."""
    return IncidentPostmortemDue(
        event_id=postmortem_due_event_id(incident.id, timer.resolved_at),
        occurred_at=now,
        incident=incident,
        due_at=timer.due_at,
    )


def postmortem_reminder_firer(
    store: ScheduleStore[PostmortemTimer],
    redis: Redis,
    clock: Clock,
    lease: timedelta,
    plan: Plan,
) -> TimerFirer[PostmortemTimer]:
    """Claims due timers and publishes ``IncidentPostmortemDue`` on ``INCIDENT_EVENTS``.

    The stored incident decides at the last moment: reopened, post-mortem posted,
    gone, or reminders turned off means nothing is published; a later resolution
    (or a longer ``postmortem_reminder_after``) re-arms the timer at its time.
    """

    return incident_timer_firer(
        "postmortem_reminder",
        store,
        redis,
        clock,
        lease,
        needed=lambda incident: reminder_for(incident, plan),
        event_for=postmortem_due_event,
    )


__all__ = [
    "PostmortemTimer",
    "follow_postmortem",
    "next_reminder",
    "postmortem_due_event",
    "postmortem_reminder_firer",
    "postmortem_reminder_schedule",
    "reminder_for",
]
