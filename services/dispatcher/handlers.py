"""FastStream wiring: thin handlers that hand decoded messages to the Dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.delivery_worker import DeliveryWorker
from services.dispatcher.pipeline import Dispatcher
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import (
    APPROVAL_EVENT,
    INCIDENT_EVENT,
    ApprovalEvent,
    ApprovalGranted,
    DeliveryJob,
    IncidentEvent,
    UpdateDue,
)
from shared.keyed_locks import KeyedLocks
from shared.settings import Settings
from shared.streams import (
    APPROVALS,
    DELIVERY_CHANNELS,
    DISPATCHER_GROUP,
    INCIDENT_EVENTS,
    UPDATES_DUE,
    delivery_stream,
)

INCIDENTS_AT_ONCE: Final = 16
"""Incident events a worker fans out at once: one incident's events one after another,
in the order read, different incidents side by side (a long fan-out to thousands of
recipients holds up no other incident's first message)."""


def build_consumers(
    redis: Redis, settings: Settings, dispatcher: Dispatcher
) -> tuple[
    GuardedConsumer[IncidentEvent], GuardedConsumer[UpdateDue], GuardedConsumer[ApprovalEvent]
]:
    incidents = KeyedLocks()

    async def on_event(event: IncidentEvent, entry: StreamEntry) -> None:
        # Entries start in the order read and reach this lock before their first await,
        # so an incident's events take it in that order.
        async with incidents.hold(event.incident_id):
            await dispatcher.handle_incident_event(event, entry.delivery_count)

    async def on_event_dead(event: IncidentEvent, entry: StreamEntry, error: str) -> None:
        await dispatcher.record_dead(event, entry.delivery_count, error)

    async def on_due(due: UpdateDue, entry: StreamEntry) -> None:
        await dispatcher.handle_update_due(due, entry.delivery_count)

    async def on_due_dead(due: UpdateDue, entry: StreamEntry, error: str) -> None:
        await dispatcher.record_dead(due, entry.delivery_count, error)

    events = GuardedConsumer[IncidentEvent](
        redis=redis,
        stream=INCIDENT_EVENTS,
        group=DISPATCHER_GROUP,
        decode=INCIDENT_EVENT.validate_json,
        handle=on_event,
        max_deliveries=settings.max_deliveries,
        on_dead=on_event_dead,
        max_workers=INCIDENTS_AT_ONCE,
        batch=max(settings.max_records, INCIDENTS_AT_ONCE),
    )
    dues = GuardedConsumer[UpdateDue](
        redis=redis,
        stream=UPDATES_DUE,
        group=DISPATCHER_GROUP,
        decode=UpdateDue.model_validate_json,
        handle=on_due,
        max_deliveries=settings.max_deliveries,
        on_dead=on_due_dead,
    )

    async def on_approval(event: ApprovalEvent, entry: StreamEntry) -> None:
        if isinstance(event, ApprovalGranted):  # requests are for the scheduler
            await dispatcher.handle_approval(event, entry.delivery_count)

    approvals = GuardedConsumer[ApprovalEvent](
        redis=redis,
        stream=APPROVALS,
        group=DISPATCHER_GROUP,
        decode=APPROVAL_EVENT.validate_json,
        handle=on_approval,
        max_deliveries=settings.max_deliveries,
    )
    return events, dues, approvals


def jobs_in_flight(settings: Settings) -> int:
    """Jobs taken on per channel: never fewer than the sends that may be in flight."""
    return max(settings.channel_jobs_in_flight, settings.channel_concurrency)


def delivery_consumers(
    redis: Redis, settings: Settings, worker: DeliveryWorker
) -> list[GuardedConsumer[DeliveryJob]]:
    """One consumer per channel's job stream, each with its own concurrency, reading
    jobs in batches (one handler call per job would cost more than most sends)."""

    async def on_job(job: DeliveryJob, entry: StreamEntry) -> None:
        await worker.deliver(job)

    async def on_job_dead(job: DeliveryJob, entry: StreamEntry, error: str) -> None:
        await worker.give_up(job, error)

    def acknowledge(stream: str) -> Callable[[Sequence[str]], Awaitable[object]]:
        async def ack(entry_ids: Sequence[str]) -> object:  # with the claims and finishes
            return await worker.calls.command("XACK", stream, DISPATCHER_GROUP, *entry_ids)

        return ack

    return [
        GuardedConsumer[DeliveryJob](
            redis=redis,
            stream=delivery_stream(channel),
            group=DISPATCHER_GROUP,
            decode=DeliveryJob.model_validate_json,
            handle=on_job,
            max_deliveries=settings.max_deliveries,
            on_dead=on_job_dead,
            max_workers=jobs_in_flight(settings),
            batch=max(settings.max_records, jobs_in_flight(settings)),
            acknowledge=acknowledge(delivery_stream(channel)),
        )
        for channel in DELIVERY_CHANNELS
    ]


def subscribe(
    broker: RedisBroker,
    redis: Redis,
    settings: Settings,
    dispatcher: Dispatcher,
    worker: DeliveryWorker,
) -> list[GuardedConsumer[Any]]:
    """Register the dispatcher's readers and reclaimers on ``broker``; returns those that
    read in batches, whose work in flight a stopping dispatcher drains
    (:meth:`GuardedConsumer.drain`)."""
    events, dues, approvals = build_consumers(redis, settings, dispatcher)
    jobs = delivery_consumers(redis, settings, worker)
    consumers: list[GuardedConsumer[Any]] = [events, dues, approvals, *jobs]
    for consumer in consumers:
        consumer.subscribe(broker, settings)
    return [events, *jobs]
