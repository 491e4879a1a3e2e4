"""The fan-out stage: an event becomes delivery jobs, one per recipient and channel.

plan (routes -> deliveries) -> hold what needs approval -> render once per
(audience, channel) -> queue one job per delivery on its channel's stream.
Channel workers (:mod:`.delivery_worker`) then send, record and retry, each
channel at its own pace, so a slow provider never holds up another.

Fan-out is idempotent: a redelivered event queues the same jobs again, and the
delivery state lets only one of them act. Jobs are written in pipelined batches,
so ten thousand recipients never wait on ten thousand round trips; a fan-out of one
batch or less (most events) stores its renderings, queues its jobs and marks itself
done in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Final

from pydantic import ValidationError
from redis.asyncio import Redis

from services.dispatcher.approvals import ApprovalPublisher, ApprovalStore, PendingApproval
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_state import DeliveryStates
from services.dispatcher.dispatch_record import DispatchRecords, Rendering, RenderProblem
from services.dispatcher.fanout import (
    NO_SUBSCRIBERS,
    Delivery,
    EmailSubscribers,
    email_reach,
    plan_deliveries,
)
from services.dispatcher.rendering.engine import RenderFailed
from services.dispatcher.rendering.limits import MessageTooLong
from services.dispatcher.rendering.messages import Renderer
from services.dispatcher.rendering.values import DispatchEvent, RenderContext
from services.dispatcher.subscriptions import SubscriptionStore
from shared.clock import Clock
from shared.contracts import (
    ApprovalGranted,
    DeliveryJob,
    DeliveryRecorded,
    DeliveryStatus,
    Incident,
    IncidentEvent,
    UpdateDue,
)
from shared.incidents import load_incident
from shared.logs import bound, get_logger
from shared.plan import Plan
from shared.redis_values import DATA_FIELD
from shared.settings import Settings
from shared.streams import delivery_stream, fanned_out_key

BATCH: Final = 500  # jobs queued per round trip; a fan-out this small is one transaction

log = get_logger("clarion.dispatcher")


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        clock: Clock,
        *,
        plan: Plan,
        approvals: ApprovalPublisher,
        delivery_log: DeliveryLog | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._plan = plan
        self._renderer = Renderer(RenderContext.of(plan, settings))
        self._approvals = approvals
        self._held = ApprovalStore(redis)
        retention = int(settings.idempotency_retention.total_seconds())
        self._retention = retention
        self._states = DeliveryStates(redis, settings.idempotency_lease_ms, retention)
        self._records = DispatchRecords(redis, retention)
        self._log = delivery_log or DeliveryLog(redis)
        self._subscriptions = SubscriptionStore(redis, clock)

    def warm_up(self) -> None:
        """Compile the templates before the first event needs them."""
        compiled = self._renderer.engine.warm()
        log.debug("templates.compiled", templates=compiled)

    async def handle_incident_event(self, event: IncidentEvent, attempt: int) -> None:
        await self._dispatch(event, event.incident, attempt)

    async def handle_update_due(self, due: UpdateDue, attempt: int) -> None:
        incident = await load_incident(self._redis, due.incident_id)
        if incident is None:
            log.warning("update_due.unknown_incident", incident_id=due.incident_id)
            return
        await self._dispatch(due, incident, attempt)

    async def handle_approval(self, grant: ApprovalGranted, attempt: int) -> None:
        """Queue what ``grant`` releases; nothing when it was released before."""
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
        """The event itself could not be fanned out, time after time: every planned
        delivery that never started is recorded DEAD (the event is in dead letters).

        An incident whose stored record cannot be read counts as no incident: there is
        nothing to plan from (it is likely why the event died in the first place)."""
        try:
            incident = await self._incident_for(event)
        except ValidationError as exc:
            log.warning(
                "dead.incident_unreadable",
                event_id=event.event_id,
                incident_id=event.incident_id,
                problems=exc.error_count(),
            )
            return
        if incident is None:
            return
        deliveries = plan_deliveries(
            event, incident, self._plan, await self._subscribers(event, incident)
        )
        started = await self._states.started(d.delivery_id for d in deliveries)
        for delivery in deliveries:
            if delivery.delivery_id in started:
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
        marker = fanned_out_key(f"{event.event_id}:{'approved' if approved else 'event'}")
        done_before, subscribers = await asyncio.gather(  # side by side: one wait, not two
            self._redis.exists(marker), self._subscribers(event, incident)
        )
        if done_before:
            log.info("fanout.done_before", event_id=event.event_id, approved=approved)
            return
        deliveries = plan_deliveries(event, incident, self._plan, subscribers)
        if approved:
            sending = [d for d in deliveries if d.needs_approval]
        else:
            waiting = [d for d in deliveries if d.needs_approval and not d.suppressed]
            started = await self._states.started(d.delivery_id for d in waiting)  # sent before
            held = [d for d in waiting if d.delivery_id not in started]
            if held:
                await self._hold(event, incident, held, attempt)
            held_ids = {d.delivery_id for d in held}
            sending = [d for d in deliveries if d.delivery_id not in held_ids]
        renderings = self._render_all(event, incident, sending)
        if len(sending) <= BATCH:  # the usual event: all of it in one atomic step
            queued = await self._save_and_queue(event, incident, renderings, sending, marker)
        else:
            await self._records.save(event.event_id, incident, renderings)
            queued = await self._queue(event, sending)
            await self._redis.set(marker, 1, ex=self._retention)
        log.info("fanout.queued", event_id=event.event_id, deliveries=queued, approved=approved)

    async def _subscribers(self, event: DispatchEvent, incident: Incident) -> EmailSubscribers:
        """The status page's email subscribers for ``incident``, and the public addresses
        that unsubscribed; read only when a route emails an audience that needs them."""
        reach = email_reach(event, incident, self._plan)
        if not reach.needs_lookup:
            return NO_SUBSCRIBERS
        addresses: list[str] = []
        if reach.subscribers:
            touched = self._plan.components_of(incident.service, incident.components)
            known = [component.name for component in self._plan.components]
            addresses = await self._subscriptions.recipients_for(touched, known)
        unsubscribed = await self._subscriptions.unsubscribed_among(reach.public_addresses)
        return EmailSubscribers(addresses=tuple(addresses), unsubscribed=unsubscribed)

    async def _save_and_queue(
        self,
        event: DispatchEvent,
        incident: Incident,
        renderings: dict[tuple[str, str], Rendering],
        deliveries: list[Delivery],
        marker: str,
    ) -> int:
        """Store the renderings, queue the jobs and set the fanned-out marker in one
        transaction (one round trip): a fan-out small enough happens whole or not at all."""
        async with self._redis.pipeline(transaction=True) as pipe:
            self._records.stage(pipe, event.event_id, incident, renderings)
            for delivery in deliveries:
                job = _job(event.type, delivery, self._settings.delivery_max_attempts)
                pipe.xadd(delivery_stream(delivery.channel), {DATA_FIELD: job.model_dump_json()})
            pipe.set(marker, 1, ex=self._retention)
            await pipe.execute()
        return len(deliveries)

    async def _queue(self, event: DispatchEvent, deliveries: Iterable[Delivery]) -> int:
        queued = 0
        for batch in _batches(deliveries, BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery in batch:
                    job = _job(event.type, delivery, self._settings.delivery_max_attempts)
                    pipe.xadd(
                        delivery_stream(delivery.channel), {DATA_FIELD: job.model_dump_json()}
                    )
                await pipe.execute()
            queued += len(batch)
        return queued

    def _render_all(
        self, event: DispatchEvent, incident: Incident, deliveries: list[Delivery]
    ) -> dict[tuple[str, str], Rendering]:
        """One rendering per (audience, channel) that has something to send."""
        messages: dict[tuple[str, str], Rendering] = {}
        for delivery in deliveries:
            key = (delivery.audience, delivery.channel.value)
            if key in messages or delivery.suppressed:
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

    async def _record(
        self, delivery: Delivery, status: DeliveryStatus, attempt: int, *, error: str | None
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
                started_at=now,
                recorded_at=now,
            )
        )


def _job(event_type: str, delivery: Delivery, last_attempt: int) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=delivery.delivery_id,
        event_id=delivery.event_id,
        event_type=event_type,
        incident_id=delivery.incident_id,
        channel=delivery.channel.value,
        recipient=delivery.recipient,
        audience=delivery.audience,
        public=delivery.public,
        occurred_at=delivery.occurred_at,
        last_attempt=last_attempt,
        suppressed_reason=delivery.suppressed_reason,
    )


def _batches(items: Iterable[Delivery], size: int) -> Iterator[list[Delivery]]:
    batch: list[Delivery] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
