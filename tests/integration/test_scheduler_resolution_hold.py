"""The "monitoring" hold across services: ingest holds, the scheduler times, ingest resolves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.ingest.handlers import resolve_after_hold
from services.ingest.incident_store import IncidentStore
from services.ingest.sources.alertmanager import AlertmanagerWebhook, group_key_of, parse
from services.scheduler.resolution_hold import (
    follow_incident,
    resolution_firer,
    resolution_schedule,
)
from shared.clock import ManualClock
from shared.contracts import Alert, IncidentStatus, ResolutionDue
from shared.incidents import load_incident
from tests.conftest import load_fixture
from tests.support.builders import make_incident, store_incident
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
HOLD = timedelta(minutes=5)
PLAN = make_plan(monitoring_hold=HOLD)


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
    store = IncidentStore(redis, broker, clock, PLAN)
    timers = resolution_schedule(redis)
    published = Collected()
    firer = resolution_firer(timers, published, clock, lease=timedelta(seconds=30))
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
    store = IncidentStore(redis, broker, clock, PLAN)
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


async def hold(redis: Redis, since: datetime) -> None:
    """Store ``inc-1`` holding in "monitoring" since ``since``, resolving a HOLD later."""
    await store_incident(
        redis,
        make_incident(
            status=IncidentStatus.MONITORING,
            monitoring_since=since,
            resolves_at=since + HOLD,
            updated_at=since,
        ),
    )


async def test_a_failed_publish_fires_again_after_the_lease(redis: Redis) -> None:
    clock = ManualClock(T0)
    timers = resolution_schedule(redis)
    lease = timedelta(seconds=30)

    class FailsOnce(Collected):
        failed = False

        async def publish_resolution(self, due: ResolutionDue) -> None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("broker away")
            await super().publish_resolution(due)

    published = FailsOnce()
    firer = resolution_firer(timers, published, clock, lease)
    await hold(redis, T0)
    assert await follow_incident(timers, redis, "inc-1") is not None

    clock.advance(HOLD)
    assert await firer.run_once() == 0  # failed: the claim keeps its lease
    assert published.failed
    clock.advance(lease - timedelta(milliseconds=1))
    assert await firer.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await firer.run_once() == 1  # late, never lost

    [due] = published.published
    assert due.monitoring_since == T0
    assert due.due_at == T0 + HOLD
    assert due.emitted_at == clock.now()
    assert await timers.get("inc-1") is None


async def test_a_hold_that_restarted_while_firing_keeps_its_new_timer(redis: Redis) -> None:
    clock = ManualClock(T0)
    timers = resolution_schedule(redis)
    restarted_at = T0 + HOLD + timedelta(seconds=1)

    class HoldRestartsDuringPublish(Collected):
        async def publish_resolution(self, due: ResolutionDue) -> None:
            # A flap and a new recovery are handled while this fire is in flight.
            await hold(redis, restarted_at)
            await follow_incident(timers, redis, "inc-1")
            await super().publish_resolution(due)

    published = HoldRestartsDuringPublish()
    firer = resolution_firer(timers, published, clock, lease=timedelta(seconds=30))
    await hold(redis, T0)
    await follow_incident(timers, redis, "inc-1")

    clock.advance(HOLD)
    assert await firer.run_once() == 1

    timer = await timers.get("inc-1")
    assert timer is not None
    assert (timer.monitoring_since, timer.due_at) == (restarted_at, restarted_at + HOLD)
    clock.advance(timedelta(seconds=1) + HOLD)
    assert await firer.run_once() == 1
    assert [d.monitoring_since for d in published.published] == [T0, restarted_at]


async def test_two_firers_fire_a_timer_once(redis: Redis, redis_url: str) -> None:
    clock = ManualClock(T0)
    published = Collected()
    other = Redis.from_url(redis_url)
    try:
        firers = [
            resolution_firer(resolution_schedule(client), published, clock, timedelta(seconds=30))
            for client in (redis, other)
        ]
        await hold(redis, T0)
        await follow_incident(resolution_schedule(redis), redis, "inc-1")
        clock.advance(HOLD)

        counts = await asyncio.gather(*(f.run_once() for f in firers))
    finally:
        await other.aclose()

    assert sorted(counts) == [0, 1]
    assert len(published.published) == 1
