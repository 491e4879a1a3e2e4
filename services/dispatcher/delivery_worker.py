"""The send stage: one delivery job, one attempt, one recorded outcome.

Stages, in order: claim the delivery (exactly once) -> suppress? -> rate limit ->
send through the channel's driver -> record, and on a retryable failure schedule
the next attempt (or dead-letter it). The record is appended in the same atomic step
as the delivery's new state (:meth:`DeliveryStates.finish`), so a delivery never ends
``done`` without its final record. Nothing here waits: a rate-limited or failed
delivery is put back on the scheduler's timeline and the worker moves on.

Per job, the work is what it costs: the claim, the unsubscribe check and the finish
of deliveries handled at once share pipelined round trips (:mod:`shared.redis_batches`),
and the rendering a fan-out's jobs all send is loaded once (:mod:`.record_cache`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.outbox import OutboxWriter
from services.dispatcher.channels.outcome import NotConfigured, Outcome, Permanent, Retryable, Sent
from services.dispatcher.delivery_log import DeliveryLog, Entry
from services.dispatcher.delivery_state import (
    DEAD,
    DONE,
    ClaimKind,
    ClaimResult,
    DeliveryStates,
    Retry,
    retry_state,
)
from services.dispatcher.dispatch_record import DispatchRecords, RenderProblem
from services.dispatcher.fanout import (
    SUPPRESSED_RESOLVED,
    SUPPRESSED_UNSUBSCRIBED,
    Delivery,
    idempotency_key,
)
from services.dispatcher.lease_keeper import LeaseKeeper
from services.dispatcher.rate_limits import RateLimits
from services.dispatcher.record_cache import CachedRecords
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.retry_policy import RetryPolicy
from services.dispatcher.subscriptions import (
    UNSUBSCRIBED_KEY,
    address_digest,
    canonical_address,
)
from shared.clock import Clock
from shared.contracts import (
    DeadLetter,
    DeliveryJob,
    DeliveryRecorded,
    DeliveryStatus,
    Incident,
    IncidentAckOverdue,
    IncidentPostmortemDue,
    ScheduledDelivery,
    UpdateDue,
)
from shared.errors import InProgressElsewhere
from shared.incidents import load_incident
from shared.logs import bound, get_logger
from shared.plan import ChannelName
from shared.redaction import redact_text
from shared.redis_batches import CoalescedCalls
from shared.slots import Slots
from shared.streams import DISPATCHER_GROUP, delivery_stream

EXPIRED: Final = "the rendered message has expired (older than CLARION_IDEMPOTENCY_RETENTION)"
INTERRUPTED: Final = "an earlier attempt was interrupted mid-send"
STOPPED_BEFORE_ITS_TURN: Final = "the dispatcher stopped before its turn to send"

log = get_logger("clarion.dispatcher.worker")

_UPDATE_DUE: Final = UpdateDue.model_fields["type"].default
_ACK_OVERDUE: Final = IncidentAckOverdue.model_fields["type"].default
_POSTMORTEM_DUE: Final = IncidentPostmortemDue.model_fields["type"].default
_CHECKED_AT_SEND: Final = frozenset({_UPDATE_DUE, _ACK_OVERDUE, _POSTMORTEM_DUE})


def stale_reason(event_type: str, incident: Incident) -> str | None:
    """Why an event of ``event_type`` should no longer be sent about ``incident`` as it is now."""
    if event_type == _UPDATE_DUE and not incident.is_open:
        return SUPPRESSED_RESOLVED
    if event_type == _ACK_OVERDUE and (incident.acknowledged_at or not incident.is_open):
        return "incident acknowledged or resolved since"
    if event_type == _POSTMORTEM_DUE and (incident.postmortem_url or incident.is_open):
        return "post-mortem posted, or incident reopened, since"
    return None


@dataclass(frozen=True)
class _Turn:
    """This worker's hold on a delivery: its owner token and the try number."""

    owner: str
    tries: int


@dataclass(frozen=True)
class _Facts:
    """What an attempt that reached the provider adds to its record."""

    latency_ms: float | None = None
    note: str | None = None
    possible_duplicate: bool = False


class DeliveryWorker:
    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        channels: Mapping[str, Channel],
        *,
        owner: str,
        states: DeliveryStates,
        records: DispatchRecords,
        limits: RateLimits,
        policy: RetryPolicy,
        delivery_log: DeliveryLog,
        sends_per_channel: int,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._channels = channels
        self._owner = owner
        self._states = states
        self._leases = LeaseKeeper(states)
        self._records = CachedRecords(records)
        self._limits = limits
        self._policy = policy
        self._log = delivery_log
        self._outbox = OutboxWriter(redis, clock)
        self._uniform = uniform
        # More jobs are in flight than sends: while some wait on Redis (a claim, a finish),
        # others use the provider connections, whose number stays bounded per channel.
        self._send_slots: defaultdict[str, Slots] = defaultdict(lambda: Slots(sends_per_channel))
        self._stopping = False

    @property
    def calls(self) -> CoalescedCalls:
        """Where the worker's Redis calls go (one pipeline per turn of the event loop)."""
        return self._states.calls

    async def deliver(self, job: DeliveryJob) -> None:
        """Make this job's attempt, unless another job owns the delivery. Raises
        :class:`InProgressElsewhere` only while another live worker holds it (look again
        later; such a look never counts toward dead-lettering the job)."""
        with bound(incident_id=job.incident_id, channel=job.channel, delivery_id=job.delivery_id):
            # One owner token per claim: a reclaim in this same process is another owner.
            owner = f"{self._owner}/{uuid.uuid4().hex[:12]}"
            unsubscribed = self._look_up_unsubscribed(job)  # in the claim's round trip
            self._records.prefetch(job.event_id, job.audience, job.channel)  # and this
            claim = await self._states.claim(job.delivery_id, owner, job.expects)
            if claim.kind is ClaimKind.BUSY:
                raise InProgressElsewhere(f"delivery {job.delivery_id} is being sent elsewhere")
            if claim.kind is not ClaimKind.CLAIMED:
                log.info("delivery.skipped", found=claim.state or "new", attempt=job.attempt)
                return
            await self._attempt(job, claim, owner, unsubscribed)

    def stop_sending(self) -> None:
        """Start no send from here on (at shutdown, before the drain): a job waiting for a
        send slot gives its delivery back, queued again at once and not counted as a try,
        rather than being cut off mid-wait and later taken for an interrupted send."""
        self._stopping = True
        for slots in self._send_slots.values():
            slots.close()  # and whoever waits for one wakes

    async def aclose(self) -> None:
        """Renew no lease any more (at shutdown, once the sends in flight are drained)."""
        await self._leases.aclose()

    async def give_up(self, job: DeliveryJob, error: str) -> None:
        """The job itself kept failing (not the provider): record it DEAD. Its entry is in
        dead letters; replaying it queues the job again."""
        with bound(incident_id=job.incident_id, channel=job.channel, delivery_id=job.delivery_id):
            now = self._clock.now()
            dead = self._entry(
                job,
                DeliveryStatus.DEAD,
                now,
                job.attempt,
                error=f"the delivery job kept failing: {error}",
            )
            await self._log.append(dead)  # no claim, so no state change goes with it

    async def _attempt(
        self,
        job: DeliveryJob,
        claim: ClaimResult,
        owner: str,
        unsubscribed: asyncio.Future[Any] | None,
    ) -> None:
        started = self._clock.now()
        turn = _Turn(owner, max(claim.tries, job.attempt))  # counts tries a crash interrupted
        reason = job.suppressed_reason or await self._suppression(job, unsubscribed)
        if reason is not None:
            await self._final(job, DeliveryStatus.SUPPRESSED, started, turn, error=reason)
            return
        loaded = await self._records.load(job.event_id, job.audience, job.channel)
        if loaded is None:
            await self._final(job, DeliveryStatus.FAILED, started, turn, error=EXPIRED)
            return
        incident, rendering = loaded
        if isinstance(rendering, RenderProblem):
            await self._final(job, DeliveryStatus.FAILED, started, turn, error=rendering.error)
            return
        channel = self._channels.get(job.channel)
        delivery = _delivery(job, incident)
        with self._leases.kept(job.delivery_id, turn.owner):  # renewed while it waits, runs
            if self._stopping or not await self._send_slots[job.channel].take():
                await self._defer(job, started, turn, timedelta(0), STOPPED_BEFORE_ITS_TURN)
                return
            try:
                wait = await self._limits.acquire(job.channel, job.recipient)  # sent right after
                if wait is None:
                    clock_start = time.perf_counter()
                    outcome, note = await self._send(channel, rendering, delivery)
                    latency_ms = round((time.perf_counter() - clock_start) * 1000, 1)
            finally:
                self._send_slots[job.channel].give()
        if wait is not None:
            await self._defer(job, started, turn, wait, f"rate limited on {job.channel}")
            return
        duplicate = claim.interrupted and not (channel is not None and channel.idempotent)
        if claim.interrupted:
            extra = (
                "; the provider may have received it twice"
                if duplicate
                else "; the provider drops repeats of our idempotency key"
            )
            note = f"{note}; {INTERRUPTED}{extra}" if note else f"{INTERRUPTED}{extra}"
        facts = _Facts(latency_ms=latency_ms, note=note, possible_duplicate=duplicate)
        match outcome:
            case Sent(provider_id=provider_id):
                await self._final(
                    job,
                    DeliveryStatus.SENT,
                    started,
                    turn,
                    provider_id=provider_id,
                    shortened=rendering.shortened,
                    facts=facts,
                )
            case Permanent(error=error):
                await self._final(
                    job, DeliveryStatus.FAILED, started, turn, error=error, facts=facts
                )
            case Retryable():
                await self._failed_for_now(job, started, turn, outcome, facts)
            case NotConfigured():  # the outbox itself never answers "not configured"
                raise AssertionError("unreachable")

    async def _send(
        self, channel: Channel | None, message: RenderedMessage, delivery: Delivery
    ) -> tuple[Outcome, str | None]:
        if channel is None:
            return Permanent(f"no driver for channel {delivery.channel!r}"), None
        try:
            outcome = await channel.send(message, delivery.recipient, delivery)
        except Exception as exc:  # an unclassified driver failure: retry, then dead-letter
            log.exception("delivery.driver_error")
            return Retryable(f"{type(exc).__name__}: {exc}"), None
        if isinstance(outcome, NotConfigured):
            kept = await self._outbox.keep(message, delivery, outcome.reason)
            return kept, f"{outcome.reason}: kept in the local outbox (clarion outbox)"
        return outcome, None

    async def _suppression(
        self, job: DeliveryJob, unsubscribed: asyncio.Future[Any] | None
    ) -> str | None:
        """Why a message that was right when planned is no longer worth sending, if it is
        not: its recipient unsubscribed since, a scheduled update once resolved, an
        acknowledgement escalation once someone acknowledged, a post-mortem reminder once
        the post-mortem is out."""
        if unsubscribed is not None and await unsubscribed:
            return SUPPRESSED_UNSUBSCRIBED
        if job.event_type not in _CHECKED_AT_SEND:
            return None
        incident = await load_incident(self._redis, job.incident_id)
        if incident is None:
            return None
        return stale_reason(job.event_type, incident)

    def _look_up_unsubscribed(self, job: DeliveryJob) -> asyncio.Future[Any] | None:
        """For public email: whether the recipient clicked unsubscribe after this delivery
        was planned (truthy when they did), asked now, answered with the claim."""
        if job.suppressed_reason or not (job.public and job.channel == ChannelName.EMAIL):
            return None
        digest = address_digest(canonical_address(job.recipient))
        found = self._states.calls.command("SISMEMBER", UNSUBSCRIBED_KEY, digest)
        found.add_done_callback(_retrieved)  # unclaimed deliveries never look at it
        return found

    async def _defer(
        self, job: DeliveryJob, started: datetime, turn: _Turn, wait: timedelta, why: str
    ) -> None:
        """Not now (over a rate limit, or the dispatcher stopping): the same attempt,
        later. Not a failure, not counted."""
        again = job.model_copy(update={"expects": retry_state(job.attempt)})
        due = self._clock.now() + wait
        queued = self._entry(
            job,
            DeliveryStatus.QUEUED,
            started,
            max(turn.tries - 1, 1),
            note=f"{why}: sending at {due.isoformat()}",
            next_attempt_at=due,
        )
        await self._finish(
            job,
            turn,
            retry_state(job.attempt),
            queued,
            retry=self._retry(again, due),
            attempted=False,
        )

    async def _failed_for_now(
        self,
        job: DeliveryJob,
        started: datetime,
        turn: _Turn,
        failure: Retryable,
        facts: _Facts,
    ) -> None:
        error, retry_after = failure.error, failure.retry_after
        if job.attempt >= job.last_attempt:
            dead = DeadLetter(
                kind="delivery",
                stream=delivery_stream(job.channel),
                group=DISPATCHER_GROUP,
                reason="retries_exhausted",
                error=redact_text(error),
                payload=job.model_dump_json(),
                dead_at=self._clock.now(),
                delivery_id=job.delivery_id,
                incident_id=job.incident_id,
                channel=job.channel,
                attempt=job.attempt,
            )
            recorded = self._entry(
                job,
                DeliveryStatus.DEAD,
                started,
                turn.tries,
                error=f"{error} (attempt {job.attempt} of {job.last_attempt}; "
                "replay with clarion dead-letters replay)",
                facts=facts,
            )
            await self._finish(job, turn, DEAD, recorded, dead_letter_json=dead.model_dump_json())
            return
        delay = self._policy.delay(job.attempt, retry_after, self._uniform)
        due = self._clock.now() + delay
        following = job.model_copy(
            update={"attempt": job.attempt + 1, "expects": retry_state(job.attempt + 1)}
        )
        retrying = self._entry(
            job,
            DeliveryStatus.RETRYING,
            started,
            turn.tries,
            error=error,
            next_attempt_at=due,
            facts=facts,
        )
        await self._finish(
            job, turn, following.expects, retrying, retry=self._retry(following, due)
        )

    def _retry(self, job: DeliveryJob, due: datetime) -> Retry:
        item = ScheduledDelivery(incident_id=job.incident_id, due_at=due, job=job)
        return Retry(
            member=job.delivery_id,
            due_ms=math.ceil(due.timestamp() * 1000),  # never before the time logged
            item_json=item.model_dump_json(),
        )

    async def _final(
        self,
        job: DeliveryJob,
        status: DeliveryStatus,
        started: datetime,
        turn: _Turn,
        *,
        error: str | None = None,
        provider_id: str | None = None,
        shortened: bool = False,
        facts: _Facts | None = None,
    ) -> None:
        final = self._entry(
            job,
            status,
            started,
            turn.tries,
            error=error,
            provider_id=provider_id,
            shortened=shortened,
            facts=facts,
        )
        # Recorded even if the lease was lost: it happened (the new owner records its own).
        await self._finish(job, turn, DONE, final, record_if_lost=True)

    async def _finish(
        self,
        job: DeliveryJob,
        turn: _Turn,
        state: str,
        record: Entry,
        *,
        retry: Retry | None = None,
        dead_letter_json: str = "",
        attempted: bool = True,
        record_if_lost: bool = False,
    ) -> None:
        """Move the delivery to ``state`` and append ``record``, in one atomic step. If
        our lease ran out mid-attempt and another worker took over, nothing moves and
        nothing is appended (unless ``record_if_lost``): the new owner's outcome stands."""
        kept = await self._states.finish(
            job.delivery_id,
            turn.owner,
            state,
            retry=retry,
            dead_letter_json=dead_letter_json,
            attempted=attempted,
            record=record,
            record_if_lost=record_if_lost,
        )
        if not kept:
            log.warning("delivery.lease_lost", attempt=job.attempt, state=state)

    def _entry(
        self,
        job: DeliveryJob,
        status: DeliveryStatus,
        started: datetime,
        attempt: int,
        *,
        error: str | None = None,
        provider_id: str | None = None,
        shortened: bool = False,
        note: str | None = None,
        next_attempt_at: datetime | None = None,
        facts: _Facts | None = None,
    ) -> Entry:
        """The attempt's record, redacted, logged and counted (before any Redis call)."""
        facts = facts or _Facts()
        return self._log.prepare(
            DeliveryRecorded(
                delivery_id=job.delivery_id,
                incident_id=job.incident_id,
                event_id=job.event_id,
                channel=job.channel,
                recipient=job.recipient,
                status=status,
                attempt=attempt,
                audience=job.audience,
                error=error,
                provider_message_id=provider_id,
                shortened=shortened,
                started_at=started,
                recorded_at=self._clock.now(),
                latency_ms=facts.latency_ms,
                note=note or facts.note,
                possible_duplicate=facts.possible_duplicate,
                next_attempt_at=next_attempt_at,
            )
        )


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _delivery(job: DeliveryJob, incident: Incident) -> Delivery:
    return Delivery(
        delivery_id=job.delivery_id,
        idempotency_key=idempotency_key(job.event_id, job.channel, job.recipient),
        event_id=job.event_id,
        incident_id=job.incident_id,
        channel=ChannelName(job.channel),
        recipient=job.recipient,
        audience=job.audience,
        occurred_at=job.occurred_at,
        incident=incident,
        public=job.public,
    )
