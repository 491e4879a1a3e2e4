"""The "monitoring" hold across services: ingest holds, the scheduler times, ingest resolves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.ingest.handlers import resolve_after_hold
from services.ingest.incident_store import IncidentStore
from services.ingest.sources.alertmanager import AlertmanagerWebhook, group_key_of, parse
from services.scheduler.resolution_hold import (
    ResolutionFirer,
    follow_incident,
    resolution_schedule,
)
from shared.clock import ManualClock
from shared.contracts import Alert, IncidentStatus, ResolutionDue
from shared.incidents import load_incident
from tests.conftest import load_fixture

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
HOLD = timedelta(minutes=5)


class Collected:
    def __init__(self) -> None:
        self.published: list[ResolutionDue] = []

    async def publish_resolution(self, due: ResolutionDue) -> None:
        self.published.append(due)


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url)
    await broker.connect()
    yield broker
    await broker.stop()


def alerts(name: str) -> tuple[str, list[Alert]]:
    payload = AlertmanagerWebhook.model_validate(load_fixture(name))
    return group_key_of(payload), parse(payload)


async def test_a_hold_that_stands_resolves_and_one_that_broke_does_not(
    redis: Redis, broker: RedisBroker
) -> None:
    clock = ManualClock(T0)
    store = IncidentStore(redis, broker, clock, hold=HOLD)
    timers = resolution_schedule(redis)
    published = Collected()
    firer = ResolutionFirer(timers, published, clock, lease=timedelta(seconds=30))
    group, firing = alerts("alertmanager_webhook_v4_firing.json")
    _, resolved = alerts("alertmanager_webhook_v4_resolved.json")

    opened = await store.apply(group, firing)
    assert opened.incident_id is not None
    incident_id = opened.incident_id
    assert await follow_incident(timers, redis, incident_id) is None

    clock.advance(timedelta(minutes=1))
    holding = await store.apply(group, resolved)
    assert holding.incident is not None
    assert holding.incident.status is IncidentStatus.MONITORING
    timer = await follow_incident(timers, redis, incident_id)
    assert timer is not None
    assert timer.due_at == T0 + timedelta(minutes=1) + HOLD

    clock.advance(timedelta(minutes=4))
    assert await firer.run_once() == 0  # not yet due
    clock.advance(timedelta(minutes=1))
    assert await firer.run_once() == 1
    assert await firer.run_once() == 0  # fired once, then gone

    [due] = published.published
    assert await resolve_after_hold(store, due) == ["incident.resolved"]
    assert await resolve_after_hold(store, due) == []  # a redelivery changes nothing
    incident = await load_incident(redis, incident_id)
    assert incident is not None
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_at == T0 + timedelta(minutes=1)


async def test_a_flap_cancels_the_timer(redis: Redis, broker: RedisBroker) -> None:
    clock = ManualClock(T0)
    store = IncidentStore(redis, broker, clock, hold=HOLD)
    timers = resolution_schedule(redis)
    group, firing = alerts("alertmanager_webhook_v4_firing.json")
    _, resolved = alerts("alertmanager_webhook_v4_resolved.json")
    opened = await store.apply(group, firing)
    assert opened.incident_id is not None
    await store.apply(group, resolved)
    assert await follow_incident(timers, redis, opened.incident_id) is not None

    back = await store.apply(group, firing)

    assert back.incident_id == opened.incident_id
    assert back.events == ["incident.updated"]
    assert await follow_incident(timers, redis, opened.incident_id) is None
    assert await timers.get(opened.incident_id) is None
