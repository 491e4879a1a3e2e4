"""The whole scheduler service against a real Valkey: events in, UpdateDue out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.scheduler.service import SubscriberStopped, run
from shared.contracts import IncidentOpened, Severity
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, UPDATES_DUE
from tests.support.builders import make_incident, make_incident_opened, store_incident
from tests.support.plans import CADENCE, make_plan, write_plan
from tests.support.streams import updates_due, wait_for_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WAIT_SECONDS = 15.0
PLAN = make_plan()  # SEV1 every 30 min
FIRST_UPDATE_AFTER = timedelta(milliseconds=300)
"""What the events here promise: plans update every minute at most, too slow to wait for."""


async def publish_opened(redis: Redis, redis_url: str, incident_id: str) -> IncidentOpened:
    now = datetime.now(UTC)
    incident = make_incident(id=incident_id, severity=Severity.CRITICAL, opened_at=now)
    await store_incident(redis, incident)
    event = make_incident_opened(
        incident,
        event_id=f"{incident_id}:opened",
        occurred_at=now,
        next_update_at=now + FIRST_UPDATE_AFTER,
    )
    async with RedisBroker(redis_url) as broker:
        await broker.publish(event, stream=INCIDENT_EVENTS)
    return event


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


async def test_opened_event_leads_to_update_due(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop, plan=PLAN))
    try:
        opened = await publish_opened(redis, redis_url, "inc-svc")
        await wait_for_entries(redis, UPDATES_DUE, 1, within=WAIT_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=WAIT_SECONDS)

    first = (await updates_due(redis))[0]
    assert first.event_id == "inc-svc:update:1"
    assert first.incident_id == "inc-svc"
    assert first.due_at == opened.next_update_at == opened.occurred_at + FIRST_UPDATE_AFTER
    assert first.emitted_at >= first.due_at
    assert first.next_update_at == first.emitted_at + timedelta(minutes=30)  # the plan's SEV1


async def test_service_fails_when_its_consumer_group_vanishes(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop, plan=PLAN))
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
    first_run = asyncio.create_task(run(settings, stop, plan=PLAN))
    await publish_opened(redis, redis_url, "inc-before")
    await wait_for_entries(redis, UPDATES_DUE, 1, within=WAIT_SECONDS)
    stop.set()
    await asyncio.wait_for(first_run, timeout=WAIT_SECONDS)

    # While it is down an incident opens and its first update falls due.
    await publish_opened(redis, redis_url, "inc-while-down")

    stop = asyncio.Event()
    second_run = asyncio.create_task(run(settings, stop, plan=PLAN))
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


async def test_without_a_plan_argument_the_service_reads_the_plan_settings_name(
    redis: Redis, redis_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = write_plan(tmp_path, cadence={**CADENCE, Severity.CRITICAL: timedelta(minutes=7)})
    stop = asyncio.Event()
    service = asyncio.create_task(run(make_settings(plan=path), stop))
    try:
        await publish_opened(redis, redis_url, "inc-file")
        await wait_for_entries(redis, UPDATES_DUE, 1, within=WAIT_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=WAIT_SECONDS)

    (first,) = await updates_due(redis)
    assert first.next_update_at == first.emitted_at + timedelta(minutes=7)
