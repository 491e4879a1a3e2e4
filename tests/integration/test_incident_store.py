from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from shared.clock import ManualClock
from shared.contracts import IncidentOpened, IncidentResolved, IncidentStatus
from shared.incidents import load_incident, recent_incidents
from shared.streams import INCIDENT_EVENTS, INCIDENTS_BY_TIME, open_incident_key
from tests.support.incident_stores import (
    FIRING,
    RESOLVED,
    StoreFactory,
    batch,
)
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)


async def test_open_repeat_resolve_lifecycle(redis: Redis, make_store: StoreFactory) -> None:
    clock = ManualClock(T0)
    store = await make_store(clock)
    group_key, firing = batch(FIRING)

    opened = await store.apply(group_key, firing, truncated=2)

    assert opened.events == ["incident.opened"]
    assert opened.duplicate is False
    assert opened.incident_id is not None
    assert await redis.get(open_incident_key(group_key)) == opened.incident_id.encode()
    incident = await load_incident(redis, opened.incident_id)
    assert incident is not None
    assert incident.status is IncidentStatus.INVESTIGATING
    assert incident.truncated_alerts == 2
    assert await redis.zscore(INCIDENTS_BY_TIME, opened.incident_id) == T0.timestamp()
    (event,) = await incident_events(redis)
    assert isinstance(event, IncidentOpened)
    assert event.incident == incident

    clock.advance(timedelta(minutes=5))
    repeat = await store.apply(group_key, firing, truncated=2)

    assert repeat.events == []
    assert repeat.duplicate is True
    assert repeat.incident_id == opened.incident_id
    assert await load_incident(redis, opened.incident_id) == incident  # updated_at untouched
    assert len(await incident_events(redis)) == 1

    clock.advance(timedelta(minutes=5))
    _, resolved_alerts = batch(RESOLVED)
    resolved = await store.apply(group_key, resolved_alerts)

    assert resolved.events == ["incident.resolved"]
    assert resolved.incident_id == opened.incident_id
    assert await redis.exists(open_incident_key(group_key)) == 0
    stored = await load_incident(redis, opened.incident_id)
    assert stored is not None
    assert stored.status is IncidentStatus.RESOLVED
    events = await incident_events(redis)
    assert [e.type for e in events] == ["incident.opened", "incident.resolved"]
    assert isinstance(events[1], IncidentResolved)
    assert events[1].incident == stored


async def test_resolved_webhook_without_open_incident_stores_nothing(
    redis: Redis, make_store: StoreFactory
) -> None:
    store = await make_store(ManualClock(T0))
    group_key, resolved_alerts = batch(RESOLVED)

    result = await store.apply(group_key, resolved_alerts)

    assert result.incident_id is None
    assert result.events == []
    assert await redis.exists(INCIDENT_EVENTS, INCIDENTS_BY_TIME) == 0


async def test_the_group_firing_after_resolution_opens_a_new_incident(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    store = await make_store(clock)
    group_key, firing = batch(FIRING)
    first = await store.apply(group_key, firing)
    await store.apply(group_key, batch(RESOLVED)[1])

    clock.advance(timedelta(hours=1))
    second = await store.apply(group_key, firing)

    assert second.events == ["incident.opened"]
    assert second.incident_id not in {None, first.incident_id}
    assert [i.id for i in await recent_incidents(redis)] == [second.incident_id, first.incident_id]


async def test_concurrent_instances_open_exactly_one_incident(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    stores = [await make_store(clock), await make_store(clock)]
    group_key, firing = batch(FIRING)

    results = await asyncio.gather(*(stores[i % 2].apply(group_key, firing) for i in range(12)))

    assert sorted(len(r.events) for r in results) == [0] * 11 + [1]
    assert {r.incident_id for r in results} == {results[0].incident_id}
    assert sum(r.duplicate for r in results) == 11
    events = await incident_events(redis)
    assert [e.type for e in events] == ["incident.opened"]
    assert await redis.zcard(INCIDENTS_BY_TIME) == 1
    assert events[0].incident_id == results[0].incident_id


async def test_concurrent_resolution_and_repeat_resolve_once(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    stores = [await make_store(clock), await make_store(clock)]
    group_key, firing = batch(FIRING)
    _, resolved_alerts = batch(RESOLVED)
    await stores[0].apply(group_key, firing)

    await asyncio.gather(*(stores[i % 2].apply(group_key, resolved_alerts) for i in range(8)))

    assert [e.type for e in await incident_events(redis)] == [
        "incident.opened",
        "incident.resolved",
    ]
    assert await redis.exists(open_incident_key(group_key)) == 0
