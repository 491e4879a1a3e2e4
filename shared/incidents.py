"""Reading incident state, which ingest owns and writes (``clarion:incident:<id>``)."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.contracts import Incident
from shared.redis_values import as_text
from shared.streams import INCIDENTS_BY_TIME, incident_key


async def load_incident(redis: Redis, incident_id: str) -> Incident | None:
    raw = await redis.get(incident_key(incident_id))
    return Incident.model_validate_json(raw) if raw else None


async def recent_incidents(redis: Redis, limit: int = 50) -> list[Incident]:
    """The newest ``limit`` incidents, newest first."""
    ids = await redis.zrevrange(INCIDENTS_BY_TIME, 0, limit - 1)
    if not ids:
        return []
    raws = await redis.mget([incident_key(as_text(i)) for i in ids])
    return [Incident.model_validate_json(raw) for raw in raws if raw]
