"""Incident state in Redis, changed atomically together with the events that announce it.

A change is computed in Python from what the store last saw of the group, then
committed by one Lua script (:data:`services.ingest.incident_scripts.COMMIT_SOURCE`)
that writes the incident, its place in the time index, the group's open-incident
pointer and every incident event (``XADD``, in FastStream's envelope), all or
nothing, and only if the pointer and the incident are still as the change saw
them. Otherwise the script answers what is there now, and the change is computed
again from that: concurrent ingest instances retry instead of splitting or
doubling an incident, as with ``WATCH``/``MULTI``. A change that writes nothing
(a resend) is checked the same way, so its answer is never based on stale state.

What the store saw of a group comes from :class:`SnapshotCache` (the state its
last change left); a group it has not seen is taken to have no open incident,
which for a new alert group (the common case) is right the first time: one round
trip to Redis per webhook. Round trips of concurrent requests are shared
(:class:`~shared.redis_batches.CoalescedCalls`), and within one
process, changes to one group or incident take turns (:class:`KeyedLocks`), so
they do not race each other into retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.typing import EncodableT, KeyT

from services.ingest.correlation import correlate
from services.ingest.incident_change import Correlation, IncidentChangeEvent, promised
from services.ingest.incident_scripts import ABSENT, CHECK_ONLY, COMMIT_SOURCE, NOT_READ
from services.ingest.snapshot_cache import Snapshot, SnapshotCache
from shared.clock import Clock
from shared.contracts import Alert, Incident
from shared.errors import ClarionError, RetryableFailure
from shared.keyed_locks import KeyedLocks
from shared.logs import get_logger
from shared.plan import Plan
from shared.redis_batches import CoalescedCalls
from shared.redis_values import DATA_FIELD, as_text
from shared.streams import INCIDENT_EVENTS, INCIDENTS_BY_TIME, incident_key, open_incident_key

MAX_ATTEMPTS: Final = 50
INCIDENT_KEY_PREFIX: Final = incident_key("")
JSON_HEADERS: Final = {"content-type": "application/json"}

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
        self._calls = CoalescedCalls(redis)
        self._commit_script = redis.register_script(COMMIT_SOURCE)
        self._turns = KeyedLocks()
        self._seen = SnapshotCache()

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
        turn = open_key or incident_key(incident_id or "")
        async with self._turns.hold(turn):
            if open_key is not None:  # remembered, or taken to have no open incident
                seen, read_now = self._seen.get(open_key) or Snapshot.NONE_OPEN, False
            else:
                assert incident_id is not None
                raw = await self._calls.execute("GET", incident_key(incident_id))
                seen, read_now = Snapshot(None, raw), True
            for _ in range(MAX_ATTEMPTS):
                current = seen.incident()
                outcome = change(current, self._clock.now())
                if outcome.incident is None and read_now:  # nothing to store, nothing to check
                    self._remember(open_key, seen, None, None, aliases)
                    return _result(current, outcome)
                stored = outcome.incident.model_dump_json().encode() if outcome.incident else None
                now = await self._commit(
                    seen,
                    outcome,
                    stored,
                    open_key=open_key,
                    incident_id=incident_id,
                    aliases=aliases,
                )
                if now is None:
                    self._remember(open_key, seen, outcome.incident, stored, aliases)
                    return _result(current, outcome)
                seen, read_now = now, True
                log.debug("incident_store.retry", open_key=open_key, incident_id=incident_id)
        raise RetryableFailure("the incident kept changing under us; try again")

    async def _commit(
        self,
        seen: Snapshot,
        outcome: Correlation,
        stored: bytes | None,
        *,
        open_key: str | None,
        incident_id: str | None,
        aliases: Collection[str],
    ) -> Snapshot | None:
        """Store ``outcome`` (its incident as ``stored``), or with nothing to store check,
        if ``seen`` still stands.

        None when done; else what is there now, to compute the change again from.
        """
        incident = outcome.incident
        read = seen.pointed or incident_id  # the incident the change saw, if any
        written = incident_key(incident.id) if incident else INCIDENT_KEY_PREFIX
        keys: list[KeyT] = [
            incident_key(read) if read else written,
            written,
            open_key or open_incident_key(incident.key if incident else ""),
            INCIDENTS_BY_TIME,
            INCIDENT_EVENTS,
        ]
        args: list[EncodableT] = [  # what must still stand
            NOT_READ if seen.pointed is None else seen.pointed,
            NOT_READ if read is None else (seen.digest or ABSENT),
            INCIDENT_KEY_PREFIX,
        ]
        if incident is None or stored is None:
            args.append(CHECK_ONLY)
        else:
            keys += [open_incident_key(alias) for alias in aliases]
            args += [
                incident.id,
                stored,
                incident.opened_at.timestamp(),
                "1" if incident.is_open else "0",
                DATA_FIELD,
                *await self._envelopes(outcome.events, incident, stored),
            ]
        reply = await self._calls.script(self._commit_script, keys, args)
        if reply == 1:
            return None
        return self._now(reply, by_pointer=open_key is not None)

    def _now(self, reply: Any, *, by_pointer: bool) -> Snapshot:
        """What the commit script answered is there now, as a snapshot."""
        raw_pointer, raw = reply
        if not by_pointer:
            return Snapshot(None, raw or None)
        if not raw_pointer:
            return Snapshot.NONE_OPEN
        pointed = as_text(raw_pointer)
        if not raw:
            log.warning("incident_store.dangling_pointer", incident_id=pointed)
        return Snapshot(pointed, raw or None)

    def _remember(
        self,
        open_key: str | None,
        seen: Snapshot,
        incident: Incident | None,
        stored: bytes | None,
        aliases: Collection[str],
    ) -> None:
        """Keep what the group is now, for its next change; forget what is not known."""
        if incident is None or stored is None:  # checked: as seen
            if open_key is not None:
                self._seen.put(open_key, seen)
            return
        pointer = open_key or open_incident_key(incident.key)
        if incident.is_open:  # the pointer names it now
            self._seen.put(pointer, Snapshot(incident.id, stored))
        elif open_key is not None:  # found through the pointer, which is gone now
            self._seen.put(pointer, Snapshot.NONE_OPEN)
        else:  # the pointer is gone if it named this incident; it may name another
            self._seen.forget(pointer)
        for alias in aliases:  # pointed here too, but not remembered (rarely used)
            self._seen.forget(open_incident_key(alias))

    async def _envelopes(
        self, events: Sequence[IncidentChangeEvent], incident: Incident, stored: bytes
    ) -> list[bytes]:
        """Each event with its promise, as FastStream publishes it (its binary envelope).

        ``stored`` is ``incident`` as JSON: written into the events that carry it.
        """
        return [
            await self._broker.message_format.encode(
                message=event_json(promised(event, self._plan), incident, stored),
                reply_to=None,
                headers=JSON_HEADERS,
                correlation_id=event.event_id,  # what it is about, and no uuid4 per event
            )
            for event in events
        ]


def event_json(event: IncidentChangeEvent, incident: Incident, stored: bytes) -> bytes:
    """``event`` as JSON; when it carries ``incident``, its JSON ``stored`` is written in
    rather than made again (the incident is most of an event: a third of its serialising)."""
    if event.incident is not incident:
        return event.model_dump_json().encode()
    rest = event.model_dump_json(exclude={"incident"}).encode()  # never "{}": it has an id
    return b'{"incident":' + stored + b"," + rest[1:]


def _result(current: Incident | None, outcome: Correlation) -> ApplyResult:
    incident = outcome.incident or current
    return ApplyResult(
        incident_id=incident.id if incident else None,
        events=[event.type for event in outcome.events],
        duplicate=current is not None and not outcome.events,
        incident=incident,
    )
