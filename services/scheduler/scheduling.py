"""What the scheduler does with one incident event: reschedule the incident's next update."""

from __future__ import annotations

from services.scheduler.cadence import ScheduleItem, apply_event
from services.scheduler.schedule_store import ScheduleStore
from shared.contracts import ESCALATION_EVENT_TYPES, IncidentEvent
from shared.logs import bound, get_logger

log = get_logger("clarion.scheduler")


async def schedule_incident_event(
    store: ScheduleStore[ScheduleItem], event: IncidentEvent
) -> ScheduleItem | None:
    """Apply ``event`` to the incident's pending update; returns the item now stored.

    The scheduler's own escalations (acknowledgement overdue, post-mortem due) are
    not updates to customers: they leave the cadence as it is.
    """
    if isinstance(event, ESCALATION_EVENT_TYPES):
        return await store.get(event.incident_id)
    with bound(incident_id=event.incident_id):
        before, after = await store.change(event.incident_id, lambda item: apply_event(item, event))
        if after is None:
            log.info("schedule.removed", event_id=event.event_id, event_type=event.type)
        elif after == before:
            log.info("schedule.unchanged", event_id=event.event_id, event_type=event.type)
        else:
            log.info(
                "schedule.set",
                event_id=event.event_id,
                event_type=event.type,
                sequence=after.sequence,
                severity=after.severity.value,
                due_at=after.due_at.isoformat() if after.promised else None,
            )
        return after
