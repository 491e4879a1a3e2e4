"""The whole scheduler service against a real Valkey: events in, UpdateDue out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from faststream.redis import BinaryMessageFormatV1, RedisBroker
from redis.asyncio import Redis

from services.scheduler.service import SubscriberStopped, run
from shared.contracts import Incident, IncidentOpened, IncidentStatus, Severity, UpdateDue
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, UPDATES_DUE, incident_key

pytestmark = pytest.mark.integration

WAIT_SECONDS = 15.0


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def wait_for_updates(redis: Redis, count: int) -> None:
    """Block on the stream itself (XREAD BLOCK) until it holds ``count`` entries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    last_id = b"0"
    while await redis.xlen(UPDATES_DUE) < count:
        remaining_ms = int((deadline - loop.time()) * 1000)
        if remaining_ms <= 0:
            raise AssertionError(f"fewer than {count} UpdateDue in {WAIT_SECONDS}s")
        batches = cast(
            "list[tuple[bytes, StreamEntries]]",
            await redis.xread({UPDATES_DUE: last_id}, block=remaining_ms, count=100),
        )
        for _stream, entries in batches:
            last_id = entries[-1][0]


async def read_updates(redis: Redis) -> list[UpdateDue]:
    entries = cast("StreamEntries", await redis.xrange(UPDATES_DUE))
    updates = []
    for _, fields in entries:
        body, _headers = BinaryMessageFormatV1.parse(fields[b"__data__"])
        updates.append(UpdateDue.model_validate_json(body))
    return updates


async def publish_opened(redis: Redis, redis_url: str, incident_id: str) -> IncidentOpened:
    now = datetime.now(UTC)
    incident = Incident(
        id=incident_id,
        key=f"test:{incident_id}",
        source="alertmanager",
        title="Checkout fails",
        impact="Customers cannot place orders",
        severity=Severity.CRITICAL,
        status=IncidentStatus.OPEN,
        opened_at=now,
        updated_at=now,
    )
    await redis.set(incident_key(incident_id), incident.model_dump_json())
    event = IncidentOpened(event_id=f"{incident_id}:opened", occurred_at=now, incident=incident)
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
        await wait_for_updates(redis, 1)
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=WAIT_SECONDS)

    first = (await read_updates(redis))[0]
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
        await wait_for_updates(redis, 1)
        await redis.flushdb()  # consumer groups gone: NOGROUP stops the subscribers

        with pytest.raises(SubscriberStopped):
            await asyncio.wait_for(service, timeout=WAIT_SECONDS)
    finally:
        stop.set()
        if not service.done():
            await asyncio.wait_for(service, timeout=WAIT_SECONDS)
