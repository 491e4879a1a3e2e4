"""Incident state in Redis, changed atomically together with the events that announce it.

One ``MULTI``/``EXEC`` writes the incident, its place in the time index, the
group's open-incident pointer and every incident event (``XADD`` through
FastStream, queued on the same pipeline). Either all of it lands or none of it
does. ``WATCH`` on the pointer and on the incident makes concurrent ingest
instances retry instead of splitting or doubling an incident.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from services.ingest.correlation import correlate
from services.ingest.incident_change import Correlation, promised
from shared.clock import Clock
from shared.contracts import Alert, Incident
from shared.errors import ClarionError, RetryableFailure
from shared.logs import get_logger
from shared.plan import Plan
from shared.redis_values import as_text
from shared.streams import INCIDENT_EVENTS, INCIDENTS_BY_TIME, incident_key, open_incident_key

MAX_ATTEMPTS: Final = 50

log = get_logger("clarion.ingest.store")

IncidentAction = Callable[[Incident, datetime], Correlation]
"""A change to one incident at a moment (see :mod:`services.ingest.incident_actions`)."""


class IncidentNotFound(ClarionError):
    """No incident has that id (answered with a 404)."""


@dataclass(frozen=True)
class ApplyResult:
    """What one change did: the incident it touched, the events it caused."""

    incident_id: str | None
    events: list[str]
    duplicate: bool
    incident: Incident | None = None


def new_incident_id() -> str:
    return uuid.uuid4().hex


class IncidentStore:
    def __init__(self, redis: Redis, broker: RedisBroker, clock: Clock, plan: Plan) -> None:
        self._redis = redis
        self._broker = broker
        self._clock = clock
        self._plan = plan

    async def apply(
        self,
        group_key: str,
        alerts: list[Alert],
        truncated: int = 0,
        external_url: str | None = None,
        aliases: Collection[str] = (),
    ) -> ApplyResult:
        """Correlate ``alerts`` with the group's open incident and store the outcome.

        ``aliases`` are other group keys to point at the incident while it is open
        (the sources' own keys of alerts regrouped by label).

        Returns only once the new state and its events are in Redis. Raises
        :class:`RetryableFailure` when other writers keep winning the race, and
        redis-py's connection errors when Redis stays unreachable.
        """

        def change(current: Incident | None, now: datetime) -> Correlation:
            return correlate(
                current,
                alerts,
                now,
                new_incident_id,
                truncated=truncated,
                external_url=external_url,
                hold=self._plan.monitoring_hold,
            )

        return await self._transact(open_incident_key(group_key), None, change, aliases)

    async def change(self, incident_id: str, action: IncidentAction) -> ApplyResult:
        """Apply ``action`` to the incident ``incident_id``; :class:`IncidentNotFound` if none."""

        def change(current: Incident | None, now: datetime) -> Correlation:
            if current is None:
                raise IncidentNotFound(f"no incident has the id {incident_id}")
            return action(current, now)

        return await self._transact(None, incident_id, change)

    async def change_open(self, group_key: str, action: IncidentAction) -> ApplyResult:
        """Apply ``action`` to the group's open incident; nothing happens when there is none."""

        def change(current: Incident | None, now: datetime) -> Correlation:
            if current is None or not current.is_open:  # a stale alias of a resolved one
                return Correlation(None)
            return action(current, now)

        return await self._transact(open_incident_key(group_key), None, change)

    async def _transact(
        self,
        open_key: str | None,
        incident_id: str | None,
        change: Callable[[Incident | None, datetime], Correlation],
        aliases: Collection[str] = (),
    ) -> ApplyResult:
        for _ in range(MAX_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    current, pointed = await self._load(pipe, open_key, incident_id)
                    outcome = change(current, self._clock.now())
                    if outcome.incident is None:
                        return _result(current, outcome)  # leaving the block unwatches
                    pointer = open_key or open_incident_key(outcome.incident.key)
                    if open_key is None:  # else _load watched and read it already
                        await pipe.watch(pointer)
                        pointed = as_text(await pipe.get(pointer) or b"")
                    points_here = pointed == outcome.incident.id
                    pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                    await self._queue_writes(pipe, pointer, points_here, outcome, aliases)
                    await pipe.execute()
                except WatchError:
                    log.debug("incident_store.retry", open_key=open_key, incident_id=incident_id)
                    continue
            return _result(current, outcome)
        raise RetryableFailure("the incident kept changing under us; try again")

    async def _load(
        self, pipe: Pipeline, open_key: str | None, incident_id: str | None
    ) -> tuple[Incident | None, str]:
        """The incident (watched), and the id ``open_key`` points at ("" without one)."""
        pointed = ""
        if open_key is not None:
            await pipe.watch(open_key)
            raw_id = await pipe.get(open_key)
            if raw_id is None:
                return None, pointed
            incident_id = pointed = as_text(raw_id)
        assert incident_id is not None
        key = incident_key(incident_id)
        await pipe.watch(key)
        raw = await pipe.get(key)
        if raw is None:
            if open_key is not None:
                log.warning("incident_store.dangling_pointer", incident_id=incident_id)
            return None, pointed
        return Incident.model_validate_json(raw), pointed

    async def _queue_writes(
        self,
        pipe: Pipeline,
        pointer: str,
        points_here: bool,
        outcome: Correlation,
        aliases: Collection[str],
    ) -> None:
        incident = outcome.incident
        assert incident is not None
        pipe.set(incident_key(incident.id), incident.model_dump_json())
        pipe.zadd(INCIDENTS_BY_TIME, {incident.id: incident.opened_at.timestamp()})
        if incident.is_open:
            pipe.set(pointer, incident.id)
            for alias in aliases:  # a stale alias points at a resolved incident: harmless
                pipe.set(open_incident_key(alias), incident.id)
        elif points_here:
            # A resolved group that fires again later opens a new incident.
            pipe.delete(pointer)
        for event in outcome.events:
            await self._broker.publish(
                promised(event, self._plan), stream=INCIDENT_EVENTS, pipeline=pipe
            )


def _result(current: Incident | None, outcome: Correlation) -> ApplyResult:
    incident = outcome.incident or current
    return ApplyResult(
        incident_id=incident.id if incident else None,
        events=[event.type for event in outcome.events],
        duplicate=current is not None and not outcome.events,
        incident=incident,
    )
