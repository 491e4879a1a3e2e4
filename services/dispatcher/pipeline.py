"""The dispatcher pipeline: plan -> dedup -> render -> send -> record.

Each event fans out to its deliveries concurrently (bounded). A delivery is
claimed in the idempotency store before it is sent, so a redelivered event only
redoes the deliveries that did not finish. A permanent failure for one recipient
never holds up the others; a retryable one makes the whole event raise
:class:`RetryableFailure` at the end, so the entry stays pending and is reclaimed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Final

from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.outcome import Outcome, Permanent, Retryable, Sent
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.plan import Delivery, DispatchEvent, plan
from services.dispatcher.render import RenderContext, RenderedMessage, render
from shared.clock import Clock
from shared.contracts import DeliveryRecorded, DeliveryStatus, Incident, IncidentEvent, UpdateDue
from shared.errors import RetryableFailure
from shared.idempotency import Claim, IdempotencyStore
from shared.incidents import load_incident
from shared.logs import bound, get_logger
from shared.settings import Settings

DEFAULT_CONCURRENCY: Final = 10

log = get_logger("clarion.dispatcher")


class _Result(Enum):
    FINISHED = "finished"  # sent, failed, suppressed, or done before
    UNFINISHED = "unfinished"  # to be retried when the entry is reclaimed


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        clock: Clock,
        channels: Mapping[str, Channel],
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._channels = channels
        self._context = RenderContext.from_settings(settings)
        self._idempotency = IdempotencyStore(
            redis,
            lease_ms=settings.idempotency_lease_ms,
            retention_seconds=int(settings.idempotency_retention.total_seconds()),
        )
        self._log = DeliveryLog(redis)
        self._slots = asyncio.Semaphore(concurrency)

    async def handle_incident_event(self, event: IncidentEvent, attempt: int) -> None:
        await self._dispatch(event, event.incident, attempt)

    async def handle_update_due(self, due: UpdateDue, attempt: int) -> None:
        incident = await load_incident(self._redis, due.incident_id)
        await self._dispatch(due, incident, attempt)

    async def record_dead(self, event: DispatchEvent, attempt: int, error: str) -> None:
        """Retries are exhausted: every planned delivery not yet done is recorded DEAD."""
        incident = await self._incident_for(event)
        for delivery in plan(event, incident, self._settings.email_recipients):
            if await self._idempotency.is_done(delivery.delivery_id):
                continue
            with bound(
                incident_id=delivery.incident_id,
                channel=delivery.channel,
                delivery_id=delivery.delivery_id,
            ):
                await self._record(delivery, DeliveryStatus.DEAD, attempt, error=error)

    async def _incident_for(self, event: DispatchEvent) -> Incident | None:
        if isinstance(event, UpdateDue):
            return await load_incident(self._redis, event.incident_id)
        return event.incident

    async def _dispatch(
        self, event: DispatchEvent, incident: Incident | None, attempt: int
    ) -> None:
        deliveries = plan(event, incident, self._settings.email_recipients)
        messages: dict[str, RenderedMessage] = {}
        for delivery in deliveries:
            if not delivery.suppressed and delivery.channel not in messages:
                assert incident is not None  # plan() suppresses every delivery without one
                messages[delivery.channel] = render(
                    event, incident, self._context, delivery.channel
                )
        results = await asyncio.gather(
            *(self._bounded(d, messages.get(d.channel), attempt) for d in deliveries),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        unfinished = [
            d for d, r in zip(deliveries, results, strict=True) if r is _Result.UNFINISHED
        ]
        if unfinished:
            names = ", ".join(f"{d.channel}:{d.delivery_id}" for d in unfinished)
            raise RetryableFailure(
                f"{len(unfinished)} of {len(deliveries)} deliveries unfinished ({names})"
            )

    async def _bounded(
        self, delivery: Delivery, message: RenderedMessage | None, attempt: int
    ) -> _Result:
        async with self._slots:
            with bound(
                incident_id=delivery.incident_id,
                channel=delivery.channel,
                delivery_id=delivery.delivery_id,
            ):
                return await self._deliver(delivery, message, attempt)

    async def _deliver(
        self, delivery: Delivery, message: RenderedMessage | None, attempt: int
    ) -> _Result:
        key = delivery.delivery_id  # the hash of the idempotency key: no address in Redis keys
        owner = self._settings.consumer_name
        claim = await self._idempotency.claim(key, owner)
        if claim is Claim.DONE:
            log.info("delivery.skipped_done", attempt=attempt)
            return _Result.FINISHED
        if claim is Claim.BUSY:
            log.info("delivery.busy_elsewhere", attempt=attempt)
            return _Result.UNFINISHED
        started = self._clock.now()
        if delivery.suppressed_reason is not None or message is None:
            await self._idempotency.complete(key)
            reason = delivery.suppressed_reason or "nothing to send"
            await self._record(delivery, DeliveryStatus.SUPPRESSED, attempt, started, error=reason)
            return _Result.FINISHED
        outcome = await self._send(delivery, message)
        match outcome:
            case Sent(provider_id=provider_id):
                await self._idempotency.complete(key)
                await self._record(
                    delivery, DeliveryStatus.SENT, attempt, started, provider_id=provider_id
                )
                return _Result.FINISHED
            case Permanent(error=error):
                await self._idempotency.complete(key)
                await self._record(delivery, DeliveryStatus.FAILED, attempt, started, error=error)
                return _Result.FINISHED
            case Retryable(error=error):
                await self._idempotency.release(key, owner)
                await self._record(delivery, DeliveryStatus.RETRYING, attempt, started, error=error)
                return _Result.UNFINISHED

    async def _send(self, delivery: Delivery, message: RenderedMessage) -> Outcome:
        channel = self._channels.get(delivery.channel)
        if channel is None:
            return Permanent(f"no driver for channel {delivery.channel!r}")
        try:
            return await channel.send(message, delivery.recipient, delivery)
        except Exception as exc:  # an unclassified driver failure: retry, then dead-letter
            log.exception("delivery.driver_error")
            return Retryable(f"{type(exc).__name__}: {exc}")

    async def _record(
        self,
        delivery: Delivery,
        status: DeliveryStatus,
        attempt: int,
        started: datetime | None = None,
        *,
        error: str | None = None,
        provider_id: str | None = None,
    ) -> None:
        now = self._clock.now()
        await self._log.record(
            DeliveryRecorded(
                delivery_id=delivery.delivery_id,
                incident_id=delivery.incident_id,
                event_id=delivery.event_id,
                channel=delivery.channel,
                recipient=delivery.recipient,
                status=status,
                attempt=attempt,
                error=error,
                provider_message_id=provider_id,
                started_at=started or now,
                recorded_at=now,
            )
        )
