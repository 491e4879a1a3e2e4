"""The approval auto-publish timer against a real Valkey, driven by a ManualClock.

Held messages wait for a human, but never longer than the plan says: a request
arms one timer, a human's approval cancels it, and a timer that runs out
publishes ``ApprovalGranted(automatic=True)`` exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.scheduler.approval_timeout import (
    AUTO_PUBLISHER,
    ApprovalTimer,
    approval_firer,
    approval_schedule,
    follow_approval,
)
from services.scheduler.cadence import ceil_ms
from services.scheduler.schedule_store import ScheduleStore
from services.scheduler.service import run
from shared.clock import ManualClock
from shared.contracts import APPROVAL_EVENT, ApprovalEvent, ApprovalGranted, ApprovalRequested
from shared.settings import Settings
from shared.streams import APPROVAL_DUE, APPROVAL_ITEMS, APPROVALS
from tests.support.builders import T0
from tests.support.plans import make_plan
from tests.support.streams import stream_bodies, wait_for_entries

pytestmark = pytest.mark.integration

AUTO_PUBLISH_AFTER = timedelta(minutes=10)
LEASE = timedelta(seconds=30)
WAIT_SECONDS = 15.0


class Collected:
    """An ``ApprovalPublisher`` that keeps what it is given."""

    def __init__(self) -> None:
        self.published: list[ApprovalRequested | ApprovalGranted] = []

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        self.published.append(event)


def requested(
    event_id: str = "inc-1:2:incident.opened",
    at: datetime = T0,
    auto_publish_at: datetime | None = None,
) -> ApprovalRequested:
    return ApprovalRequested(
        event_id=event_id,
        incident_id="inc-1",
        requested_at=at,
        auto_publish_at=at + AUTO_PUBLISH_AFTER if auto_publish_at is None else auto_publish_at,
    )


def granted(
    event_id: str = "inc-1:2:incident.opened",
    at: datetime = T0,
    by: str = "alice",
    *,
    automatic: bool = False,
) -> ApprovalGranted:
    return ApprovalGranted(
        event_id=event_id, incident_id="inc-1", granted_at=at, by=by, automatic=automatic
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def store(redis: Redis) -> ScheduleStore[ApprovalTimer]:
    return approval_schedule(redis)


async def test_a_request_arms_one_timer_and_a_repeat_keeps_the_first_due_time(
    redis: Redis, store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    request = requested(at=clock.now())
    await follow_approval(store, request)
    clock.advance(timedelta(minutes=3))
    # The same event asks again (a redelivery, a dispatcher restart): a later time.
    await follow_approval(store, requested(at=clock.now()))

    timer = await store.get(request.event_id)
    assert timer == ApprovalTimer(
        incident_id="inc-1", event_id=request.event_id, due_at=T0 + AUTO_PUBLISH_AFTER
    )
    assert await store.due_score(request.event_id) == ceil_ms(T0 + AUTO_PUBLISH_AFTER)
    assert await redis.hlen(APPROVAL_ITEMS) == 1
    assert await redis.zcard(APPROVAL_DUE) == 1


async def test_each_held_event_gets_its_own_timer(
    store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    await follow_approval(store, requested("ev-a", at=clock.now()))
    clock.advance(timedelta(minutes=1))
    await follow_approval(store, requested("ev-b", at=clock.now()))

    a, b = await store.get("ev-a"), await store.get("ev-b")
    assert a is not None
    assert b is not None
    assert (a.due_at, b.due_at) == (T0 + AUTO_PUBLISH_AFTER, clock.now() + AUTO_PUBLISH_AFTER)


async def test_a_human_grant_cancels_the_timer(
    redis: Redis, store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    published = Collected()
    firer = approval_firer(store, published, clock, LEASE)
    await follow_approval(store, requested(at=clock.now()))
    clock.advance(timedelta(minutes=2))

    await follow_approval(store, granted(at=clock.now(), by="alice"))

    assert await store.get("inc-1:2:incident.opened") is None
    assert await redis.zcard(APPROVAL_DUE) == 0
    clock.advance(AUTO_PUBLISH_AFTER * 10)
    assert await firer.run_once() == 0
    assert published.published == []


async def test_an_automatic_grant_does_not_cancel_a_timer(
    store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    # The scheduler reads its own grants back from the stream: they cancel nothing.
    await follow_approval(store, requested(at=clock.now()))

    await follow_approval(store, granted(by=AUTO_PUBLISHER, automatic=True))

    assert await store.get("inc-1:2:incident.opened") is not None


async def test_a_grant_for_another_event_leaves_the_timer(
    store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    await follow_approval(store, requested("ev-a", at=clock.now()))

    await follow_approval(store, granted("ev-b", by="alice"))

    assert await store.get("ev-a") is not None


async def test_the_timer_fires_an_automatic_grant_once_at_its_due_time(
    store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    published = Collected()
    firer = approval_firer(store, published, clock, LEASE)
    await follow_approval(store, requested(at=clock.now()))

    clock.advance(AUTO_PUBLISH_AFTER - timedelta(milliseconds=1))
    assert await firer.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await firer.run_once() == 1
    clock.advance(LEASE * 2)
    assert await firer.run_once() == 0  # fired once, then gone

    assert published.published == [
        ApprovalGranted(
            event_id="inc-1:2:incident.opened",
            incident_id="inc-1",
            granted_at=T0 + AUTO_PUBLISH_AFTER,
            by=AUTO_PUBLISHER,
            automatic=True,
        )
    ]
    assert await store.get("inc-1:2:incident.opened") is None


async def test_two_firers_racing_publish_one_automatic_grant(
    redis: Redis, redis_url: str, clock: ManualClock
) -> None:
    ids = [f"ev-{n}" for n in range(150)]  # more than one claim batch
    published = Collected()
    other = Redis.from_url(redis_url)
    try:
        firers = [
            approval_firer(approval_schedule(client), published, clock, LEASE)
            for client in (redis, other)
        ]
        for event_id in ids:
            await follow_approval(approval_schedule(redis), requested(event_id, at=clock.now()))
        clock.advance(AUTO_PUBLISH_AFTER)

        counts = await asyncio.gather(*(f.run_once() for f in firers))
        clock.advance(LEASE * 2)
        again = await asyncio.gather(*(f.run_once() for f in firers))
    finally:
        await other.aclose()

    assert sum(counts) == len(ids)
    assert again == [0, 0]
    assert sorted(e.event_id for e in published.published) == sorted(ids)
    assert all(isinstance(e, ApprovalGranted) and e.automatic for e in published.published)


async def test_a_late_scheduler_still_fires(
    store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    published = Collected()
    firer = approval_firer(store, published, clock, LEASE)
    await follow_approval(store, requested(at=clock.now()))

    clock.advance(AUTO_PUBLISH_AFTER + timedelta(hours=3))  # the scheduler was down
    assert await firer.run_once() == 1

    [grant] = published.published
    assert isinstance(grant, ApprovalGranted)
    assert grant.automatic
    assert grant.granted_at == clock.now()


async def test_a_failed_publish_fires_again_after_the_lease(
    store: ScheduleStore[ApprovalTimer], clock: ManualClock
) -> None:
    class FailsOnce(Collected):
        def __init__(self) -> None:
            super().__init__()
            self.failures = 0

        async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
            if self.failures == 0:
                self.failures += 1
                raise ConnectionError("broker away")
            await super().publish_approval(event)

    published = FailsOnce()
    firer = approval_firer(store, published, clock, LEASE)
    await follow_approval(store, requested(at=clock.now()))

    clock.advance(AUTO_PUBLISH_AFTER)
    assert await firer.run_once() == 0
    assert published.failures == 1
    clock.advance(LEASE - timedelta(milliseconds=1))
    assert await firer.run_once() == 0
    clock.advance(timedelta(milliseconds=1))
    assert await firer.run_once() == 1
    assert [e.event_id for e in published.published] == ["inc-1:2:incident.opened"]


# Through the whole service


async def approval_events(redis: Redis) -> list[ApprovalEvent]:
    return [APPROVAL_EVENT.validate_json(b) for b in await stream_bodies(redis, APPROVALS)]


async def test_the_service_auto_publishes_what_nobody_approved(
    redis: Redis, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    now = datetime.now(UTC)
    # Two seconds for the consumer to handle all three, even on a loaded CI machine.
    cancelled = requested("ev-approved", at=now, auto_publish_at=now + timedelta(seconds=2))
    waiting = requested("ev-waiting", at=now, auto_publish_at=cancelled.auto_publish_at)
    stop = asyncio.Event()
    service = asyncio.create_task(run(make_settings(), stop, plan=make_plan()))
    try:
        async with RedisBroker(redis_url) as broker:
            # Handled in order: "ev-approved" is cancelled before "ev-waiting" is armed,
            # and both fall due at the same time, so a missed cancel fires with it.
            await broker.publish(cancelled, stream=APPROVALS)
            await broker.publish(granted("ev-approved", at=now, by="alice"), stream=APPROVALS)
            await broker.publish(waiting, stream=APPROVALS)
        await wait_for_entries(redis, APPROVALS, 4, within=WAIT_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=WAIT_SECONDS)  # the last tick completes

    automatic = [e for e in await approval_events(redis) if isinstance(e, ApprovalGranted)]
    automatic = [e for e in automatic if e.automatic]
    assert [(e.event_id, e.by) for e in automatic] == [("ev-waiting", AUTO_PUBLISHER)]
    assert automatic[0].granted_at >= waiting.auto_publish_at
