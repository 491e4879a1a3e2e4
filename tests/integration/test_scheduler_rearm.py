"""The update cadence re-arms on a change of severity and on every update that goes out,
a human's included, counting from that update (real Valkey, ManualClock).

Events are stamped the way ingest stamps them (``promised``: the plan's cadence
from the event's own time), handled by ``schedule_incident_event``, and fired by
the ``Ticker`` onto the real ``clarion:updates-due`` stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.ingest.incident_change import promised
from services.scheduler.cadence import ScheduleItem
from services.scheduler.schedule_store import ScheduleStore, update_schedule
from services.scheduler.scheduling import schedule_incident_event
from services.scheduler.service import BrokerUpdatePublisher
from services.scheduler.ticker import Ticker
from shared.clock import ManualClock
from shared.contracts import (
    Incident,
    IncidentChange,
    IncidentOpened,
    IncidentSeverityChanged,
    IncidentStatus,
    IncidentUpdated,
    Severity,
    UpdateAuthor,
    UpdateDue,
)
from shared.settings import Settings
from tests.support.builders import T0, make_incident, store_incident
from tests.support.plans import make_plan
from tests.support.streams import updates_due

pytestmark = pytest.mark.integration

PLAN = make_plan()  # SEV1 every 30 min, SEV2 1 h, SEV3 2 h, SEV4 4 h
MS = timedelta(milliseconds=1)
MINUTES = timedelta(minutes=1)


@pytest.fixture
async def broker(redis_url: str, redis: Redis) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


class Scenario:
    """One incident, its events as ingest publishes them, and the scheduler's ticks."""

    def __init__(self, redis: Redis, broker: RedisBroker, settings: Settings) -> None:
        self.redis = redis
        self.clock = ManualClock(T0)
        self.store: ScheduleStore[ScheduleItem] = update_schedule(redis)
        self.ticker = Ticker(
            self.store, BrokerUpdatePublisher(broker), redis, settings, self.clock, plan=PLAN
        )
        self.incident: Incident | None = None

    def at(self, offset: timedelta) -> None:
        """Move the clock to ``T0 + offset`` (never back)."""
        assert T0 + offset >= self.clock.now()
        self.clock.advance(T0 + offset - self.clock.now())

    async def publish(self, event: IncidentChange) -> datetime | None:
        """Store the incident, stamp the promise and schedule; returns the promised time."""
        stamped = promised(event, PLAN)
        await store_incident(self.redis, stamped.incident)
        await schedule_incident_event(self.store, stamped)
        self.incident = stamped.incident
        return stamped.next_update_at

    def _next(self, **changes: object) -> Incident:
        assert self.incident is not None
        return self.incident.model_copy(
            update={
                "revision": self.incident.revision + 1,
                "updated_at": self.clock.now(),
                **changes,
            }
        )

    async def open(self, severity: Severity) -> datetime | None:
        incident = make_incident(severity=severity, opened_at=self.clock.now())
        return await self.publish(
            IncidentOpened(
                event_id="inc-1:1:opened", occurred_at=self.clock.now(), incident=incident
            )
        )

    async def change_severity(self, severity: Severity) -> datetime | None:
        assert self.incident is not None
        incident = self._next(severity=severity)
        return await self.publish(
            IncidentSeverityChanged(
                event_id=f"inc-1:{incident.revision}:severity_changed",
                occurred_at=self.clock.now(),
                incident=incident,
                previous_severity=self.incident.severity,
            )
        )

    async def update(self, author: UpdateAuthor, message: str | None = None) -> datetime | None:
        incident = self._next(status=IncidentStatus.IDENTIFIED)
        return await self.publish(
            IncidentUpdated(
                event_id=f"inc-1:{incident.revision}:updated",
                occurred_at=self.clock.now(),
                incident=incident,
                author=author,
                message=message,
            )
        )

    async def fires_at(self, offset: timedelta) -> UpdateDue:
        """Nothing fires a millisecond before ``T0 + offset``; exactly one update fires at it."""
        seen = len(await updates_due(self.redis))
        self.at(offset - MS)
        assert await self.ticker.run_once() == 0, f"fired before T0+{offset - MS}"
        self.at(offset)
        assert await self.ticker.run_once() == 1, f"nothing fired at T0+{offset}"
        published = await updates_due(self.redis)
        assert len(published) == seen + 1
        return published[-1]

    async def nothing_fires_through(self, offset: timedelta) -> None:
        """No update fires at any tick up to ``T0 + offset`` (ticks each minute, and at it)."""
        seen = len(await updates_due(self.redis))
        while self.clock.now() + MINUTES < T0 + offset:
            self.clock.advance(MINUTES)
            assert await self.ticker.run_once() == 0, f"an update fired at {self.clock.now()}"
        self.at(offset)
        assert await self.ticker.run_once() == 0, f"an update fired at {self.clock.now()}"
        assert len(await updates_due(self.redis)) == seen


@pytest.fixture
def scenario(redis: Redis, broker: RedisBroker, make_settings: Callable[..., Settings]) -> Scenario:
    return Scenario(redis, broker, make_settings())


async def test_scheduler_severity_raised_fires_at_the_sooner_cadence_not_the_old_promise(
    scenario: Scenario,
) -> None:
    assert await scenario.open(Severity.ERROR) == T0 + timedelta(hours=1)  # SEV2: hourly
    scenario.at(10 * MINUTES)
    assert await scenario.change_severity(Severity.CRITICAL) == T0 + 40 * MINUTES

    first = await scenario.fires_at(40 * MINUTES)
    assert (first.sequence, first.due_at) == (1, T0 + 40 * MINUTES)
    assert first.next_update_at == T0 + 70 * MINUTES  # SEV1's 30 min, from the fire
    await scenario.nothing_fires_through(timedelta(hours=1))  # the old SEV2 promise is gone
    second = await scenario.fires_at(70 * MINUTES)
    assert (second.sequence, second.due_at) == (2, first.next_update_at)


async def test_scheduler_sev2_then_sev1_fires_at_t_plus_30m_not_t_plus_1h(
    scenario: Scenario,
) -> None:
    """Opened at SEV2 (next update T+1h), raised to SEV1 at once (next update T+30m)."""
    assert await scenario.open(Severity.ERROR) == T0 + 60 * MINUTES
    assert await scenario.change_severity(Severity.CRITICAL) == T0 + 30 * MINUTES

    update = await scenario.fires_at(30 * MINUTES)
    assert (update.sequence, update.due_at, update.emitted_at) == (
        1,
        T0 + 30 * MINUTES,
        T0 + 30 * MINUTES,
    )


async def test_scheduler_severity_lowered_waits_for_the_longer_cadence(
    scenario: Scenario,
) -> None:
    await scenario.open(Severity.CRITICAL)  # due T0+30m
    scenario.at(10 * MINUTES)
    assert await scenario.change_severity(Severity.WARNING) == T0 + 130 * MINUTES  # SEV3: 2 h

    await scenario.nothing_fires_through(130 * MINUTES - MS)  # not at T0+30m
    update = await scenario.fires_at(130 * MINUTES)
    assert (update.sequence, update.due_at) == (1, T0 + 130 * MINUTES)
    assert update.next_update_at == T0 + 250 * MINUTES


async def test_scheduler_severity_change_after_a_fire_moves_the_next_update(
    scenario: Scenario,
) -> None:
    await scenario.open(Severity.CRITICAL)
    first = await scenario.fires_at(30 * MINUTES)
    assert first.next_update_at == T0 + 60 * MINUTES
    scenario.at(45 * MINUTES)
    assert await scenario.change_severity(Severity.ERROR) == T0 + 105 * MINUTES

    await scenario.nothing_fires_through(105 * MINUTES - MS)
    second = await scenario.fires_at(105 * MINUTES)
    assert (second.sequence, second.event_id) == (2, "inc-1:update:2")
    assert second.next_update_at == T0 + 165 * MINUTES  # SEV2's hour from the fire


@pytest.mark.parametrize("author", list(UpdateAuthor))
async def test_scheduler_update_rearms_the_cadence_from_its_own_time(
    scenario: Scenario, author: UpdateAuthor
) -> None:
    message = "We rolled back the deploy." if author is UpdateAuthor.OPERATOR else None
    await scenario.open(Severity.CRITICAL)  # due T0+30m
    scenario.at(20 * MINUTES)
    assert await scenario.update(author, message) == T0 + 50 * MINUTES

    await scenario.nothing_fires_through(50 * MINUTES - MS)  # not at T0+30m
    first = await scenario.fires_at(50 * MINUTES)
    assert (first.sequence, first.due_at) == (1, T0 + 50 * MINUTES)
    assert first.next_update_at == T0 + 80 * MINUTES

    scenario.at(70 * MINUTES)  # between two scheduled updates
    assert await scenario.update(author, message) == T0 + 100 * MINUTES
    await scenario.nothing_fires_through(100 * MINUTES - MS)  # not at T0+80m, as promised
    second = await scenario.fires_at(100 * MINUTES)
    assert (second.sequence, second.due_at) == (2, T0 + 100 * MINUTES)

    pending = await scenario.store.get("inc-1")
    assert pending is not None
    assert (pending.sequence, pending.due_at) == (3, T0 + 130 * MINUTES)


async def test_scheduler_human_update_just_before_the_due_time_pushes_it_back(
    scenario: Scenario,
) -> None:
    """An operator speaks a millisecond before the scheduled update: that was the update."""
    await scenario.open(Severity.CRITICAL)
    scenario.at(30 * MINUTES - MS)
    assert await scenario.update(UpdateAuthor.OPERATOR, "Still on it.") == (T0 + 60 * MINUTES - MS)

    await scenario.nothing_fires_through(60 * MINUTES - 2 * MS)
    update = await scenario.fires_at(60 * MINUTES - MS)
    assert update.sequence == 1
