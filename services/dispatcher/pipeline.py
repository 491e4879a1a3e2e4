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
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final

from redis.asyncio import Redis

from services.dispatcher.approvals import ApprovalPublisher, ApprovalStore, PendingApproval
from services.dispatcher.channels import Channel
from services.dispatcher.channels.outcome import Outcome, Permanent, Retryable, Sent
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.fanout import Delivery, plan_deliveries
from services.dispatcher.rendering.engine import RenderFailed
from services.dispatcher.rendering.limits import MessageTooLong
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import DispatchEvent, RenderContext
from shared.clock import Clock
from shared.contracts import (
    ApprovalGranted,
    DeliveryRecorded,
    DeliveryStatus,
    Incident,
    IncidentEvent,
    UpdateDue,
)
from shared.errors import RetryableFailure
from shared.idempotency import Claim, IdempotencyStore
from shared.incidents import load_incident
from shared.logs import bound, get_logger
from shared.plan import Plan
from shared.settings import Settings

DEFAULT_CONCURRENCY: Final = 10

log = get_logger("clarion.dispatcher")


class _Result(Enum):
    FINISHED = "finished"  # sent, failed, suppressed, or done before
    UNFINISHED = "unfinished"  # to be retried when the entry is reclaimed


@dataclass(frozen=True)
class RenderProblem:
    """Why a message could not be rendered: every delivery of it fails with this reason."""

    error: str


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        clock: Clock,
        channels: Mapping[str, Channel],
        *,
        plan: Plan,
        approvals: ApprovalPublisher,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._channels = channels
        self._plan = plan
        self._renderer = Renderer(RenderContext.of(plan, settings))
        self._approvals = approvals
        self._held = ApprovalStore(redis)
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
        if incident is None:
            log.warning("update_due.unknown_incident", incident_id=due.incident_id)
            return
        await self._dispatch(due, incident, attempt)

    async def handle_approval(self, grant: ApprovalGranted, attempt: int) -> None:
        """Send what ``grant`` releases; nothing when it was released before."""
        pending = await self._held.get(grant.event_id)
        if pending is None:
            log.info("approval.nothing_held", event_id=grant.event_id, by=grant.by)
            return
        event = pending.event
        incident = await self._incident_for(event)
        log.info(
            "approval.granted", event_id=grant.event_id, by=grant.by, automatic=grant.automatic
        )
        if incident is not None:
            await self._dispatch(event, incident, attempt, approved=True)
        await self._held.release(grant.event_id)

    async def record_dead(self, event: DispatchEvent, attempt: int, error: str) -> None:
        """Retries are exhausted: every planned delivery not yet done is recorded DEAD."""
        incident = await self._incident_for(event)
        if incident is None:
            return
        for delivery in plan_deliveries(event, incident, self._plan):
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
        self, event: DispatchEvent, incident: Incident, attempt: int, *, approved: bool = False
    ) -> None:
        deliveries = plan_deliveries(event, incident, self._plan)
        held = [
            d
            for d in deliveries
            if d.needs_approval
            and not approved
            and not d.suppressed
            and not await self._idempotency.is_done(d.delivery_id)  # approved and sent before
        ]
        if held:
            await self._hold(event, incident, held, attempt)
        sending = [d for d in deliveries if d not in held]
        messages = self._render_all(event, incident, sending)
        results = await asyncio.gather(
            *(self._bounded(d, messages[(d.audience, d.channel)], attempt) for d in sending),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        unfinished = [d for d, r in zip(sending, results, strict=True) if r is _Result.UNFINISHED]
        if unfinished:
            names = ", ".join(f"{d.channel}:{d.delivery_id}" for d in unfinished)
            raise RetryableFailure(
                f"{len(unfinished)} of {len(sending)} deliveries unfinished ({names})"
            )

    def _render_all(
        self, event: DispatchEvent, incident: Incident, deliveries: list[Delivery]
    ) -> dict[tuple[str, str], RenderedMessage | RenderProblem | None]:
        """One rendering per (audience, channel); None where every delivery is suppressed."""
        messages: dict[tuple[str, str], RenderedMessage | RenderProblem | None] = {}
        for delivery in deliveries:
            key = (delivery.audience, delivery.channel)
            if key in messages or delivery.suppressed:
                messages.setdefault(key, None)
                continue
            try:
                messages[key] = self._renderer.render(
                    event, incident, delivery.audience, delivery.channel
                )
            except (RenderFailed, MessageTooLong) as exc:
                log.warning(
                    "render.failed",
                    audience=delivery.audience,
                    channel=delivery.channel,
                    error=str(exc),
                )
                messages[key] = RenderProblem(f"render failed: {exc}")
        return messages

    async def _hold(
        self, event: DispatchEvent, incident: Incident, held: list[Delivery], attempt: int
    ) -> None:
        """Keep the public deliveries of ``event`` for approval, and ask for the timer."""
        first = held[0]
        try:
            preview = self._renderer.render(event, incident, first.audience, first.channel)
            title, text = preview.title, preview.text
        except (RenderFailed, MessageTooLong) as exc:  # the held sends will fail, recorded
            title, text = f"({first.channel} message cannot be rendered)", str(exc)
        now = self._clock.now()
        pending, created = await self._held.hold(
            PendingApproval(
                event_id=event.event_id,
                incident_id=event.incident_id,
                event_type=event.type,
                event_json=event.model_dump_json(),
                requested_at=now,
                auto_publish_at=now + self._plan.approval.auto_publish_after,
                held=len(held),
                preview_title=title,
                preview_text=text,
            )
        )
        if created:  # held just now: say so in the delivery log once
            for delivery in held:
                await self._record(
                    delivery,
                    DeliveryStatus.HELD,
                    attempt,
                    error=f"waiting for approval until {pending.auto_publish_at.isoformat()}",
                )
        await self._approvals.publish_approval(pending.request)  # idempotent at the scheduler

    async def _bounded(
        self, delivery: Delivery, message: RenderedMessage | RenderProblem | None, attempt: int
    ) -> _Result:
        async with self._slots:
            with bound(
                incident_id=delivery.incident_id,
                channel=delivery.channel,
                delivery_id=delivery.delivery_id,
            ):
                return await self._deliver(delivery, message, attempt)

    async def _deliver(
        self, delivery: Delivery, message: RenderedMessage | RenderProblem | None, attempt: int
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
        if delivery.suppressed_reason is not None or not isinstance(message, RenderedMessage):
            await self._idempotency.complete(key)
            if isinstance(message, RenderProblem):
                status, reason = DeliveryStatus.FAILED, message.error
            else:
                status = DeliveryStatus.SUPPRESSED
                reason = delivery.suppressed_reason or "nothing to send"
            await self._record(delivery, status, attempt, started, error=reason)
            return _Result.FINISHED
        outcome = await self._send(delivery, message)
        match outcome:
            case Sent(provider_id=provider_id):
                await self._idempotency.complete(key)
                await self._record(
                    delivery,
                    DeliveryStatus.SENT,
                    attempt,
                    started,
                    provider_id=provider_id,
                    shortened=message.shortened,
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
        shortened: bool = False,
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
                audience=delivery.audience,
                error=error,
                shortened=shortened,
                provider_message_id=provider_id,
                started_at=started or now,
                recorded_at=now,
            )
        )
