"""The dispatcher's stages end to end (fan-out -> channel workers -> retries -> dead
letters) with real Valkey and a real SMTP server, driven by a plan and a manual clock.

Rate limits and delivery leases run on Redis ``TIME``, which a test does not move, so
these tests turn rate limits off unless they are the point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.outcome import Retryable, Sent
from services.dispatcher.dead_letters import ReplayStatus, get_dead_letter, list_dead_letters
from services.dispatcher.delivery_state import DeliveryStates
from services.dispatcher.delivery_worker import INTERRUPTED
from services.dispatcher.dispatch_record import DispatchRecords
from services.dispatcher.fanout import Delivery, delivery_id_for, plan_deliveries
from services.dispatcher.outbox import read_outbox
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import ManualClock
from shared.contracts import DeliveryRecorded, DeliveryStatus, IncidentStatus
from shared.errors import RetryableFailure
from shared.plan import Plan
from shared.redis_values import as_text
from shared.settings import Settings
from shared.streams import RETRY_DUE, delivery_state_key, delivery_stream, fanned_out_key
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_updated,
    make_resolved_incident,
    make_update_due,
    store_incident,
)
from tests.support.dispatching import Pipeline, ScriptedChannel, build_pipeline
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
PHONE = "+14155550100"
STATUS_URL = "https://status.example.com"
CUSTOMER_TITLE = "A major outage"
"""What customers read of the default incident: the plan's words for SEV1 (no service)."""

PLAN = make_plan(emails=(ALICE, BOB), status_page_url=STATUS_URL)
OPENED = make_incident_opened(
    event_id="ev-open", occurred_at=T0, next_update_at=T0 + timedelta(minutes=30)
)
BASE = timedelta(seconds=5)
"""The backoff after a first failure (CLARION_RETRY_BASE); jitter is pinned to its top."""


def highest(low: float, high: float) -> float:
    """Jitter pinned to the top of its range: each backoff is exactly its ceiling."""
    return high


class MakePipeline(Protocol):
    def __call__(
        self,
        plan: Plan = ...,
        smtp: SmtpServer | None = ...,
        *,
        channels: dict[str, Channel] | None = ...,
        lease_ms: int | None = ...,
        **settings: Any,
    ) -> Pipeline: ...


@pytest.fixture
async def make_pipeline(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[MakePipeline]:
    built: list[Pipeline] = []

    def factory(
        plan: Plan = PLAN,
        smtp: SmtpServer | None = None,
        *,
        channels: dict[str, Channel] | None = None,
        lease_ms: int | None = None,
        **settings: Any,
    ) -> Pipeline:
        values: dict[str, Any] = {
            "smtp_host": smtp.host if smtp else None,
            "smtp_port": smtp.port if smtp else 25,
            "consumer_name": "dispatcher-test",
            "delivery_max_attempts": 3,
            "retry_base": BASE,
            "rate_limits": (),
        }
        pipeline = build_pipeline(
            redis,
            make_settings(**(values | settings)),
            plan,
            ManualClock(T0),
            channels=channels,
            uniform=highest,
            lease_ms=lease_ms,
        )
        built.append(pipeline)
        return pipeline

    yield factory
    for pipeline in built:
        await pipeline.aclose()


def statuses(records: Iterable[DeliveryRecorded]) -> list[tuple[str, str, DeliveryStatus, int]]:
    return [(r.channel, r.recipient, r.status, r.attempt) for r in records]


def by_recipient(records: Iterable[DeliveryRecorded]) -> dict[str, DeliveryRecorded]:
    """The last record of each recipient."""
    return {r.recipient: r for r in records}


async def within(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, timeout=10.0)


# Fan-out and sending


async def test_opened_event_emails_everyone_and_posts_the_status_page(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    pipeline = make_pipeline(smtp=smtp_server)

    ran = await pipeline.handle(OPENED)

    assert ran == 3
    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    email = smtp_server.to(ALICE)[0]
    assert email["Subject"] == f"Investigating: {CUSTOMER_TITLE}"
    body = email.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Next update by 15:00 UTC, Mon 23 Nov 2026" in body.get_content()
    assert STATUS_URL in body.get_content()
    records = await pipeline.log()
    assert sorted(statuses(records)) == [
        ("email", "a***@example.com", DeliveryStatus.SENT, 1),
        ("email", "b***@example.com", DeliveryStatus.SENT, 1),
        ("status_page", "status-page", DeliveryStatus.SENT, 1),
    ]
    assert {r.audience for r in records} == {"customers"}
    assert not any(r.shortened for r in records)
    assert all(r.latency_ms is not None for r in records)
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.state is IncidentStatus.INVESTIGATING
    assert page.title == CUSTOMER_TITLE  # the customers' words, not the alerts' title
    assert [u.headline for u in page.updates] == ["Investigating"]
    assert "Next update by 15:00 UTC" in page.updates[0].body


async def test_an_event_fans_out_to_one_job_per_delivery_on_its_channel_stream(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    pipeline = make_pipeline()

    await pipeline.handle(OPENED, drain=False)

    jobs = sorted(await pipeline.queued(), key=lambda j: (j.channel, j.recipient))
    assert [(j.channel, j.recipient) for j in jobs] == [
        ("email", ALICE),
        ("email", BOB),
        ("status_page", "status-page"),
    ]
    for job in jobs:
        assert job.delivery_id == delivery_id_for(f"ev-open:{job.channel}:{job.recipient}")
        assert (job.event_id, job.event_type, job.incident_id) == (
            "ev-open",
            "incident.opened",
            "inc-1",
        )
        assert (job.audience, job.public) == ("customers", True)
        assert (job.attempt, job.expects, job.last_attempt) == (1, "", 3)
    assert await redis.xlen(delivery_stream("email")) == 2
    assert await redis.xlen(delivery_stream("status_page")) == 1
    # rendered once per (audience, channel), stored under the event, before anything is sent
    records = DispatchRecords(redis, retention_seconds=60)
    loaded = await records.load("ev-open", "customers", "email")
    assert loaded is not None
    incident, rendering = loaded
    assert incident == OPENED.incident
    assert isinstance(rendering, RenderedMessage)
    assert rendering.title == f"Investigating: {CUSTOMER_TITLE}"
    assert await pipeline.log() == []
    assert await read_outbox(redis) == []


async def test_same_event_twice_sends_exactly_one_email_per_recipient(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(OPENED, attempt=1)
    assert await pipeline.handle(OPENED, attempt=2) == 0  # fanned out before: nothing queued

    assert len(smtp_server.mailbox.messages) == 2
    # What the delivery state remembers names no recipient: its keys are hashes.
    keys = [key.decode() async for key in redis.scan_iter("clarion:delivery:*")]
    assert len(keys) == 3
    assert not [key for key in keys if "@" in key]
    assert len(await pipeline.log()) == 3
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert len(page.updates) == 1


async def test_jobs_queued_twice_still_send_once(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    """The first fan-out died after queueing its jobs, before marking the event done:
    the redelivered event queues every job again, and only one of each sends."""
    pipeline = make_pipeline(smtp=smtp_server)
    await pipeline.handle(OPENED, drain=False)
    await redis.delete(fanned_out_key("ev-open:event"))

    ran = await pipeline.handle(OPENED, attempt=2)

    assert ran == 6
    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    assert len(await pipeline.log()) == 3
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert len(page.updates) == 1


async def test_permanent_failure_for_one_recipient_does_not_block_the_others(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    smtp_server.bounce.add(BOB)
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(OPENED)  # does not raise

    assert len(smtp_server.to(ALICE)) == 1
    records = by_recipient(await pipeline.log())
    assert records["b***@example.com"].status is DeliveryStatus.FAILED
    assert "550" in (records["b***@example.com"].error or "")
    assert records["b***@example.com"].next_attempt_at is None
    assert records["a***@example.com"].status is DeliveryStatus.SENT
    assert records["status-page"].status is DeliveryStatus.SENT
    assert await redis.zcard(RETRY_DUE) == 0  # a permanent error is not retried

    await redis.delete(fanned_out_key("ev-open:event"))
    await pipeline.handle(OPENED, attempt=2)  # even fanned out again, a failure stays final
    await pipeline.fire_retries(after=timedelta(hours=1))
    assert len(await pipeline.log()) == 3
    assert smtp_server.to(BOB) == []


# Retries, through the scheduler's retry schedule


async def test_retryable_failure_is_scheduled_and_only_that_delivery_is_retried(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add(BOB)
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(OPENED)  # does not raise: the retry is scheduled, not awaited

    assert len(smtp_server.to(ALICE)) == 1
    assert smtp_server.to(BOB) == []
    bob = by_recipient(await pipeline.log())["b***@example.com"]
    assert (bob.status, bob.attempt) == (DeliveryStatus.RETRYING, 1)
    assert "451" in (bob.error or "")
    assert bob.next_attempt_at == T0 + BASE
    assert await pipeline.states.state(bob.delivery_id) == "retry:2"
    assert await redis.zrange(RETRY_DUE, 0, -1) == [bob.delivery_id.encode()]

    assert await pipeline.fire_retries(after=BASE - timedelta(milliseconds=1)) == 0  # not yet
    smtp_server.defer.clear()
    assert await pipeline.fire_retries(after=timedelta(milliseconds=1)) == 1

    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    assert statuses(await pipeline.log())[-1] == (
        "email",
        "b***@example.com",
        DeliveryStatus.SENT,
        2,
    )
    assert await redis.zcard(RETRY_DUE) == 0
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert len(page.updates) == 1


async def test_backoff_doubles_until_the_last_attempt_goes_to_dead_letters_and_replay_sends_it(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add(BOB)
    pipeline = make_pipeline(smtp=smtp_server)  # 3 attempts

    await pipeline.handle(OPENED)
    assert await pipeline.fire_retries(after=BASE) == 1
    assert await pipeline.fire_retries(after=BASE * 2 - timedelta(milliseconds=1)) == 0
    assert await pipeline.fire_retries(after=timedelta(milliseconds=1)) == 1

    bob = [r for r in await pipeline.log() if r.recipient == "b***@example.com"]
    assert [(r.status, r.attempt) for r in bob] == [
        (DeliveryStatus.RETRYING, 1),
        (DeliveryStatus.RETRYING, 2),
        (DeliveryStatus.DEAD, 3),
    ]
    assert [r.next_attempt_at for r in bob] == [T0 + BASE, T0 + BASE * 3, None]
    assert "attempt 3 of 3" in (bob[-1].error or "")
    assert await pipeline.states.state(bob[-1].delivery_id) == "dead"
    assert await redis.zcard(RETRY_DUE) == 0
    assert await pipeline.fire_retries(after=timedelta(days=1)) == 0  # dead stays dead

    [entry] = await list_dead_letters(redis, kind="delivery")
    view = entry.view()
    assert (view["delivery_id"], view["channel"], view["attempt"]) == (
        bob[-1].delivery_id,
        "email",
        3,
    )
    assert view["recipient"] == "b***@example.com"
    assert entry.letter.reason == "retries_exhausted"
    assert "451" in (entry.letter.error or "")
    assert smtp_server.to(BOB) == []

    smtp_server.defer.clear()
    result = await pipeline.replayer.replay(entry, by="carol")
    assert result.status is ReplayStatus.REPLAYED
    assert await pipeline.drain() == 1

    [message] = smtp_server.to(BOB)
    assert message["Subject"] == f"Investigating: {CUSTOMER_TITLE}"
    replayed = [r for r in await pipeline.log() if r.recipient == "b***@example.com"][-2:]
    assert [(r.status, r.attempt) for r in replayed] == [
        (DeliveryStatus.QUEUED, 4),
        (DeliveryStatus.SENT, 4),
    ]
    assert replayed[0].note == "replayed from dead letters by carol"
    assert len(smtp_server.to(ALICE)) == 1

    # A second replay sends nothing: the entry says it was replayed, and the delivery is done.
    again = await get_dead_letter(redis, entry.entry_id)
    assert again is not None
    assert (await pipeline.replayer.replay(again)).status is ReplayStatus.ALREADY_REPLAYED
    assert (await pipeline.replayer.replay(entry)).status is ReplayStatus.NOT_DEAD
    assert await pipeline.drain() == 0
    assert len(smtp_server.to(BOB)) == 1


def sms_and_chat_plan(**overrides: object) -> Plan:
    return make_plan(
        emails=(ALICE,),
        status_page_url=STATUS_URL,
        audiences={
            "customers": {"public": True, "email": [ALICE], "sms": [PHONE], "status_page": True},
            "engineering": {
                "email": [BOB],
                "slack": [{"name": "#incidents", "url_env": "CLARION_TEST_SLACK_URL"}],
            },
        },
        routes=[{"audiences": ["customers", "engineering"]}],
        **overrides,
    )


async def test_a_429_waits_its_retry_after_and_holds_up_no_other_channel(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    slack = ScriptedChannel(Retryable("slack answered 429", retry_after=timedelta(minutes=2)))
    pipeline = make_pipeline(sms_and_chat_plan(), channels={"slack": slack})

    await pipeline.handle(OPENED)

    records = {(r.audience, r.channel): r for r in await pipeline.log()}
    assert records[("engineering", "slack")].status is DeliveryStatus.RETRYING
    assert records[("engineering", "slack")].next_attempt_at == T0 + timedelta(minutes=2)
    others = [r for key, r in records.items() if key != ("engineering", "slack")]
    assert len(others) == 4
    assert {r.status for r in others} == {DeliveryStatus.SENT}  # email did not wait for slack

    assert await pipeline.fire_retries(after=timedelta(minutes=2) - BASE) == 0  # not at backoff
    assert await pipeline.fire_retries(after=BASE) == 1

    assert len(slack.sends) == 2
    last = (await pipeline.log())[-1]
    assert (last.channel, last.status, last.attempt) == ("slack", DeliveryStatus.SENT, 2)
    assert last.provider_message_id == "provider-2"


async def test_over_a_rate_limit_the_send_waits_without_spending_an_attempt(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    pipeline = make_pipeline(sms_and_chat_plan(), rate_limits=("sms:recipient=1/hour",))
    update = make_incident_updated(
        event_id="ev-update",
        occurred_at=T0 + timedelta(minutes=10),
        next_update_at=T0 + timedelta(minutes=40),
    )
    await pipeline.handle(OPENED)
    pipeline.clock.advance(timedelta(minutes=10))

    await pipeline.handle(update)

    records = [r for r in await pipeline.log() if r.event_id == "ev-update"]
    [sms] = [r for r in records if r.channel == "sms"]
    assert (sms.status, sms.attempt) == (DeliveryStatus.QUEUED, 1)
    assert sms.error is None
    assert (sms.note or "").startswith("rate limited on sms: sending at ")
    assert sms.next_attempt_at is not None
    now = T0 + timedelta(minutes=10)
    assert now + timedelta(minutes=59) < sms.next_attempt_at <= now + timedelta(hours=1)
    assert {r.status for r in records if r.channel != "sms"} == {DeliveryStatus.SENT}
    assert len(await read_outbox(redis, channel="sms")) == 1

    # The hour passes (rate limits count on Redis TIME, which a test cannot move).
    await redis.delete(*[key async for key in redis.scan_iter("clarion:rate:*")])
    assert await pipeline.fire_retries(after=timedelta(hours=1)) == 1

    last = (await pipeline.log())[-1]
    assert (last.channel, last.event_id, last.status, last.attempt) == (
        "sms",
        "ev-update",
        DeliveryStatus.SENT,
        1,
    )
    assert len(await read_outbox(redis, channel="sms")) == 2


# Another worker, a crash mid-send


def delivery_of(event: Any, recipient: str, plan: Plan = PLAN) -> Delivery:
    return next(d for d in plan_deliveries(event, event.incident, plan) if d.recipient == recipient)


async def test_a_delivery_another_worker_holds_is_left_pending_and_never_sent_twice(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    pipeline = make_pipeline(smtp=smtp_server)
    bob = delivery_of(OPENED, BOB)
    other = DeliveryStates(redis, lease_ms=60_000, retention_seconds=60)
    await other.claim(bob.delivery_id, "another-instance", "")

    await pipeline.handle(OPENED)  # does not raise

    assert len(smtp_server.to(ALICE)) == 1
    assert smtp_server.to(BOB) == []
    assert [job.recipient for job in pipeline.pending] == [BOB]  # stays pending, reclaimed later

    assert await other.finish(bob.delivery_id, "another-instance", "done")  # it sent it
    await pipeline.reclaim()

    assert pipeline.pending == []
    assert smtp_server.to(BOB) == []
    assert "b***@example.com" not in by_recipient(await pipeline.log())


async def test_a_delivery_whose_worker_died_mid_send_is_sent_and_flagged_as_a_possible_duplicate(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    pipeline = make_pipeline(smtp=smtp_server)
    bob = delivery_of(OPENED, BOB)
    died = DeliveryStates(redis, lease_ms=0, retention_seconds=60)  # its lease has run out
    await died.claim(bob.delivery_id, "a-dead-instance", "")

    await pipeline.handle(OPENED)

    assert len(smtp_server.to(BOB)) == 1
    record = by_recipient(await pipeline.log())["b***@example.com"]
    assert (record.status, record.attempt) == (DeliveryStatus.SENT, 2)  # the dead try counts
    assert record.possible_duplicate  # SMTP takes no idempotency key
    assert INTERRUPTED in (record.note or "")
    assert not by_recipient(await pipeline.log())["a***@example.com"].possible_duplicate


@pytest.mark.parametrize(
    ("idempotent", "duplicate", "said"),
    [
        (False, True, "the provider may have received it twice"),
        (True, False, "the provider drops repeats of our idempotency key"),
    ],
)
async def test_a_crash_between_send_and_record_resends_once_and_says_so(
    redis: Redis, make_pipeline: MakePipeline, idempotent: bool, duplicate: bool, said: str
) -> None:
    email = ScriptedChannel(idempotent=idempotent)
    email.hold(0)  # the first send reaches the provider, then the worker dies
    pipeline = make_pipeline(make_plan(emails=(ALICE,)), channels={"email": email}, lease_ms=0)
    await pipeline.handle(OPENED, drain=False)
    [job] = [j for j in await pipeline.queued() if j.channel == "email"]
    crashed = asyncio.create_task(pipeline.worker.deliver(job))
    await within(email.started[0].wait())
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed

    await pipeline.drain()  # the job is redelivered (its entry was never acknowledged)

    assert len(email.sends) == 2
    assert email.sends[0][2].delivery_id == email.sends[1][2].delivery_id  # the same key
    [record] = [r for r in await pipeline.log() if r.channel == "email"]
    assert (record.status, record.attempt) == (DeliveryStatus.SENT, 2)  # the crashed try counts
    assert record.possible_duplicate is duplicate
    assert INTERRUPTED in (record.note or "")
    assert said in (record.note or "")
    assert await pipeline.drain() == 0
    assert len(email.sends) == 2


async def test_a_send_that_outlived_its_lease_does_not_undo_the_one_that_took_over(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    email = ScriptedChannel(Retryable("451 try again later"), Sent("provider-2"))
    email.hold(0, 1)
    pipeline = make_pipeline(make_plan(emails=(ALICE,)), channels={"email": email}, lease_ms=0)
    await pipeline.handle(OPENED, drain=False)
    [job] = [j for j in await pipeline.queued() if j.channel == "email"]

    slow = asyncio.create_task(pipeline.worker.deliver(job))  # outlives its lease
    await within(email.started[0].wait())
    taker = asyncio.create_task(pipeline.worker.deliver(job))  # the reclaimer redelivers it
    await within(email.started[1].wait())
    email.release[0].set()
    await within(slow)  # its lease was lost: its retry must not be scheduled
    email.release[1].set()
    await within(taker)

    assert await pipeline.states.state(job.delivery_id) == "done"
    await pipeline.fire_retries(after=timedelta(days=1))
    assert len(email.sends) == 2


async def test_a_slow_send_keeps_its_lease_so_no_one_sends_it_again(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    email = ScriptedChannel()
    email.hold(0)
    pipeline = make_pipeline(make_plan(emails=(ALICE,)), channels={"email": email}, lease_ms=300)
    await pipeline.handle(OPENED, drain=False)
    [job] = [j for j in await pipeline.queued() if j.channel == "email"]
    slow = asyncio.create_task(pipeline.worker.deliver(job))
    await within(email.started[0].wait())
    key = delivery_state_key(job.delivery_id)
    first_lease = int(as_text(await redis.hget(key, "lease")))

    async def past_the_first_lease() -> bool:
        seconds, micros = await redis.time()
        return seconds * 1000 + micros // 1000 > first_lease + 100

    await eventually(past_the_first_lease, what="the first lease running out")
    with pytest.raises(RetryableFailure, match="being sent elsewhere"):
        await pipeline.worker.deliver(job)  # the reclaimer: still held, by a live worker
    email.release[0].set()
    await within(slow)

    assert len(email.sends) == 1
    assert await pipeline.states.state(job.delivery_id) == "done"


# Scheduled updates


async def test_update_due_for_open_incident_is_sent(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    await store_incident(redis, make_incident())
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(make_update_due(sequence=2))

    [message] = smtp_server.to(ALICE)
    assert message["Subject"] == f"Update 2: {CUSTOMER_TITLE}"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    assert "no new information" in body.get_content()
    assert "Next update by 15:30 UTC, Mon 23 Nov 2026" in body.get_content()  # due + 30 min
    assert {r.status for r in await pipeline.log()} == {DeliveryStatus.SENT}


async def test_update_due_for_a_resolved_incident_is_suppressed(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    await store_incident(redis, make_resolved_incident())
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(make_update_due(), attempt=1)
    await pipeline.handle(make_update_due(), attempt=2)

    assert smtp_server.mailbox.messages == []
    records = await pipeline.log()
    assert len(records) == 3
    assert {(r.status, r.error) for r in records} == {
        (DeliveryStatus.SUPPRESSED, "incident resolved")
    }
    assert await StatusPageStore(redis).get("inc-1") is None


async def test_update_due_is_suppressed_when_the_incident_resolves_before_it_is_sent(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    await store_incident(redis, make_incident())
    pipeline = make_pipeline(smtp=smtp_server)
    await pipeline.handle(make_update_due(), drain=False)
    await store_incident(redis, make_resolved_incident())

    await pipeline.drain()

    assert smtp_server.mailbox.messages == []
    assert {(r.status, r.error) for r in await pipeline.log()} == {
        (DeliveryStatus.SUPPRESSED, "incident resolved")
    }


async def test_update_due_for_an_unknown_incident_sends_and_records_nothing(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    pipeline = make_pipeline(smtp=smtp_server)

    assert await pipeline.handle(make_update_due(incident_id="inc-gone")) == 0

    assert smtp_server.mailbox.messages == []
    assert await pipeline.log() == []


async def test_resolution_moves_the_status_page_to_resolved(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    pipeline = make_pipeline()
    resolved = make_incident_resolved(
        make_resolved_incident(resolved_at=T0 + timedelta(hours=1)),
        event_id="ev-resolved",
        occurred_at=T0 + timedelta(hours=1),
    )

    await pipeline.handle(OPENED, attempt=1)
    await pipeline.handle(resolved, attempt=1)
    await pipeline.handle(OPENED, attempt=2)  # a late redelivery

    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.state is IncidentStatus.RESOLVED
    assert [u.headline for u in page.updates] == ["Resolved", "Investigating"]
    outbox = await read_outbox(redis, channel="email")
    assert [e.subject for e in outbox] == [
        f"Resolved: {CUSTOMER_TITLE}",
        f"Resolved: {CUSTOMER_TITLE}",
        f"Investigating: {CUSTOMER_TITLE}",
        f"Investigating: {CUSTOMER_TITLE}",
    ]


async def test_record_dead_marks_only_deliveries_that_never_started(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add(BOB)
    pipeline = make_pipeline(smtp=smtp_server)
    await pipeline.handle(OPENED, drain=False)
    await pipeline.drain(channels=("status_page",))
    await pipeline.dispatcher.record_dead(OPENED, attempt=4, error="max deliveries exceeded")

    records = await pipeline.log()
    assert sorted(statuses(records)) == [
        ("email", "a***@example.com", DeliveryStatus.DEAD, 4),
        ("email", "b***@example.com", DeliveryStatus.DEAD, 4),
        ("status_page", "status-page", DeliveryStatus.SENT, 1),
    ]
    dead = [r for r in records if r.status is DeliveryStatus.DEAD]
    assert {(r.error, r.audience) for r in dead} == {("max deliveries exceeded", "customers")}

    # Deliveries that have a state (sent, or a retry scheduled) are not marked.
    update = make_incident_updated(event_id="ev-update", occurred_at=T0 + timedelta(minutes=5))
    await pipeline.handle(update)
    before = len(await pipeline.log())
    await pipeline.dispatcher.record_dead(update, attempt=4, error="max deliveries exceeded")
    assert len(await pipeline.log()) == before


# Every channel, every audience


async def test_channels_without_credentials_go_to_the_outbox_with_audience_in_the_log(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    pipeline = make_pipeline(sms_and_chat_plan())

    await pipeline.handle(OPENED)

    records = {(r.audience, r.channel): r for r in await pipeline.log()}
    assert set(records) == {
        ("customers", "email"),
        ("customers", "sms"),
        ("customers", "status_page"),
        ("engineering", "email"),
        ("engineering", "slack"),
    }
    assert {r.status for r in records.values()} == {DeliveryStatus.SENT}
    sms_record = records[("customers", "sms")]
    assert (sms_record.provider_message_id or "").startswith("outbox:")
    assert "kept in the local outbox" in (sms_record.note or "")
    assert "kept in the local outbox" in (records[("engineering", "slack")].note or "")
    assert "CLARION_SMTP_HOST" in (records[("customers", "email")].note or "")
    [sms] = await read_outbox(redis, channel="sms")
    assert sms.to == PHONE
    assert "Next update by 15:00 UTC" in sms.text
    [slack] = await read_outbox(redis, channel="slack")
    assert slack.to == "#incidents"
    assert slack.payload is not None
    assert [block["type"] for block in slack.payload["blocks"]][:2] == ["header", "section"]
    assert slack.subject == "Investigating: Checkout is failing"  # engineering's own words
    emails = {m.to: m for m in await read_outbox(redis, channel="email")}
    assert emails[ALICE].subject == f"Investigating: {CUSTOMER_TITLE}"
    assert emails[BOB].subject == "[SEV1] Investigating: Checkout is failing"


async def test_no_redis_key_names_a_recipient(redis: Redis, make_pipeline: MakePipeline) -> None:
    slack = ScriptedChannel(Retryable("slack answered 503"))
    pipeline = make_pipeline(
        sms_and_chat_plan(),
        channels={"slack": slack},
        rate_limits=("sms:recipient=1/minute", "email:recipient=5/minute"),
    )

    await pipeline.handle(OPENED)

    keys = [key.decode() async for key in redis.scan_iter("*")]
    assert len([k for k in keys if k.startswith("clarion:delivery:")]) == 5
    assert [k for k in keys if k.startswith("clarion:rate:")]  # the limits were counted
    names = " ".join(keys)
    for secret in ("@", "alice", "bob", PHONE, PHONE.lstrip("+"), "#incidents"):
        assert secret not in names
    members = await redis.zrange(RETRY_DUE, 0, -1)
    assert len(members) == 1
    assert b"@" not in members[0]
    assert b"#" not in members[0]


async def test_a_shortened_message_says_so_in_the_delivery_log(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    pipeline = make_pipeline(sms_and_chat_plan(sms_max_segments=1))

    await pipeline.handle(OPENED)

    records = {(r.audience, r.channel): r for r in await pipeline.log()}
    assert records[("customers", "sms")].status is DeliveryStatus.SENT
    assert records[("customers", "sms")].shortened
    assert not records[("customers", "email")].shortened
    [sms] = await read_outbox(redis, channel="sms")
    assert "Next update by 15:00 UTC" in sms.text
    assert STATUS_URL in sms.text


async def test_a_message_that_cannot_be_rendered_fails_only_its_own_deliveries(
    redis: Redis, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    broken = tmp_path / "customers" / "email" / "message.txt.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("{{ no_such_value }}\n")
    pipeline = make_pipeline(sms_and_chat_plan(templates_dir=str(tmp_path)))

    await pipeline.handle(OPENED, attempt=1)  # does not raise
    await redis.delete(fanned_out_key("ev-open:event"))
    await pipeline.handle(OPENED, attempt=2)  # even fanned out again, a failure is final

    records = await pipeline.log()
    assert len(records) == 5
    by_target = {(r.audience, r.channel): r for r in records}
    failed = by_target[("customers", "email")]
    assert failed.status is DeliveryStatus.FAILED
    assert failed.error is not None
    assert failed.error.startswith("render failed:")
    assert "no_such_value" in failed.error
    others = [r for key, r in by_target.items() if key != ("customers", "email")]
    assert {r.status for r in others} == {DeliveryStatus.SENT}
    assert [m.to for m in await read_outbox(redis, channel="email")] == [BOB]
    assert await redis.zcard(RETRY_DUE) == 0


async def test_a_job_whose_rendering_has_expired_fails_and_says_why(
    redis: Redis, make_pipeline: MakePipeline, smtp_server: SmtpServer
) -> None:
    pipeline = make_pipeline(make_plan(emails=(ALICE,)), smtp=smtp_server)
    await pipeline.handle(OPENED, drain=False)
    await redis.delete("clarion:dispatch:ev-open")  # retention ran out before the job ran

    await pipeline.drain()

    assert smtp_server.mailbox.messages == []
    records = await pipeline.log()
    assert {r.status for r in records} == {DeliveryStatus.FAILED}
    assert all("expired" in (r.error or "") for r in records)
