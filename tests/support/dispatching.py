"""The dispatcher's stages wired as in production, driven step by step by a test.

``handle`` fans an event out (jobs on the channel streams) and ``drain`` runs the
channel worker over every job queued so far, oldest first, until none is left;
``fire_retries`` moves the manual clock and lets the scheduler's retry timer put
due jobs back, as a running scheduler would. No broker, no threads: each step is
awaited, so a test asserts between steps without waiting on anything.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.registry import default_channels
from services.dispatcher.dead_letters import Replayer
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_state import DeliveryStates
from services.dispatcher.delivery_worker import DeliveryWorker
from services.dispatcher.dispatch_record import DispatchRecords
from services.dispatcher.pipeline import Dispatcher
from services.dispatcher.rate_limits import RateLimits, parse_rate_limits
from services.dispatcher.rendering.values import DispatchEvent
from services.dispatcher.retry_policy import RetryPolicy
from services.scheduler.retry_due import retry_firer, retry_schedule
from shared.clock import ManualClock
from shared.contracts import (
    ApprovalGranted,
    ApprovalRequested,
    DeliveryJob,
    DeliveryRecorded,
    UpdateDue,
)
from shared.plan import Plan
from shared.redis_values import data_entries
from shared.settings import Settings
from shared.streams import DELIVERY_CHANNELS, delivery_stream


class RecordedApprovals:
    """The approvals publisher, recording what the dispatcher publishes."""

    def __init__(self) -> None:
        self.published: list[ApprovalRequested | ApprovalGranted] = []

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        self.published.append(event)


@dataclass
class Pipeline:
    redis: Redis
    settings: Settings
    clock: ManualClock
    dispatcher: Dispatcher
    worker: DeliveryWorker
    replayer: Replayer
    approvals: RecordedApprovals
    delivered: list[DeliveryJob] = field(default_factory=list)
    _cursors: dict[str, str] = field(default_factory=dict)

    async def handle(self, event: DispatchEvent, attempt: int = 1, *, drain: bool = True) -> int:
        """Fan ``event`` out; then (by default) send everything queued. Returns jobs run."""
        if isinstance(event, UpdateDue):
            await self.dispatcher.handle_update_due(event, attempt)
        else:
            await self.dispatcher.handle_incident_event(event, attempt)
        return await self.drain() if drain else 0

    async def queued(self) -> list[DeliveryJob]:
        """Jobs on the channel streams not run yet, oldest first per channel."""
        jobs: list[DeliveryJob] = []
        for channel in DELIVERY_CHANNELS:
            stream = delivery_stream(channel)
            start = self._cursors.get(stream, "-")
            for _, payload in data_entries(await self.redis.xrange(stream, min=start)):
                jobs.append(DeliveryJob.model_validate_json(payload))
        return jobs

    async def drain(self, channels: tuple[str, ...] = DELIVERY_CHANNELS) -> int:
        """Run every queued job of ``channels`` (and any they queue) once; returns how many."""
        ran = 0
        while True:
            batch = 0
            for channel in channels:
                stream = delivery_stream(channel)
                start = self._cursors.get(stream, "-")
                for entry_id, payload in data_entries(await self.redis.xrange(stream, min=start)):
                    self._cursors[stream] = f"({entry_id}"
                    job = DeliveryJob.model_validate_json(payload)
                    await self.worker.deliver(job)
                    self.delivered.append(job)
                    batch += 1
            ran += batch
            if batch == 0:
                return ran

    async def fire_retries(self, after: timedelta) -> int:
        """Move the clock by ``after``, let the scheduler re-queue what is due, and drain."""
        self.clock.advance(after)
        firer = retry_firer(retry_schedule(self.redis), self.redis, self.clock, timedelta(seconds=30))
        await firer.run_once()
        return await self.drain()

    async def log(self) -> list[DeliveryRecorded]:
        """Every delivery record, oldest first."""
        return list(reversed(await DeliveryLog(self.redis).recent(limit=1000)))


def build_pipeline(
    redis: Redis,
    settings: Settings,
    plan: Plan,
    clock: ManualClock,
    *,
    channels: Mapping[str, Channel] | None = None,
    environ: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Pipeline:
    """Every stage, on ``redis``; drivers from the registry unless ``channels`` names some
    (those replace the registry's for their channel)."""
    retention = int(settings.idempotency_retention.total_seconds())
    states = DeliveryStates(redis, settings.idempotency_lease_ms, retention)
    delivery_log = DeliveryLog(redis)
    context = DriverContext(
        settings=settings,
        plan=plan,
        http=http or httpx.AsyncClient(timeout=5.0),
        redis=redis,
        clock=clock,
        environ=environ or {},
    )
    drivers: dict[str, Any] = dict(default_channels(context))
    drivers.update(channels or {})
    approvals = RecordedApprovals()
    worker = DeliveryWorker(
        redis,
        clock,
        drivers,
        owner=settings.consumer_name,
        states=states,
        records=DispatchRecords(redis, retention),
        limits=RateLimits(redis, parse_rate_limits(settings.rate_limits)),
        policy=RetryPolicy.of(settings),
        delivery_log=delivery_log,
        uniform=uniform,
    )
    dispatcher = Dispatcher(
        redis, settings, clock, plan=plan, approvals=approvals, delivery_log=delivery_log
    )
    replayer = Replayer(redis, clock, states, delivery_log, settings.delivery_max_attempts)
    return Pipeline(redis, settings, clock, dispatcher, worker, replayer, approvals)
