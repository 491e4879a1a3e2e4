"""The dispatcher's stages wired as in production, driven step by step by a test.

``handle`` fans an event out (jobs on the channel streams) and ``drain`` runs the
channel worker over every job queued so far, oldest first, until none is left;
``fire_retries`` moves the manual clock and lets the scheduler's retry timer put
due jobs back, as a running scheduler would. No broker, no threads: each step is
awaited, so a test asserts between steps without waiting on anything.

A job whose delivery another worker holds (the worker raises
:class:`RetryableFailure`) stays pending, as its stream entry would: ``pending``
lists them and ``reclaim`` runs them again, as the consumer's reclaimer would.

Delivery leases and rate limits count on Redis ``TIME``, not on the manual clock:
moving the clock neither expires a lease nor refills a rate limit (``lease_ms=0``
makes every lease run out at once; deleting ``clarion:rate:*`` refills the limits).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.outcome import Outcome, Sent
from services.dispatcher.channels.registry import default_channels
from services.dispatcher.dead_letters import Replayer
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_state import DeliveryStates
from services.dispatcher.delivery_worker import DeliveryWorker
from services.dispatcher.dispatch_record import DispatchRecords
from services.dispatcher.fanout import Delivery
from services.dispatcher.pipeline import Dispatcher
from services.dispatcher.rate_limits import RateLimits, parse_rate_limits
from services.dispatcher.rendering.messages import RenderedMessage
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
from shared.errors import RetryableFailure
from shared.plan import Plan
from shared.redis_values import data_entries
from shared.settings import Settings
from shared.streams import DELIVERY_CHANNELS, delivery_stream

RETRY_LEASE = timedelta(seconds=30)
"""The scheduler's lease on a retry it is firing (as ``CLARION_SCHEDULER_LEASE_MS``)."""


class RecordedApprovals:
    """The approvals publisher, recording what the dispatcher publishes.

    ``fail_next`` makes the next ``fail_next`` publishes raise (a broker outage)."""

    def __init__(self) -> None:
        self.published: list[ApprovalRequested | ApprovalGranted] = []
        self.fail_next = 0

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("the approvals stream is unreachable (scripted by the test)")
        self.published.append(event)


class ScriptedChannel:
    """A driver that answers from a script (then ``Sent``) and remembers every send.

    ``hold(n)`` parks send number ``n`` (from 0) until ``release[n]`` is set;
    ``started[n]`` is set when send ``n`` begins. Nothing here sleeps: a test awaits
    ``started[n]`` (with a timeout) and sets ``release[n]`` when it wants the answer."""

    def __init__(self, *outcomes: Outcome, idempotent: bool = False) -> None:
        self.outcomes = list(outcomes)
        self.idempotent = idempotent
        self.sends: list[tuple[str, RenderedMessage, Delivery]] = []
        self.started: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.release: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self._held: set[int] = set()

    def hold(self, *numbers: int) -> None:
        self._held.update(numbers)

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        number = len(self.sends)
        self.sends.append((recipient, message, delivery))
        self.started[number].set()
        if number in self._held:
            await self.release[number].wait()
        if number < len(self.outcomes):
            return self.outcomes[number]
        return Sent(f"provider-{number + 1}")


@dataclass
class Pipeline:
    redis: Redis
    settings: Settings
    clock: ManualClock
    dispatcher: Dispatcher
    worker: DeliveryWorker
    replayer: Replayer
    approvals: RecordedApprovals
    states: DeliveryStates
    http: httpx.AsyncClient
    drivers: Mapping[str, Channel] = field(default_factory=dict)
    delivered: list[DeliveryJob] = field(default_factory=list)
    pending: list[DeliveryJob] = field(default_factory=list)
    """Jobs the worker refused for now (their delivery is held elsewhere): still pending."""
    _cursors: dict[str, str] = field(default_factory=dict)

    async def handle(self, event: DispatchEvent, attempt: int = 1, *, drain: bool = True) -> int:
        """Fan ``event`` out; then (by default) send everything queued. Returns jobs run."""
        if isinstance(event, UpdateDue):
            await self.dispatcher.handle_update_due(event, attempt)
        else:
            await self.dispatcher.handle_incident_event(event, attempt)
        return await self.drain() if drain else 0

    async def approve(self, grant: ApprovalGranted, attempt: int = 1) -> int:
        """Hand ``grant`` to the dispatcher and send what it releases; returns jobs run."""
        await self.dispatcher.handle_approval(grant, attempt)
        return await self.drain()

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
                    await self._run(DeliveryJob.model_validate_json(payload))
                    batch += 1
            ran += batch
            if batch == 0:
                return ran

    async def reclaim(self) -> int:
        """Run the pending jobs again (the reclaimer's turn), then drain; returns jobs run."""
        again, self.pending = self.pending, []
        for job in again:
            await self._run(job)
        return len(again) + await self.drain()

    async def fire_retries(self, after: timedelta) -> int:
        """Move the clock by ``after``, let the scheduler re-queue what is due, and drain."""
        self.clock.advance(after)
        firer = retry_firer(retry_schedule(self.redis), self.redis, self.clock, RETRY_LEASE)
        await firer.run_once()
        return await self.drain()

    async def log(self) -> list[DeliveryRecorded]:
        """Every delivery record, oldest first."""
        return list(reversed(await DeliveryLog(self.redis).recent(limit=1000)))

    async def aclose(self) -> None:
        await self.worker.aclose()
        for driver in self.drivers.values():  # kept sessions (SMTP) close
            closing = getattr(driver, "aclose", None)
            if closing is not None:
                await closing()
        await self.http.aclose()

    async def _run(self, job: DeliveryJob) -> None:
        try:
            await self.worker.deliver(job)
        except RetryableFailure:
            self.pending.append(job)
        else:
            self.delivered.append(job)


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
    lease_ms: int | None = None,
) -> Pipeline:
    """Every stage, on ``redis``; drivers from the registry unless ``channels`` names some
    (those replace the registry's for their channel). ``lease_ms`` overrides the delivery
    lease (0: every claim has run out at once, as if its worker died long ago)."""
    retention = int(settings.idempotency_retention.total_seconds())
    lease = settings.idempotency_lease_ms if lease_ms is None else lease_ms
    states = DeliveryStates(redis, lease, retention)
    delivery_log = DeliveryLog(redis)
    client = http or httpx.AsyncClient(timeout=5.0)
    context = DriverContext(
        settings=settings,
        plan=plan,
        http=client,
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
        limits=RateLimits(redis, parse_rate_limits(settings.rate_limits), states.calls),
        policy=RetryPolicy.of(settings),
        delivery_log=delivery_log,
        sends_per_channel=settings.channel_concurrency,
        uniform=uniform,
    )
    dispatcher = Dispatcher(
        redis, settings, clock, plan=plan, approvals=approvals, delivery_log=delivery_log
    )
    replayer = Replayer(redis, clock, states, delivery_log, settings.delivery_max_attempts)
    return Pipeline(
        redis, settings, clock, dispatcher, worker, replayer, approvals, states, client, drivers
    )
