"""The end of an incident's "monitoring" hold: armed, moved, cancelled and fired.

Ingest puts an incident whose alerts have all recovered in "monitoring" and
writes when the hold ends (``Incident.resolves_at``). The scheduler keeps one
timer per holding incident, always taken from the incident's *current* state
in Redis rather than from the event that woke it, so a stale or reordered event
can't cancel a live hold. When the timer fires, ``ResolutionDue`` goes to
ingest, which resolves the incident if that same hold still stands.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from pydantic import AwareDatetime
from redis.asyncio import Redis

from services.scheduler.cadence import DueItem
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.timers import TimerFirer
from shared.clock import Clock
from shared.contracts import Incident, ResolutionDue
from shared.incidents import load_incident
from shared.logs import get_logger
from shared.streams import RESOLUTION_DUE, RESOLUTION_ITEMS

log = get_logger("clarion.scheduler.resolution")


class ResolutionTimer(DueItem):
    """Resolve ``incident_id`` at ``due_at`` if it is still in the hold that began then."""

    monitoring_since: AwareDatetime


class ResolutionPublisher(Protocol):
    async def publish_resolution(self, due: ResolutionDue) -> None: ...


def resolution_schedule(redis: Redis) -> ScheduleStore[ResolutionTimer]:
    return ScheduleStore(redis, ResolutionTimer, RESOLUTION_DUE, RESOLUTION_ITEMS)


def timer_for(incident: Incident | None) -> ResolutionTimer | None:
    """The timer an incident needs: one while it holds in "monitoring", else none."""
    if (
        incident is None
        or not incident.is_open
        or incident.resolves_at is None
        or incident.monitoring_since is None
    ):
        return None
    return ResolutionTimer(
        incident_id=incident.id,
        monitoring_since=incident.monitoring_since,
        due_at=incident.resolves_at,
    )


def resolution_due(timer: ResolutionTimer, now: datetime) -> ResolutionDue:
    """The event for a fired timer; its id is the same however often it fires."""
    return ResolutionDue(
        event_id=f"{timer.incident_id}:resolution:{timer.monitoring_since.isoformat()}",
        incident_id=timer.incident_id,
        monitoring_since=timer.monitoring_since,
        due_at=timer.due_at,
        emitted_at=now,
    )


async def follow_incident(
    store: ScheduleStore[ResolutionTimer], redis: Redis, incident_id: str
) -> ResolutionTimer | None:
    """Arm, move or cancel the incident's timer to match its state in Redis now."""
    wanted = timer_for(await load_incident(redis, incident_id))
    before, after = await store.change(incident_id, lambda _current: wanted)
    if before != after:
        log.info(
            "resolution.timer_set" if after else "resolution.timer_cancelled",
            incident_id=incident_id,
            due_at=after.due_at.isoformat() if after else None,
        )
    return after


def resolution_firer(
    store: ScheduleStore[ResolutionTimer],
    publisher: ResolutionPublisher,
    clock: Clock,
    lease: timedelta,
) -> TimerFirer[ResolutionTimer]:
    """Claims due timers with a lease and publishes their ``ResolutionDue``."""

    async def fire(timer: ResolutionTimer, now: datetime) -> str:
        due = resolution_due(timer, now)
        await publisher.publish_resolution(due)
        return due.event_id

    return TimerFirer("resolution", store, fire, clock, lease)
