"""The scheduler's composition root: Redis, broker, consumer and ticker, wired once.

:func:`started` builds and starts everything and yields a :class:`Scheduler`;
:func:`run` runs it until a stop event (tests, and the HTTP app's lifespan in
:mod:`services.scheduler.health`, which ``python -m services.scheduler`` serves).
Without an injected clock the scheduler runs on Redis' clock
(:class:`~shared.clock.RedisTimeClock`), synced before the first tick and on each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.scheduler.ack_overdue import ack_overdue_firer, ack_overdue_schedule
from services.scheduler.approval_timeout import approval_firer, approval_schedule
from services.scheduler.handlers import approval_consumer, incident_event_consumer
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.postmortem_reminder import (
    postmortem_reminder_firer,
    postmortem_reminder_schedule,
)
from services.scheduler.resolution_hold import resolution_firer, resolution_schedule
from services.scheduler.retry_due import retry_firer, retry_schedule
from services.scheduler.schedule_store import update_schedule
from services.scheduler.ticker import UPDATE_KIND, Ticker
from services.scheduler.timers import TimerFirer
from shared.clock import Clock, RedisTimeClock, SyncedClock
from shared.contracts import ApprovalGranted, ApprovalRequested, ResolutionDue, UpdateDue
from shared.errors import ClarionError
from shared.logs import get_logger
from shared.plan import Plan, load_plan
from shared.redis_client import broker_connection, connect, ensure_consumer_groups, stop_broker
from shared.settings import Settings
from shared.streams import (
    ACK_OVERDUE_DUE,
    APPROVAL_DUE,
    APPROVALS,
    POSTMORTEM_REMINDER_DUE,
    RESOLUTION_DUE,
    RESOLUTIONS_DUE,
    RETRY_DUE,
    SCHEDULE_DUE,
    UPDATES_DUE,
)
from shared.watchdog import watch_subscribers

log = get_logger("clarion.scheduler")

SCHEDULED: Final[dict[str, str]] = {
    UPDATE_KIND: SCHEDULE_DUE,
    "resolution": RESOLUTION_DUE,
    "approval": APPROVAL_DUE,
    "retry": RETRY_DUE,
    "ack_overdue": ACK_OVERDUE_DUE,
    "postmortem_reminder": POSTMORTEM_REMINDER_DUE,
}
"""Each kind of due item (a firer's ``kind``) and its due sorted set, for the
``clarion_scheduler_scheduled_items`` gauge. A new kind of timer adds a line."""


class SubscriberStopped(ClarionError):
    """A broker subscriber stopped on its own (NOGROUP after a Redis flush): restart."""


class BrokerUpdatePublisher:
    """Publishes due events on their streams through FastStream."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def publish(self, due: UpdateDue) -> None:
        await self._broker.publish(due, stream=UPDATES_DUE)

    async def publish_resolution(self, due: ResolutionDue) -> None:
        await self._broker.publish(due, stream=RESOLUTIONS_DUE)

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        await self._broker.publish(event, stream=APPROVALS)


def build_broker(settings: Settings) -> RedisBroker:
    return RedisBroker(
        settings.require_redis_url(),
        **broker_connection(),
        logger=get_logger("clarion.scheduler.broker"),
    )


@dataclass(frozen=True)
class Scheduler:
    """A started scheduler: what its health endpoints look at, and its tick loop."""

    settings: Settings
    redis: Redis
    broker: RedisBroker
    ticker: Ticker
    metrics: SchedulerMetrics

    async def run_until(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set.

        Raises :class:`SubscriberStopped` when a subscriber dies on its own, so the
        process exits non-zero and its supervisor restarts it.
        """
        ticker_stop = asyncio.Event()
        ticking = asyncio.create_task(self.ticker.run_forever(ticker_stop))
        try:
            stopped = await watch_subscribers(self.broker, stop)
            if stopped:
                raise SubscriberStopped(f"subscribers stopped ({', '.join(stopped)}); restart")
        finally:
            ticker_stop.set()
            await ticking


@asynccontextmanager
async def started(
    settings: Settings,
    clock: Clock | None = None,
    plan: Plan | None = None,
    *,
    metrics: SchedulerMetrics | None = None,
) -> AsyncIterator[Scheduler]:
    """Connect, subscribe and start the broker; yields the scheduler, stops it on exit.

    Without ``clock`` the scheduler runs on Redis' clock. Nothing ticks until
    :meth:`Scheduler.run_until`.
    """
    the_plan = plan or load_plan(settings.plan)
    the_metrics = metrics if metrics is not None else SchedulerMetrics()
    redis = connect(settings.require_redis_url())
    try:
        await ensure_consumer_groups(redis)
        the_clock = clock if clock is not None else RedisTimeClock(redis)
        if isinstance(the_clock, SyncedClock):
            await the_clock.sync()
        updates, resolutions = update_schedule(redis), resolution_schedule(redis)
        broker = build_broker(settings)
        approvals = approval_schedule(redis)
        acks, reminders = ack_overdue_schedule(redis), postmortem_reminder_schedule(redis)
        incident_event_consumer(
            redis, updates, resolutions, settings, plan=the_plan, acks=acks, reminders=reminders
        ).subscribe(broker, settings)
        approval_consumer(redis, approvals, settings).subscribe(broker, settings)
        publisher = BrokerUpdatePublisher(broker)
        lease = timedelta(milliseconds=settings.scheduler_lease_ms)
        firers: list[TimerFirer[Any]] = [
            resolution_firer(resolutions, publisher, the_clock, lease),
            approval_firer(approvals, publisher, the_clock, lease),
            retry_firer(retry_schedule(redis), redis, the_clock, lease),
            ack_overdue_firer(acks, redis, the_clock, lease, the_plan),
            postmortem_reminder_firer(reminders, redis, the_clock, lease, the_plan),
        ]
        ticker = Ticker(
            updates,
            publisher,
            redis,
            settings,
            the_clock,
            plan=the_plan,
            also=[firer.observed_by(the_metrics) for firer in firers],
            metrics=the_metrics,
            scheduled=SCHEDULED,
        )
        await broker.start()
        log.info(
            "scheduler.started",
            consumer=settings.consumer_name,
            # How far this host's clock is from Redis' (what the scheduler runs on).
            clock_offset_ms=_offset_ms(the_clock),
        )
        try:
            yield Scheduler(settings, redis, broker, ticker, the_metrics)
        finally:
            await stop_broker(broker)
            log.info("scheduler.stopped")
    finally:
        await redis.aclose()


async def run(
    settings: Settings,
    stop: asyncio.Event,
    clock: Clock | None = None,
    plan: Plan | None = None,
    *,
    metrics: SchedulerMetrics | None = None,
) -> None:
    """Run the scheduler until ``stop`` is set.

    Raises :class:`SubscriberStopped` when a subscriber dies on its own, so the
    process exits non-zero and its supervisor restarts it.
    """
    async with started(settings, clock, plan, metrics=metrics) as scheduler:
        await scheduler.run_until(stop)


def _offset_ms(clock: Clock) -> int | None:
    if isinstance(clock, RedisTimeClock) and clock.offset is not None:
        return clock.offset // timedelta(milliseconds=1)
    return None
