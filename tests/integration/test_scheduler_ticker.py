"""The scheduler's schedule and ticker against a real Valkey, driven by a ManualClock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
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
from shared.contracts import (
    Incident,
    IncidentEvent,
    IncidentPostmortemPublished,
    IncidentStatus,
    Severity,
    UpdateDue,
)
from shared.plan import Plan
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
from tests.support.plans import CADENCE, make_plan
from tests.support.streams import updates_due

pytestmark = pytest.mark.integration

PLAN = make_plan()  # SEV1 every 30 min, SEV2 1 h, SEV3 2 h, SEV4 4 h
NO_SEV3_UPDATES = make_plan(cadence={**CADENCE, Severity.WARNING: None})
CRITICAL = timedelta(minutes=30)


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
    return Ticker(store, BrokerUpdatePublisher(broker), redis, settings, clock, plan=PLAN)


def promise(severity: Severity, at: datetime, plan: Plan = PLAN) -> datetime | None:
    """The ``next_update_at`` ingest stamps on an event at ``at``."""
    return plan.next_update_at(severity, at)


async def open_incident(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    settings: Settings,
    clock: ManualClock,
    incident_id: str = "inc-1",
    severity: Severity = Severity.CRITICAL,
    plan: Plan = PLAN,
) -> Incident:
    incident = make_incident(id=incident_id, severity=severity)
    await store_incident(redis, incident)
    event = make_incident_opened(
        incident,
        event_id=f"{incident_id}:opened",
        occurred_at=clock.now(),
        next_update_at=promise(severity, clock.now(), plan),
    )
    await schedule_incident_event(store, event)
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
    await schedule_incident_event(store, event)

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
        critical,
        previous_severity=Severity.WARNING,
        event_id="e-sev",
        occurred_at=clock.now(),
        next_update_at=promise(Severity.CRITICAL, clock.now()),
    )
    await schedule_incident_event(store, changed)

    clock.advance(CRITICAL - timedelta(milliseconds=1))  # T0+30:00.999, before warning's 2 h
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
    fresh = make_incident_updated(
        incident,
        event_id="e-fresh",
        occurred_at=clock.now(),
        next_update_at=promise(Severity.CRITICAL, clock.now()),
    )
    await schedule_incident_event(store, fresh)
    stale = make_incident_updated(
        incident,
        event_id="e-stale",
        occurred_at=stale_at,
        next_update_at=promise(Severity.CRITICAL, stale_at),
    )
    await schedule_incident_event(store, stale)

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
                plan=PLAN,
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


async def test_an_unreadable_incident_fails_only_its_own_fire(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    await open_incident(redis, store, settings, clock, "inc-corrupt")
    await open_incident(redis, store, settings, clock, "inc-open")
    await redis.set(incident_key("inc-corrupt"), b"{not an incident")

    clock.advance(CRITICAL)
    assert await ticker.run_once() == 1

    assert [u.incident_id for u in await updates_due(redis)] == ["inc-open"]
    kept = await store.get("inc-corrupt")  # leased, not dropped: fired again once readable
    assert kept is not None
    assert kept.sequence == 1


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
                incident,
                event_id="e-upd",
                occurred_at=clock.now(),
                next_update_at=promise(Severity.CRITICAL, clock.now()),
            )
            await schedule_incident_event(store, event)
            await self.real.publish(due)

    ticker = Ticker(store, UpdateArrivesDuringPublish(), redis, settings, clock, plan=PLAN)
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


async def test_incident_of_a_severity_without_cadence_gets_no_updates(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    broker: RedisBroker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    ticker = Ticker(
        store, BrokerUpdatePublisher(broker), redis, settings, clock, plan=NO_SEV3_UPDATES
    )
    await open_incident(
        redis, store, settings, clock, severity=Severity.WARNING, plan=NO_SEV3_UPDATES
    )

    clock.advance(timedelta(days=1))
    assert await ticker.run_once() == 0

    assert await updates_due(redis) == []
    dormant = await store.get("inc-1")
    assert dormant is not None
    assert not dormant.promised


async def test_severity_change_to_no_cadence_cancels_and_back_to_sev1_rearms(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    broker: RedisBroker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    ticker = Ticker(
        store, BrokerUpdatePublisher(broker), redis, settings, clock, plan=NO_SEV3_UPDATES
    )
    incident = await open_incident(redis, store, settings, clock, plan=NO_SEV3_UPDATES)

    clock.advance(timedelta(minutes=10))
    sev3 = incident.model_copy(update={"severity": Severity.WARNING})
    await store_incident(redis, sev3)
    down = make_incident_severity_changed(
        sev3,
        previous_severity=Severity.CRITICAL,
        event_id="e-down",
        occurred_at=clock.now(),
        next_update_at=promise(Severity.WARNING, clock.now(), NO_SEV3_UPDATES),
    )
    assert down.next_update_at is None
    dormant = await schedule_incident_event(store, down)
    assert dormant is not None
    assert not dormant.promised

    clock.advance(CRITICAL)  # when SEV1's first update would have been due
    assert await ticker.run_once() == 0

    await store_incident(redis, incident)  # SEV1 again
    back_at = clock.now()
    back = make_incident_severity_changed(
        incident,
        previous_severity=Severity.WARNING,
        event_id="e-up",
        occurred_at=back_at,
        next_update_at=back_at + timedelta(minutes=5),  # whatever ingest promised
    )
    armed = await schedule_incident_event(store, back)
    assert armed is not None
    assert armed.due_at == back_at + timedelta(minutes=5)
    assert await store.due_score("inc-1") == ceil_ms(armed.due_at)

    clock.advance(timedelta(minutes=5) - timedelta(milliseconds=1))
    assert await ticker.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await ticker.run_once() == 1

    (update,) = await updates_due(redis)
    assert update.due_at == back_at + timedelta(minutes=5)
    assert update.next_update_at == clock.now() + CRITICAL


async def test_update_due_as_the_severity_lost_its_cadence_goes_out_once_then_no_more(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    broker: RedisBroker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    ticker = Ticker(
        store, BrokerUpdatePublisher(broker), redis, settings, clock, plan=NO_SEV3_UPDATES
    )
    incident = await open_incident(redis, store, settings, clock, plan=NO_SEV3_UPDATES)
    # The incident is SEV3 now; its event has not reached the scheduler yet.
    await store_incident(redis, incident.model_copy(update={"severity": Severity.WARNING}))

    clock.advance(CRITICAL)
    assert await ticker.run_once() == 1
    clock.advance(timedelta(days=1))
    assert await ticker.run_once() == 0

    (update,) = await updates_due(redis)
    assert (update.sequence, update.due_at) == (1, T0 + CRITICAL)
    assert update.next_update_at is None  # customers are not promised another
    dormant = await store.get("inc-1")
    assert dormant is not None
    assert (dormant.promised, dormant.sequence) == (False, 2)


async def test_postmortem_event_leaves_no_pending_update(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    ticker: Ticker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    incident = await open_incident(redis, store, settings, clock)
    clock.advance(timedelta(hours=2))
    published = incident.model_copy(
        update={
            "status": IncidentStatus.RESOLVED,
            "resolved_at": clock.now(),
            "postmortem_url": "https://example.com/postmortem",
        }
    )
    event = IncidentPostmortemPublished(
        event_id="e-pm", occurred_at=clock.now(), incident=published
    )

    assert await schedule_incident_event(store, event) is None
    assert await store.get("inc-1") is None
    assert await redis.zcard(SCHEDULE_DUE) == 0


async def test_tick_runs_the_other_firers_and_counts_what_they_fired(
    redis: Redis,
    store: ScheduleStore[ScheduleItem],
    broker: RedisBroker,
    settings: Settings,
    clock: ManualClock,
) -> None:
    class Fires:
        def __init__(self, count: int) -> None:
            self.count = count
            self.runs = 0

        async def run_once(self) -> int:
            self.runs += 1
            return self.count

    others = [Fires(2), Fires(3)]
    ticker = Ticker(
        store, BrokerUpdatePublisher(broker), redis, settings, clock, plan=PLAN, also=others
    )
    await open_incident(redis, store, settings, clock)
    clock.advance(CRITICAL)

    assert await ticker.tick() == 1 + 2 + 3
    assert [o.runs for o in others] == [1, 1]
