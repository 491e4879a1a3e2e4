"""Incident state in Redis, changed atomically together with the events that announce it.

One ``MULTI``/``EXEC`` writes the incident, its place in the time index, the
group's open-incident pointer and every incident event (``XADD`` through
FastStream, queued on the same pipeline). Either all of it lands or none of it
does. ``WATCH`` on the pointer and on the incident makes concurrent ingest
instances retry instead of splitting or doubling an incident.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from services.ingest.correlation import Correlation, correlate
from shared.clock import Clock
from shared.contracts import Alert, Incident, IncidentStatus
from shared.errors import RetryableFailure
from shared.logs import get_logger
from shared.redis_values import as_text
from shared.streams import INCIDENT_EVENTS, INCIDENTS_BY_TIME, incident_key, open_incident_key

MAX_ATTEMPTS: Final = 50

log = get_logger("clarion.ingest.store")


@dataclass(frozen=True)
class ApplyResult:
    """What one batch did: the incident it touched, the events it caused."""

    incident_id: str | None
    events: list[str]
    duplicate: bool


def new_incident_id() -> str:
    return uuid.uuid4().hex


class IncidentStore:
    def __init__(self, redis: Redis, broker: RedisBroker, clock: Clock) -> None:
        self._redis = redis
        self._broker = broker
        self._clock = clock

    async def apply(
        self,
        group_key: str,
        alerts: list[Alert],
        truncated: int = 0,
        external_url: str | None = None,
    ) -> ApplyResult:
        """Correlate ``alerts`` with the group's open incident and store the outcome.

        Returns only once the new state and its events are in Redis. Raises
        :class:`RetryableFailure` when other writers keep winning the race, and
        redis-py's connection errors when Redis stays unreachable.
        """
        open_key = open_incident_key(group_key)
        for _ in range(MAX_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(open_key)
                    current = await self._load_open(pipe, open_key)
                    outcome = correlate(
                        current,
                        alerts,
                        self._clock.now(),
                        new_incident_id,
                        truncated=truncated,
                        external_url=external_url,
                    )
                    if outcome.incident is None:
                        return _result(current, outcome)  # leaving the block unwatches
                    pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                    await self._queue_writes(pipe, open_key, outcome.incident, outcome)
                    await pipe.execute()
                except WatchError:
                    log.debug("incident_store.retry", group_key=group_key)
                    continue
            return _result(current, outcome)
        raise RetryableFailure(f"incident for group {group_key} kept changing; try again")

    async def _load_open(self, pipe: Pipeline, open_key: str) -> Incident | None:
        raw_id = await pipe.get(open_key)
        if raw_id is None:
            return None
        incident_id = as_text(raw_id)
        key = incident_key(incident_id)
        await pipe.watch(key)
        raw = await pipe.get(key)
        if raw is None:
            log.warning("incident_store.dangling_pointer", incident_id=incident_id)
            return None
        return Incident.model_validate_json(raw)

    async def _queue_writes(
        self, pipe: Pipeline, open_key: str, incident: Incident, outcome: Correlation
    ) -> None:
        pipe.set(incident_key(incident.id), incident.model_dump_json())
        pipe.zadd(INCIDENTS_BY_TIME, {incident.id: incident.opened_at.timestamp()})
        if incident.status is IncidentStatus.OPEN:
            pipe.set(open_key, incident.id)
        else:
            # A resolved group that fires again later opens a new incident.
            pipe.delete(open_key)
        for event in outcome.events:
            await self._broker.publish(event, stream=INCIDENT_EVENTS, pipeline=pipe)


def _result(current: Incident | None, outcome: Correlation) -> ApplyResult:
    incident = outcome.incident or current
    return ApplyResult(
        incident_id=incident.id if incident else None,
        events=[event.type for event in outcome.events],
        duplicate=current is not None and not outcome.events,
    )
