"""Acknowledgement overdue: nobody took an open incident within its severity's time.

When an incident opens with a severity whose plan policy has ``acknowledge_within``,
a timer is armed at ``opened_at + acknowledge_within`` (one per incident, keyed by
its id). An acknowledgement or a resolution cancels it; a change of severity moves
it to the new severity's time (a change to a more severe one arms it again, so a
SEV3 that became a SEV1 escalates on the SEV1 clock). When it fires, the stored
incident is read again and, if it is still open and unacknowledged, the scheduler
publishes :class:`~shared.contracts.IncidentAckOverdue` for internal audiences.

How it travels: on ``INCIDENT_EVENTS``, as a member of the ``IncidentEvent`` union,
not on a stream of its own. The dispatcher already consumes that stream with
dead-lettering, fan-out dedup by event id and per-incident ordering, and renders
any incident event; a new stream would need a new consumer group, reader and
reclaimer for two rare events. The cost is that the scheduler reads its own output
back: :func:`is_escalation` events change no schedule (the handler skips them), and
fan-out keeps them from public audiences (``EventKind.internal_only``).

The event id is deterministic (:func:`shared.contracts.ack_overdue_event_id`: incident
and severity), so a timer that fires twice (a crash between publishing and dropping
it, a re-armed timer) publishes a duplicate the dispatcher drops.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from redis.asyncio import Redis

from services.scheduler.cadence import DueItem
from services.scheduler.incident_timers import incident_timer_firer
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.timers import TimerFirer
from shared.clock import Clock
from shared.contracts import (
    ESCALATION_EVENT_TYPES,
    Incident,
    IncidentAckOverdue,
    IncidentEvent,
    IncidentOpened,
    IncidentSeverityChanged,
    Severity,
    ack_overdue_event_id,
)
from shared.incidents import load_incident
from shared.logs import get_logger
from shared.plan import Plan
from shared.streams import ACK_OVERDUE_DUE, ACK_OVERDUE_ITEMS

log = get_logger("clarion.scheduler.ack_overdue")


class AckTimer(DueItem):
    """Escalate ``incident_id`` at ``due_at`` unless someone acknowledges it first."""

    severity: Severity


def ack_overdue_schedule(redis: Redis) -> ScheduleStore[AckTimer]:
    return ScheduleStore(redis, AckTimer, ACK_OVERDUE_DUE, ACK_OVERDUE_ITEMS)


def is_escalation(event: IncidentEvent) -> bool:
    """One of the scheduler's own internal events: nothing to schedule from it."""
    return isinstance(event, ESCALATION_EVENT_TYPES)


def ack_deadline(incident: Incident | None, plan: Plan) -> AckTimer | None:
    """The timer ``incident`` needs as it stands: open, unacknowledged, with a deadline."""
    if incident is None or not incident.is_open or incident.acknowledged_at is not None:
        return None
    within = plan.policy(incident.severity).acknowledge_within
    if within is None:
        return None
    return AckTimer(
        incident_id=incident.id, due_at=incident.opened_at + within, severity=incident.severity
    )


def starts_the_clock(event: IncidentEvent) -> bool:
    """Whether ``event`` may arm a timer that is not there: an opening, or a worsening."""
    if isinstance(event, IncidentOpened):
        return True
    return (
        isinstance(event, IncidentSeverityChanged)
        and event.incident.severity.rank < event.previous_severity.rank
    )


def next_ack_timer(
    current: AckTimer | None, event: IncidentEvent, incident: Incident | None, plan: Plan
) -> AckTimer | None:
    """The timer after ``event``, with ``incident`` as it now stands. Pure.

    Cancelled once the incident is acknowledged or resolved (or its severity has no
    ``acknowledge_within``); a pending timer follows the severity's deadline; a
    missing one is armed only by an opening or a more severe severity, so an
    escalation that already fired is not armed again by every later update.
    """
    if is_escalation(event):
        return current
    wanted = ack_deadline(incident, plan)
    if wanted is None:
        return None
    if current is not None or starts_the_clock(event):
        return wanted
    return None


def latest(event: IncidentEvent, stored: Incident | None) -> Incident:
    """The newer of the event's snapshot and the stored incident (by revision)."""
    if stored is None or stored.id != event.incident.id:
        return event.incident
    return stored if stored.revision >= event.incident.revision else event.incident


async def follow_ack(
    store: ScheduleStore[AckTimer], redis: Redis, plan: Plan, event: IncidentEvent
) -> AckTimer | None:
    """Arm, move or cancel the incident's acknowledgement timer after ``event``."""
    if is_escalation(event):
        return await store.get(event.incident_id)
    incident = latest(event, await load_incident(redis, event.incident_id))
    before, after = await store.change(
        event.incident_id, lambda current: next_ack_timer(current, event, incident, plan)
    )
    if before != after:
        log.info(
            "ack_overdue.timer_set" if after else "ack_overdue.timer_cancelled",
            incident_id=event.incident_id,
            event_id=event.event_id,
            due_at=after.due_at.isoformat() if after else None,
        )
    return after


def ack_overdue_event(timer: AckTimer, incident: Incident, now: datetime) -> IncidentAckOverdue:
    """The escalation for a fired timer; its id is the same however often it fires."""
    return IncidentAckOverdue(
        event_id=ack_overdue_event_id(incident.id, timer.severity),
        occurred_at=now,
        incident=incident,
        due_at=timer.due_at,
    )


def ack_overdue_firer(
    store: ScheduleStore[AckTimer],
    redis: Redis,
    clock: Clock,
    lease: timedelta,
    plan: Plan,
) -> TimerFirer[AckTimer]:
    """Claims due timers and publishes ``IncidentAckOverdue`` on ``INCIDENT_EVENTS``.

    The stored incident decides at the last moment: acknowledged, resolved or gone
    means nothing is published; a deadline that moved later (a less severe severity
    whose event is not handled yet) re-arms the timer there instead.
    """

    return incident_timer_firer(
        "ack_overdue",
        store,
        redis,
        clock,
        lease,
        needed=lambda incident: ack_deadline(incident, plan),
        event_for=ack_overdue_event,
    )


__all__ = [
    "AckTimer",
    "ack_deadline",
    "ack_overdue_event",
    "ack_overdue_firer",
    "ack_overdue_schedule",
    "follow_ack",
    "is_escalation",
    "latest",
    "next_ack_timer",
    "starts_the_clock",
]
