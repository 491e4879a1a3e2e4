"""The scheduler's schedule and ticker against a real Valkey, driven by a ManualClock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import cast

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.scheduler.cadence import ScheduleItem, ceil_ms
from services.scheduler.schedule_store import ScheduleStore, update_schedule
from services.scheduler.scheduling import schedule_incident_event
from services.scheduler.service import BrokerUpdatePublisher
from services.scheduler.ticker import Ticker
from shared.clock import ManualClock
from shared.contracts import Incident, IncidentEvent, IncidentStatus, Severity, UpdateDue
from shared.settings import Settings
from shared.streams import SCHEDULE_DUE, SCHEDULE_ITEMS, SCHEDULER_HEARTBEAT, incident_key
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_severity_changed,
    make_incident_updated,
    store_incident,
)
from tests.support.streams import updates_due

pytestmark = pytest.mark.integration

CRITICAL = timedelta(seconds=2)  # make_settings: critical 2s, error 3s, warning 4s, info 5s
WARNING = timedelta(seconds=4)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def broker(redis_url: str, redis: Redis) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
def store(redis: Redis) -> ScheduleStore[ScheduleItem]:
    return update_schedule(redis)


@pytest.fixture
def ticker(
    store: ScheduleStore[ScheduleItem],
    broker: RedisBroker,
    redis: Redis,
    settings: Settings,
    clock: ManualClock,
) -> Ticker:
    return Ticker(store, BrokerUpdatePublisher(broker), redis, settings, clock)


async def open_incident(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    settings: Settings,
    clock: ManualClock,
    incident_id: str = "inc-1",
    severity: Severity = Severity.CRITICAL,
) -> Incident:
    incident = make_incident(id=incident_id, severity=severity)
    await store_incident(redis, incident)
    event = make_incident_opened(
        incident, event_id=f"{incident_id}:opened", occurred_at=clock.now()
    )
    await schedule_incident_event(store, event, settings.update_interval)
    return incident


async def test_opened_incident_gets_updates_at_its_cadence(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    await open_incident(redis, store, settings, clock)

    clock.advance(CRITICAL - timedelta(milliseconds=1))
    assert await ticker.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await ticker.run_once() == 1
    clock.advance(CRITICAL + timedelta(milliseconds=500))  # a little late
    assert await ticker.run_once() == 1

    first, second = await updates_due(redis)
    assert first.event_id == "inc-1:update:1"
    assert (first.sequence, first.due_at, first.emitted_at) == (1, T0 + CRITICAL, T0 + CRITICAL)
    assert first.next_update_at == T0 + 2 * CRITICAL
    assert second.event_id == "inc-1:update:2"
    assert second.due_at == first.next_update_at
    assert second.emitted_at == clock.now()
    assert second.next_update_at == clock.now() + CRITICAL
    pending = await store.get("inc-1")
    assert pending is not None
    assert (pending.sequence, pending.due_at) == (3, second.next_update_at)


async def test_resolved_incident_gets_no_more_updates(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    incident = await open_incident(redis, store, settings, clock)
    clock.advance(CRITICAL)
    assert await ticker.run_once() == 1

    clock.advance(timedelta(seconds=1))
    resolved = incident.model_copy(update={"status": IncidentStatus.RESOLVED})
    await store_incident(redis, resolved)
    event = make_incident_resolved(resolved, event_id="e-res", occurred_at=clock.now())
    await schedule_incident_event(store, event, settings.update_interval)

    clock.advance(timedelta(minutes=10))
    assert await ticker.run_once() == 0
    assert len(await updates_due(redis)) == 1
    assert await store.get("inc-1") is None
    assert await redis.zcard(SCHEDULE_DUE) == 0


async def test_severity_change_moves_the_due_time(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    incident = await open_incident(redis, store, settings, clock, severity=Severity.WARNING)
    clock.advance(timedelta(seconds=1))
    critical = incident.model_copy(update={"severity": Severity.CRITICAL})
    await store_incident(redis, critical)
    changed = make_incident_severity_changed(
        critical, previous_severity=Severity.WARNING, event_id="e-sev", occurred_at=clock.now()
    )
    await schedule_incident_event(store, changed, settings.update_interval)

    clock.advance(CRITICAL - timedelta(milliseconds=1))  # T0+2.999s, before warning's 4s too
    assert await ticker.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await ticker.run_once() == 1

    (update,) = await updates_due(redis)
    assert update.sequence == 1
    assert update.due_at == T0 + timedelta(seconds=1) + CRITICAL
    assert update.next_update_at == clock.now() + CRITICAL


async def test_update_and_stale_update_after_a_fire(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    incident = await open_incident(redis, store, settings, clock)
    stale_at = T0 + timedelta(seconds=1)
    clock.advance(CRITICAL)
    assert await ticker.run_once() == 1

    clock.advance(timedelta(seconds=1))
    fresh = make_incident_updated(incident, event_id="e-fresh", occurred_at=clock.now())
    await schedule_incident_event(store, fresh, settings.update_interval)
    stale = make_incident_updated(incident, event_id="e-stale", occurred_at=stale_at)
    await schedule_incident_event(store, stale, settings.update_interval)

    pending = await store.get("inc-1")
    assert pending is not None
    assert pending.sequence == 2
    assert pending.due_at == clock.now() + CRITICAL
    assert await store.due_score("inc-1") == ceil_ms(pending.due_at)


async def test_two_tickers_never_double_fire(
    redis: Redis,
    redis_url: str,
    broker: RedisBroker,
    store: ScheduleStore[ScheduleItem],
    settings: Settings,
    clock: ManualClock,
) -> None:
    ids = [f"inc-{n}" for n in range(120)]
    for incident_id in ids:
        await open_incident(redis, store, settings, clock, incident_id)
    other_redis = Redis.from_url(redis_url)
    try:
        tickers = [
            Ticker(
                update_schedule(client),
                BrokerUpdatePublisher(broker),
                client,
                settings,
                clock,
                batch_size=7,
            )
            for client in (redis, other_redis)
        ]
        for _ in range(3):
            clock.advance(CRITICAL)
            counts = await asyncio.gather(*(t.run_once() for t in tickers))
            assert sum(counts) == len(ids)
    finally:
        await other_redis.aclose()

    fired = Counter((u.incident_id, u.sequence) for u in await updates_due(redis))
    assert set(fired) == {(i, s) for i in ids for s in (1, 2, 3)}
    assert set(fired.values()) == {1}


async def test_claim_of_a_dead_instance_is_fired_after_the_lease(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    await open_incident(redis, store, settings, clock)
    clock.advance(CRITICAL)
    lease = timedelta(milliseconds=settings.scheduler_lease_ms)
    (dead_claim,) = await store.claim(clock.now(), lease, limit=10)  # ... and then it dies

    assert await ticker.run_once() == 0
    clock.advance(lease - timedelta(milliseconds=1))
    assert await ticker.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await ticker.run_once() == 1

    (update,) = await updates_due(redis)
    assert (update.sequence, update.due_at) == (1, T0 + CRITICAL)
    # The instance wakes up: its lease is gone, it changes nothing.
    item = dead_claim.item
    assert item is not None
    assert not await store.complete(dead_claim, item.model_copy(update={"sequence": 9}))
    pending = await store.get("inc-1")
    assert pending is not None
    assert pending.sequence == 2


async def test_item_of_a_resolved_or_missing_incident_is_dropped(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    resolved = await open_incident(redis, store, settings, clock, "inc-resolved")
    await open_incident(redis, store, settings, clock, "inc-gone")
    await open_incident(redis, store, settings, clock, "inc-open")
    await store_incident(redis, resolved.model_copy(update={"status": IncidentStatus.RESOLVED}))
    await redis.delete(incident_key("inc-gone"))

    clock.advance(CRITICAL)
    assert await ticker.run_once() == 1

    assert [u.incident_id for u in await updates_due(redis)] == ["inc-open"]
    assert await redis.hkeys(SCHEDULE_ITEMS) == [b"inc-open"]
    assert await redis.zrange(SCHEDULE_DUE, 0, -1) == [b"inc-open"]


async def test_event_handled_while_firing_keeps_the_sequence_moving(
    redis: Redis,
    broker: RedisBroker,
    store: ScheduleStore[ScheduleItem],
    settings: Settings,
    clock: ManualClock,
) -> None:
    incident = await open_incident(redis, store, settings, clock)

    class UpdateArrivesDuringPublish:
        """Publishes for real, with an incident update handled in the middle."""

        def __init__(self) -> None:
            self.real = BrokerUpdatePublisher(broker)

        async def publish(self, due: UpdateDue) -> None:
            clock.advance(timedelta(milliseconds=300))
            event: IncidentEvent = make_incident_updated(
                incident, event_id="e-upd", occurred_at=clock.now()
            )
            await schedule_incident_event(store, event, settings.update_interval)
            await self.real.publish(due)

    ticker = Ticker(store, UpdateArrivesDuringPublish(), redis, settings, clock)
    clock.advance(CRITICAL)
    assert await ticker.run_once() == 1
    updated_at = clock.now()

    pending = await store.get("inc-1")
    assert pending is not None
    assert pending.sequence == 2  # update #1 went out: the next one is #2, not #1 again
    assert pending.due_at == updated_at + CRITICAL  # the newer promise stands


async def test_tick_bumps_the_heartbeat(ticker: Ticker, redis: Redis, clock: ManualClock) -> None:
    await ticker.tick()
    clock.advance(timedelta(seconds=1))
    await ticker.tick()

    heartbeat = cast("dict[bytes, bytes]", await redis.hgetall(SCHEDULER_HEARTBEAT))
    assert heartbeat[b"ticks"] == b"2"
    assert heartbeat[b"at"].decode() == clock.now().isoformat()
