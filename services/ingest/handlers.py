"""FastStream wiring for ingest: the end of "monitoring" holds, from the scheduler."""

from __future__ import annotations

from redis.asyncio import Redis

from services.ingest.incident_actions import end_hold
from services.ingest.incident_store import IncidentNotFound, IncidentStore
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import ResolutionDue
from shared.logs import bound, get_logger
from shared.settings import Settings
from shared.streams import INGEST_GROUP, RESOLUTIONS_DUE

log = get_logger("clarion.ingest")


async def resolve_after_hold(store: IncidentStore, due: ResolutionDue) -> list[str]:
    """Resolve the incident if the hold ``due`` speaks of still stands; returns the events."""
    with bound(incident_id=due.incident_id):
        try:
            result = await store.change(
                due.incident_id, lambda current, now: end_hold(current, due.monitoring_since, now)
            )
        except IncidentNotFound:
            log.warning("resolution.unknown_incident", event_id=due.event_id)
            return []
        log.info("resolution.applied", event_id=due.event_id, events=result.events)
        return result.events


def resolution_consumer(
    redis: Redis, store: IncidentStore, settings: Settings
) -> GuardedConsumer[ResolutionDue]:
    async def handle(due: ResolutionDue, _entry: StreamEntry) -> None:
        await resolve_after_hold(store, due)

    return GuardedConsumer[ResolutionDue](
        redis=redis,
        stream=RESOLUTIONS_DUE,
        group=INGEST_GROUP,
        decode=ResolutionDue.model_validate_json,
        handle=handle,
        max_deliveries=settings.max_deliveries,
    )
