"""Reading incident state, which ingest owns and writes (``clarion:incident:<id>``)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from shared.contracts import Incident
from shared.redis_values import as_text
from shared.streams import INCIDENTS_BY_TIME, incident_key


async def load_incident(redis: Redis, incident_id: str) -> Incident | None:
    raw = await redis.get(incident_key(incident_id))
    return parse_incident(raw)


async def stored_incidents(redis: Redis, incident_ids: Sequence[str]) -> list[bytes | str | None]:
    """The stored records of ``incident_ids``, in order, in one round trip (``None`` for an
    incident not stored); each is parsed by its user (:func:`parse_incident`), so one
    record that cannot be read fails only its own work."""
    if not incident_ids:
        return []
    return list(await redis.mget([incident_key(i) for i in incident_ids]))


def parse_incident(raw: bytes | str | None) -> Incident | None:
    """A stored incident record (ValidationError when it is not one); ``None`` for none."""
    return Incident.model_validate_json(raw) if raw else None


async def recent_incidents(redis: Redis, limit: int = 50) -> list[Incident]:
    """The newest ``limit`` incidents, newest first."""
    ids = await redis.zrevrange(INCIDENTS_BY_TIME, 0, limit - 1)
    raws = await stored_incidents(redis, [as_text(i) for i in ids])
    return [incident for raw in raws if (incident := parse_incident(raw)) is not None]
