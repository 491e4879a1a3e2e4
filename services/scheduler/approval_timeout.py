"""The auto-publish timer of held messages: "respond at once" holds even when nobody approves.

The dispatcher asks for a timer when it holds an event's customer-facing
messages (``ApprovalRequested``). A human approval (``ApprovalGranted``) cancels
it; otherwise, when it fires, the scheduler publishes ``ApprovalGranted`` with
``automatic=True`` and the dispatcher sends what was held. Timers are keyed by
the held event's id, so an event asks once however often it is redelivered.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from redis.asyncio import Redis

from services.scheduler.cadence import DueItem
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.timers import TimerFirer
from shared.clock import Clock
from shared.contracts import ApprovalGranted, ApprovalRequested
from shared.logs import get_logger
from shared.streams import APPROVAL_DUE, APPROVAL_ITEMS

AUTO_PUBLISHER = "auto-publish"

log = get_logger("clarion.scheduler.approval")


class ApprovalTimer(DueItem):
    """Publish the held messages of ``event_id`` at ``due_at``."""

    event_id: str


class ApprovalPublisher(Protocol):
    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None: ...


def approval_schedule(redis: Redis) -> ScheduleStore[ApprovalTimer]:
    return ScheduleStore(redis, ApprovalTimer, APPROVAL_DUE, APPROVAL_ITEMS)


async def follow_approval(
    store: ScheduleStore[ApprovalTimer], event: ApprovalRequested | ApprovalGranted
) -> None:
    """Arm the timer for a request (once), cancel it on a human's approval."""
    if isinstance(event, ApprovalRequested):
        timer = ApprovalTimer(
            incident_id=event.incident_id, event_id=event.event_id, due_at=event.auto_publish_at
        )
        before, after = await store.change(event.event_id, lambda current: current or timer)
        if before is None and after is not None:
            log.info("approval.timer_set", event_id=event.event_id, due_at=timer.due_at.isoformat())
    elif not event.automatic:
        before, _ = await store.change(event.event_id, lambda _current: None)
        if before is not None:
            log.info("approval.timer_cancelled", event_id=event.event_id, by=event.by)


def approval_firer(
    store: ScheduleStore[ApprovalTimer],
    publisher: ApprovalPublisher,
    clock: Clock,
    lease: timedelta,
) -> TimerFirer[ApprovalTimer]:
    async def fire(timer: ApprovalTimer, now: datetime) -> str:
        await publisher.publish_approval(
            ApprovalGranted(
                event_id=timer.event_id,
                incident_id=timer.incident_id,
                granted_at=now,
                by=AUTO_PUBLISHER,
                automatic=True,
            )
        )
        return timer.event_id

    return TimerFirer("approval", store, fire, clock, lease)
