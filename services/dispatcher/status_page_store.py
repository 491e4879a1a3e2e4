"""The built-in status page, stored in Redis.

Per incident, one hash (``clarion:statuspage:incident:<id>``) holds the latest
incident summary (``meta``, with its ``version``) and one field per posted update
(``update:<delivery id>``), so posting the same delivery twice changes nothing and
an older snapshot never overwrites a newer one. A sorted set indexes incidents
by their last change.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict
from redis.asyncio import Redis

from shared.contracts import Incident, IncidentStatus, Severity
from shared.redis_values import as_text, str_keys
from shared.streams import STATUS_PAGE_INDEX, status_page_incident_key

_UPDATE_PREFIX: Final = "update:"

_POST = """
local created = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
local current = redis.call('HGET', KEYS[1], 'version')
if (not current) or tonumber(current) <= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'version', ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
return created
"""


class StatusPageUpdate(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    posted_at: AwareDatetime
    state: IncidentStatus
    headline: str
    body: str
    next_update_at: AwareDatetime | None = None
    """When this update promised the next one (None: no promise, e.g. once resolved)."""


class StatusPageIncident(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    impact: str
    service: str | None = None
    severity: Severity
    state: IncidentStatus
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    resolved_at: AwareDatetime | None = None
    components: tuple[str, ...] = ()
    """The components an operator named on the incident (the plan maps services too)."""
    postmortem_url: str | None = None
    postmortem_summary: str | None = None
    updates: tuple[StatusPageUpdate, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.state is not IncidentStatus.RESOLVED


def state_for(incident: Incident) -> IncidentStatus:
    """What the page shows: the incident's own status."""
    return incident.status


def summary_of(incident: Incident, title: str | None = None) -> StatusPageIncident:
    """What the page keeps of ``incident``; ``title`` is the customer-facing one."""
    return StatusPageIncident(
        id=incident.id,
        title=title or incident.title,
        impact=incident.impact,
        service=incident.service,
        severity=incident.severity,
        state=state_for(incident),
        opened_at=incident.began_at,
        updated_at=incident.updated_at,
        resolved_at=incident.resolved_at,
        components=incident.components,
        postmortem_url=incident.postmortem_url,
        postmortem_summary=incident.postmortem_summary,
    )


class StatusPageStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._post = redis.register_script(_POST)

    async def post(
        self, incident: Incident, update: StatusPageUpdate, title: str | None = None
    ) -> bool:
        """Record ``update`` (once per id) and the incident's summary; True if it was new."""
        version = int(incident.updated_at.timestamp() * 1000)
        if incident.resolved_at is not None:
            version = max(version, int(incident.resolved_at.timestamp() * 1000))
        created = await self._post(
            keys=[status_page_incident_key(incident.id), STATUS_PAGE_INDEX],
            args=[
                f"{_UPDATE_PREFIX}{update.id}",
                update.model_dump_json(),
                summary_of(incident, title).model_dump_json(),
                version,
                incident.id,
            ],
        )
        return bool(created)

    async def get(self, incident_id: str) -> StatusPageIncident | None:
        fields = await self._redis.hgetall(status_page_incident_key(incident_id))
        return _parse(fields)

    async def recent(
        self, limit: int = 50, since: datetime | None = None
    ) -> list[StatusPageIncident]:
        """The ``limit`` most recently changed incidents (changed at or after ``since``),
        most recent first."""
        low = "-inf" if since is None else int(since.timestamp() * 1000)
        ids = await self._redis.zrevrangebyscore(STATUS_PAGE_INDEX, "+inf", low, start=0, num=limit)
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for incident_id in ids:
                pipe.hgetall(status_page_incident_key(as_text(incident_id)))
            results = await pipe.execute()
        parsed = (_parse(fields) for fields in results)
        return [incident for incident in parsed if incident is not None]


def _parse(raw: Mapping[Any, Any]) -> StatusPageIncident | None:
    fields = str_keys(raw)
    meta = fields.get("meta")
    if meta is None:
        return None
    updates = sorted(
        (
            StatusPageUpdate.model_validate_json(value)
            for key, value in fields.items()
            if key.startswith(_UPDATE_PREFIX)
        ),
        key=lambda u: (u.posted_at, u.id),
        reverse=True,
    )
    incident = StatusPageIncident.model_validate_json(meta)
    return incident.model_copy(update={"updates": tuple(updates)})
