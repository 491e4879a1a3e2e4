"""The whole scheduler service against a real Valkey: events in, UpdateDue out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.scheduler.service import SubscriberStopped, run
from shared.contracts import IncidentOpened, Severity
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, UPDATES_DUE
from tests.support.builders import make_incident, make_incident_opened, store_incident
from tests.support.streams import updates_due, wait_for_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WAIT_SECONDS = 15.0


async def publish_opened(redis: Redis, redis_url: str, incident_id: str) -> IncidentOpened:
    now = datetime.now(UTC)
    incident = make_incident(id=incident_id, severity=Severity.CRITICAL, opened_at=now)
    await store_incident(redis, incident)
    event = make_incident_opened(incident, event_id=f"{incident_id}:opened", occurred_at=now)
    async with RedisBroker(redis_url) as broker:
        await broker.publish(event, stream=INCIDENT_EVENTS)
    return event


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(update_interval_critical=timedelta(milliseconds=300))


async def test_opened_event_leads_to_update_due(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    try:
        opened = await publish_opened(redis, redis_url, "inc-svc")
        await wait_for_entries(redis, UPDATES_DUE, 1, within=WAIT_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=WAIT_SECONDS)

    first = (await updates_due(redis))[0]
    assert first.event_id == "inc-svc:update:1"
    assert first.incident_id == "inc-svc"
    assert first.due_at == opened.occurred_at + timedelta(milliseconds=300)
    assert first.emitted_at >= first.due_at
    assert first.next_update_at == first.emitted_at + timedelta(milliseconds=300)


async def test_service_fails_when_its_consumer_group_vanishes(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    try:
        await publish_opened(redis, redis_url, "inc-flush")
        await wait_for_entries(redis, UPDATES_DUE, 1, within=WAIT_SECONDS)
        await redis.flushdb()  # consumer groups gone: NOGROUP stops the subscribers

        with pytest.raises(SubscriberStopped):
            await asyncio.wait_for(service, timeout=WAIT_SECONDS)
    finally:
        stop.set()
        if not service.done():
            await asyncio.wait_for(service, timeout=WAIT_SECONDS)


async def test_an_incident_opened_while_the_scheduler_was_down_still_gets_its_updates(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    # The scheduler has run once (its consumer group exists), then stops.
    stop = asyncio.Event()
    first_run = asyncio.create_task(run(settings, stop))
    await publish_opened(redis, redis_url, "inc-before")
    await wait_for_entries(redis, UPDATES_DUE, 1, within=WAIT_SECONDS)
    stop.set()
    await asyncio.wait_for(first_run, timeout=WAIT_SECONDS)

    # While it is down an incident opens and its first update falls due.
    await publish_opened(redis, redis_url, "inc-while-down")

    stop = asyncio.Event()
    second_run = asyncio.create_task(run(settings, stop))
    try:

        async def fired_for_down_incident() -> bool:
            return any(d.incident_id == "inc-while-down" for d in await updates_due(redis))

        await eventually(fired_for_down_incident, within=WAIT_SECONDS, what="a late update")
    finally:
        stop.set()
        await asyncio.wait_for(second_run, timeout=WAIT_SECONDS)
    late = [d for d in await updates_due(redis) if d.incident_id == "inc-while-down"]
    assert late[0].sequence == 1
    assert late[0].emitted_at >= late[0].due_at  # late, but not skipped
