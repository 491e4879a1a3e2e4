"""The scheduler's composition root: Redis, broker, consumer and ticker, wired once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from faststream.redis import RedisBroker

from services.scheduler.approval_timeout import approval_firer, approval_schedule
from services.scheduler.handlers import approval_consumer, incident_event_consumer
from services.scheduler.resolution_hold import resolution_firer, resolution_schedule
from services.scheduler.retry_due import retry_firer, retry_schedule
from services.scheduler.schedule_store import update_schedule
from services.scheduler.ticker import Firer, Ticker
from shared.clock import Clock, SystemClock
from shared.contracts import ApprovalGranted, ApprovalRequested, ResolutionDue, UpdateDue
from shared.errors import ClarionError
from shared.logs import get_logger
from shared.plan import Plan, load_plan
from shared.redis_client import RETRY_ON, broker_retry, connect, ensure_consumer_groups
from shared.settings import Settings
from shared.streams import APPROVALS, RESOLUTIONS_DUE, UPDATES_DUE
from shared.watchdog import watch_subscribers

log = get_logger("clarion.scheduler")


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
        retry=broker_retry(),
        retry_on_error=RETRY_ON,
        logger=get_logger("clarion.scheduler.broker"),
    )


async def run(
    settings: Settings, stop: asyncio.Event, clock: Clock | None = None, plan: Plan | None = None
) -> None:
    """Run the scheduler until ``stop`` is set.

    Raises :class:`SubscriberStopped` when a subscriber dies on its own, so the
    process exits non-zero and its supervisor restarts it.
    """
    the_plan = plan or load_plan(settings.plan)
    redis = connect(settings.require_redis_url())
    try:
        await ensure_consumer_groups(redis)
        the_clock = clock or SystemClock()
        updates, resolutions = update_schedule(redis), resolution_schedule(redis)
        broker = build_broker(settings)
        approvals = approval_schedule(redis)
        incident_event_consumer(redis, updates, resolutions, settings).subscribe(broker, settings)
        approval_consumer(redis, approvals, settings).subscribe(broker, settings)
        publisher = BrokerUpdatePublisher(broker)
        lease = timedelta(milliseconds=settings.scheduler_lease_ms)
        firers: list[Firer] = [
            resolution_firer(resolutions, publisher, the_clock, lease),
            approval_firer(approvals, publisher, the_clock, lease),
            retry_firer(retry_schedule(redis), redis, the_clock, lease),
        ]
        ticker = Ticker(updates, publisher, redis, settings, the_clock, plan=the_plan, also=firers)
        await broker.start()
        log.info("scheduler.started", consumer=settings.consumer_name)
        try:
            await _run_until_stopped(ticker, broker, stop)
        finally:
            await broker.stop()
            log.info("scheduler.stopped")
    finally:
        await redis.aclose()


async def _run_until_stopped(ticker: Ticker, broker: RedisBroker, stop: asyncio.Event) -> None:
    ticker_stop = asyncio.Event()
    ticking = asyncio.create_task(ticker.run_forever(ticker_stop))
    try:
        stopped = await watch_subscribers(broker, stop)
        if stopped:
            raise SubscriberStopped(f"subscribers stopped ({', '.join(stopped)}); restart")
    finally:
        ticker_stop.set()
        await ticking
