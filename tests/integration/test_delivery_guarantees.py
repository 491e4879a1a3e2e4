"""The dispatcher's delivery guarantees, stage by stage, against real servers.

Real Valkey, a real SMTP server (aiosmtpd) and a local HTTP server answering like
Slack's incoming webhooks and Mastodon. The pipeline is driven step by step
(tests/support/dispatching.py) on a manual clock, so each test asserts what
reached the provider (counted at the sink) and what the delivery log says,
between steps, with nothing to wait for.

* a duplicate event, or a duplicate delivery job, sends once per recipient;
* a 429's ``Retry-After`` is honoured; a permanent error is recorded once and
  never retried;
* a shared rate limit defers (never drops) a send, across worker instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any, Final

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.dispatcher.channels import Channel
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.email import build_email_channel
from services.dispatcher.delivery_worker import DeliveryWorker
from services.dispatcher.fanout import delivery_id_for, idempotency_key
from shared.clock import ManualClock
from shared.contracts import DeliveryJob, DeliveryRecorded, DeliveryStatus
from shared.errors import RetryableFailure
from shared.plan import Plan
from shared.redis_values import DATA_FIELD, as_text
from shared.settings import Settings
from shared.streams import (
    DELIVERY_LOG,
    PREFIX,
    RETRY_DUE,
    RETRY_ITEMS,
    delivery_state_key,
    delivery_stream,
    fanned_out_key,
)
from tests.conftest import load_fixture
from tests.support.builders import T0, make_incident_opened, make_incident_updated
from tests.support.dispatching import Pipeline, build_pipeline
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.integration

ALICE: Final = "alice@example.com"
BOB: Final = "bob@example.com"
STATUSES: Final = "/api/v1/statuses"
SLACK_HOOK: Final = "/services/T0001/B0001/hook-secret-path"
SLACK: Final = "ops"  # the Slack recipient's name in the plan
MASTODON_TOKEN: Final = "mastodon-token-5ecret"

OPENED = make_incident_opened(event_id="ev-open", occurred_at=T0)
UPDATED = make_incident_updated(event_id="ev-update", occurred_at=T0 + timedelta(minutes=5))


def upper(low: float, high: float) -> float:
    """Jitter that always takes the longest backoff: retries due at a known time."""
    return high


def plan_for(provider: FakeProvider) -> Plan:
    """Customers get email (Alice, Bob) and Mastodon; the team gets Slack."""
    return make_plan(
        audiences={
            "customers": {
                "public": True,
                "email": [ALICE, BOB],
                "mastodon": [{"instance": provider.url, "access_token_env": "MASTODON_TOKEN"}],
            },
            "team": {"slack": [{"name": SLACK, "url_env": "SLACK_WEBHOOK_URL"}]},
        },
        routes=[{"name": "everyone", "audiences": ["customers", "team"]}],
    )


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """Mastodon and a Slack webhook, both answering success until told otherwise."""
    with FakeProvider() as fake:
        fake.answer(
            "POST", STATUSES, 200, json=load_fixture("outbound/mastodon_status_entity_200.json")
        )
        fake.answer("POST", SLACK_HOOK, 200, body="ok", headers={"content-type": "text/plain"})
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def pipeline_for(
    redis: Redis,
    make_settings: Callable[..., Settings],
    smtp_server: SmtpServer,
    provider: FakeProvider,
    http: httpx.AsyncClient,
    clock: ManualClock,
) -> AsyncIterator[Callable[..., Pipeline]]:
    """A pipeline (one dispatcher instance: ``owner`` names its worker) on the shared
    Redis, clock and servers. No rate limits unless a test sets some."""
    environ = {"MASTODON_TOKEN": MASTODON_TOKEN, "SLACK_WEBHOOK_URL": provider.url + SLACK_HOOK}
    plan = plan_for(provider)
    opened: list[Channel] = []
    workers: list[DeliveryWorker] = []

    def build(owner: str = "worker-a", **overrides: Any) -> Pipeline:
        values: dict[str, Any] = {
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "consumer_name": owner,
            "rate_limits": (),
        }
        settings = make_settings(**(values | overrides))
        # The email driver keeps SMTP sessions open for reuse: built here, so that
        # this fixture can close them, as the app does at shutdown.
        context = DriverContext(settings, plan, http, redis, clock, environ)
        email = build_email_channel(context)
        opened.append(email)
        built = build_pipeline(
            redis,
            settings,
            plan,
            clock,
            channels={"email": email},
            environ=environ,
            http=http,
            uniform=upper,
        )
        workers.append(built.worker)
        return built

    yield build
    for worker in workers:  # no lease renewal outlives the test's Redis client
        await worker.aclose()
    for channel in opened:
        closing = getattr(channel, "aclose", None)
        if closing is not None:
            await closing()


def delivery_of(event_id: str, channel: str, recipient: str) -> str:
    return delivery_id_for(idempotency_key(event_id, channel, recipient))


def sent_per_delivery(records: list[DeliveryRecorded]) -> Counter[str]:
    return Counter(r.delivery_id for r in records if r.status is DeliveryStatus.SENT)


def mastodon_recipient(provider: FakeProvider) -> str:
    return f"mastodon:{provider.url}"


def of(records: list[DeliveryRecorded], channel: str) -> list[tuple[DeliveryStatus, int]]:
    return [(r.status, r.attempt) for r in records if r.channel == channel]


async def retry_scheduled(redis: Redis, delivery_id: str) -> bool:
    return (await redis.zscore(RETRY_DUE, delivery_id)) is not None or bool(
        await redis.hexists(RETRY_ITEMS, delivery_id)
    )


async def state_of(redis: Redis, delivery_id: str) -> str:
    value = await redis.hget(delivery_state_key(delivery_id), "state")
    return "" if value is None else as_text(value)


async def requeue(redis: Redis, jobs: list[DeliveryJob]) -> None:
    """Put the same jobs on their streams again, as a re-queued fan-out would."""
    for job in jobs:
        await redis.xadd(delivery_stream(job.channel), {DATA_FIELD: job.model_dump_json()})


async def let_rate_windows_pass(redis: Redis, elapsed: timedelta) -> None:
    """Age the shared rate limiter's state by ``elapsed``.

    The limiter runs on Redis ``TIME`` (so skewed instances share one budget),
    which a manual clock does not move. Each limit key holds an absolute
    "theoretical arrival time" (ms) and expires after its period, so ``elapsed``
    passing means: every time ``elapsed`` earlier, every TTL ``elapsed`` shorter,
    gone when it runs out. That is what this writes.
    """
    shift = int(elapsed.total_seconds() * 1000)
    async for key in redis.scan_iter(match=f"{PREFIX}:rate:*"):
        ttl = int(await redis.pttl(key))
        value = await redis.get(key)
        if value is None:
            continue
        if 0 < ttl <= shift:
            await redis.delete(key)
        elif ttl > shift:
            await redis.set(key, int(float(as_text(value))) - shift, px=ttl - shift)


# A duplicate event or job sends once


async def test_the_same_event_twice_sends_once_per_recipient(
    redis: Redis,
    pipeline_for: Callable[..., Pipeline],
    smtp_server: SmtpServer,
    provider: FakeProvider,
) -> None:
    pipeline = pipeline_for()

    first = await pipeline.handle(OPENED, attempt=1)
    again = await pipeline.handle(OPENED, attempt=2)  # the broker redelivers it
    # The first handling died after queueing its jobs, before marking the event as
    # fanned out: the redelivered event queues every job again.
    await redis.delete(fanned_out_key(f"{OPENED.event_id}:event"))
    requeued = await pipeline.handle(OPENED, attempt=3)

    assert (first, again, requeued) == (4, 0, 4)
    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    assert len(smtp_server.mailbox.messages) == 2
    assert len(provider.requests_to("POST", STATUSES)) == 1
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    records = await pipeline.log()
    deliveries = {
        delivery_of(OPENED.event_id, "email", ALICE),
        delivery_of(OPENED.event_id, "email", BOB),
        delivery_of(OPENED.event_id, "mastodon", mastodon_recipient(provider)),
        delivery_of(OPENED.event_id, "slack", SLACK),
    }
    assert sent_per_delivery(records) == dict.fromkeys(deliveries, 1)
    assert len(records) == 4  # the skipped duplicates record nothing
    for delivery_id in deliveries:
        assert await state_of(redis, delivery_id) == "done"


async def test_the_same_delivery_job_queued_twice_sends_once(
    redis: Redis,
    pipeline_for: Callable[..., Pipeline],
    smtp_server: SmtpServer,
    provider: FakeProvider,
) -> None:
    pipeline = pipeline_for()
    await pipeline.handle(OPENED, drain=False)
    jobs = await pipeline.queued()
    await requeue(redis, jobs)  # every job twice on its stream, back to back

    ran = await pipeline.drain()

    assert ran == 2 * len(jobs) == 8
    assert Counter(j.delivery_id for j in pipeline.delivered) == dict.fromkeys(
        {j.delivery_id for j in jobs}, 2
    )
    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    assert len(provider.requests_to("POST", STATUSES)) == 1
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    records = await pipeline.log()
    assert sent_per_delivery(records) == dict.fromkeys({j.delivery_id for j in jobs}, 1)
    assert len(records) == len(jobs)


async def test_a_job_sent_by_another_worker_right_now_is_not_sent_again(
    redis: Redis, pipeline_for: Callable[..., Pipeline], provider: FakeProvider
) -> None:
    # Two dispatcher instances got the same Slack job (a reclaim while the first
    # is still sending). Long leases: the first one's attempt is alive throughout.
    first = pipeline_for("worker-a", idempotency_lease_ms=60_000)
    second = pipeline_for("worker-b", idempotency_lease_ms=60_000)
    release = threading.Event()
    provider.answer_next("POST", SLACK_HOOK, 200, body="ok", hold=release)
    await first.handle(OPENED, drain=False)
    [job] = [j for j in await first.queued() if j.channel == "slack"]

    sending = asyncio.create_task(first.worker.deliver(job))
    await asyncio.to_thread(provider.wait_for_requests, 1)
    with pytest.raises(RetryableFailure, match="being sent elsewhere"):
        await second.worker.deliver(job)  # stays pending: looked at again later
    release.set()
    await sending
    await second.worker.deliver(job)  # looked at again: it is done, nothing happens

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    records = await first.log()
    assert [(r.channel, r.status, r.attempt) for r in records] == [
        ("slack", DeliveryStatus.SENT, 1)
    ]
    assert not records[0].possible_duplicate


async def test_a_renewal_that_loses_its_cancellation_never_holds_the_delivery(
    pipeline_for: Callable[..., Pipeline],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py 8 now and then lost a cancellation that landed inside a command: a lease
    # renewer cancelled that way kept renewing, and the worker waiting for it to end
    # never finished its delivery (seen as "being sent elsewhere" for ever). Here every
    # renewal loses its cancellation; the send must still finish and be recorded.
    pipeline = pipeline_for("worker-a", idempotency_lease_ms=300)
    real_renew = pipeline.states.renew
    renewing = asyncio.Event()

    async def renew_losing_cancellations(delivery_id: str, owner: str) -> bool:
        renewing.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as the client lost it
            await asyncio.sleep(2)  # stands for a slow Redis call: noqa: sleep-ok
        return await real_renew(delivery_id, owner)

    monkeypatch.setattr(pipeline.states, "renew", renew_losing_cancellations)
    release = threading.Event()
    provider.answer_next("POST", SLACK_HOOK, 200, body="ok", hold=release)
    await pipeline.handle(OPENED, drain=False)
    [job] = [j for j in await pipeline.queued() if j.channel == "slack"]

    sending = asyncio.create_task(pipeline.worker.deliver(job))
    await asyncio.wait_for(renewing.wait(), timeout=30)  # a renewal is in flight now
    release.set()
    await asyncio.wait_for(sending, timeout=30)

    records = await pipeline.log()
    assert [(r.channel, r.status) for r in records] == [("slack", DeliveryStatus.SENT)]


async def test_a_worker_whose_lease_ran_out_mid_send_leaves_the_record_to_the_new_owner(
    redis: Redis, pipeline_for: Callable[..., Pipeline], provider: FakeProvider
) -> None:
    # Worker A's Slack send hangs past its lease; the job is reclaimed by worker B,
    # which sends it (a possible duplicate: Slack takes no key). Then A's send comes
    # back 503: A must not log a retry it could not schedule.
    first = pipeline_for("worker-a", idempotency_lease_ms=60_000)
    second = pipeline_for("worker-b", idempotency_lease_ms=60_000)
    release = threading.Event()
    provider.answer_next("POST", SLACK_HOOK, 503, body="service_unavailable", hold=release)
    await first.handle(OPENED, drain=False)
    [job] = [j for j in await first.queued() if j.channel == "slack"]
    sending = asyncio.create_task(first.worker.deliver(job))
    await asyncio.to_thread(provider.wait_for_requests, 1)

    # The lease is a Redis-TIME deadline in the delivery's hash: run it out.
    await redis.hset(delivery_state_key(job.delivery_id), "lease", 0)
    await second.worker.deliver(job)
    release.set()
    await sending

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    records = await first.log()
    assert [r.status for r in records] == [DeliveryStatus.SENT]
    assert records[0].possible_duplicate
    assert "may have received it twice" in (records[0].note or "")
    assert await state_of(redis, job.delivery_id) == "done"
    assert not await retry_scheduled(redis, job.delivery_id)


@pytest.mark.parametrize(
    ("answer", "status", "state"),
    [
        (200, DeliveryStatus.SENT, "done"),
        (404, DeliveryStatus.FAILED, "done"),
        (503, DeliveryStatus.RETRYING, "retry:2"),
    ],
)
async def test_an_outcome_whose_record_cannot_be_stored_does_not_move_the_state(
    redis: Redis,
    pipeline_for: Callable[..., Pipeline],
    provider: FakeProvider,
    answer: int,
    status: DeliveryStatus,
    state: str,
) -> None:
    # The record and the state change are one step: when the record cannot be written
    # (here the log is a string; in production Redis went away), the state stays
    # claimed, so the reclaimed job sends again and records. Never "done" unrecorded.
    pipeline = pipeline_for()
    provider.answer("POST", SLACK_HOOK, answer, body="answered")
    await pipeline.handle(OPENED, drain=False)
    [job] = [j for j in await pipeline.queued() if j.channel == "slack"]
    await redis.set(DELIVERY_LOG, "not a stream: every record write fails")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipeline.worker.deliver(job)

    assert await state_of(redis, job.delivery_id) == ""  # not moved: still the first try
    assert not await retry_scheduled(redis, job.delivery_id)
    await redis.delete(DELIVERY_LOG)
    await redis.hset(delivery_state_key(job.delivery_id), "lease", 0)  # the worker "died"
    await pipeline.worker.deliver(job)  # the reclaimed job

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    [record] = [r for r in await pipeline.log() if r.delivery_id == job.delivery_id]
    assert (record.status, record.attempt) == (status, 2)  # the refused try counts
    assert await state_of(redis, job.delivery_id) == state
    assert await retry_scheduled(redis, job.delivery_id) is (status is DeliveryStatus.RETRYING)


async def test_the_first_job_redelivered_after_its_retry_was_scheduled_does_nothing(
    redis: Redis, pipeline_for: Callable[..., Pipeline], provider: FakeProvider
) -> None:
    pipeline = pipeline_for()
    provider.answer_next("POST", SLACK_HOOK, 503, body="service unavailable")
    await pipeline.handle(OPENED)
    [job] = [j for j in pipeline.delivered if j.channel == "slack"]

    await requeue(redis, [job])  # attempt 1's job again: the retry owns the delivery now
    assert await pipeline.drain() == 1
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1

    await pipeline.fire_retries(timedelta(minutes=1))

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    assert of(await pipeline.log(), "slack") == [
        (DeliveryStatus.RETRYING, 1),
        (DeliveryStatus.SENT, 2),
    ]


# Retry-After is honoured; a permanent error is not retried


async def test_a_429_retry_after_is_honoured_and_other_channels_go_on(
    redis: Redis,
    pipeline_for: Callable[..., Pipeline],
    smtp_server: SmtpServer,
    provider: FakeProvider,
    clock: ManualClock,
) -> None:
    pipeline = pipeline_for()
    provider.answer_next(
        "POST",
        SLACK_HOOK,
        429,
        body="rate_limited",
        headers={"Retry-After": "120", "content-type": "text/plain"},
    )
    slack_id = delivery_of(OPENED.event_id, "slack", SLACK)
    handled_at = clock.now()

    await pipeline.handle(OPENED)

    records = await pipeline.log()
    [retrying] = [r for r in records if r.channel == "slack"]
    assert retrying.status is DeliveryStatus.RETRYING
    assert retrying.attempt == 1
    assert "429" in (retrying.error or "")
    assert retrying.next_attempt_at is not None
    assert retrying.next_attempt_at >= handled_at + timedelta(seconds=120)
    score = await redis.zscore(RETRY_DUE, slack_id)
    assert score is not None
    assert score >= (handled_at + timedelta(seconds=120)).timestamp() * 1000
    # Email and Mastodon did not wait for Slack.
    assert len(smtp_server.mailbox.messages) == 2
    assert sorted(s for s, _ in of(records, "email")) == [DeliveryStatus.SENT] * 2
    assert of(records, "mastodon") == [(DeliveryStatus.SENT, 1)]

    assert await pipeline.fire_retries(timedelta(seconds=60)) == 0  # too early: nothing moves
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    assert len(await pipeline.log()) == len(records)

    assert await pipeline.fire_retries(timedelta(seconds=61)) == 1  # 121 s after the 429

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    assert of(await pipeline.log(), "slack") == [
        (DeliveryStatus.RETRYING, 1),
        (DeliveryStatus.SENT, 2),
    ]
    assert not await retry_scheduled(redis, slack_id)
    assert len(smtp_server.mailbox.messages) == 2


async def test_a_permanent_error_is_recorded_failed_once_and_never_retried(
    redis: Redis,
    pipeline_for: Callable[..., Pipeline],
    smtp_server: SmtpServer,
    provider: FakeProvider,
) -> None:
    pipeline = pipeline_for()
    provider.answer(
        "POST", SLACK_HOOK, 404, body="channel_not_found", headers={"content-type": "text/plain"}
    )
    smtp_server.bounce.add(BOB)  # 550 5.1.1 no such user
    slack_id = delivery_of(OPENED.event_id, "slack", SLACK)
    bob_id = delivery_of(OPENED.event_id, "email", BOB)

    await pipeline.handle(OPENED)

    records = await pipeline.log()
    failed = {r.delivery_id: r for r in records if r.status is DeliveryStatus.FAILED}
    assert set(failed) == {slack_id, bob_id}
    assert "channel_not_found" in (failed[slack_id].error or "")
    assert "550" in (failed[bob_id].error or "")
    assert failed[slack_id].next_attempt_at is None
    assert BOB not in (failed[bob_id].error or "")
    for delivery_id in (slack_id, bob_id):
        assert not await retry_scheduled(redis, delivery_id)
        assert await state_of(redis, delivery_id) == "done"
    assert await redis.zcard(RETRY_DUE) == 0

    # However long we wait, and even if the job comes round again: nothing more.
    assert await pipeline.fire_retries(timedelta(days=1)) == 0
    await requeue(redis, [j for j in pipeline.delivered if j.delivery_id in (slack_id, bob_id)])
    await pipeline.drain()

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    assert smtp_server.to(BOB) == []
    assert len(smtp_server.to(ALICE)) == 1
    assert await pipeline.log() == records


# Rate limits defer a send, shared by every instance


async def test_a_rate_limited_send_is_queued_and_sent_once_the_window_passed(
    redis: Redis,
    pipeline_for: Callable[..., Pipeline],
    smtp_server: SmtpServer,
    provider: FakeProvider,
    clock: ManualClock,
) -> None:
    pipeline = pipeline_for(rate_limits=("slack:recipient=1/minute",))
    await pipeline.handle(OPENED)
    second_handled_at = clock.now()

    await pipeline.handle(UPDATED)  # the same Slack recipient, within the minute

    slack_id = delivery_of(UPDATED.event_id, "slack", SLACK)
    records = await pipeline.log()
    [queued] = [r for r in records if r.delivery_id == slack_id]
    assert queued.status is DeliveryStatus.QUEUED
    assert queued.attempt == 1  # waiting for the budget is not an attempt
    assert queued.next_attempt_at is not None
    assert (
        second_handled_at + timedelta(seconds=50)
        <= queued.next_attempt_at
        <= second_handled_at + timedelta(seconds=60)
    )
    assert "rate limited" in (queued.note or "")
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    # The limit is Slack's: the update's emails went at once.
    assert len(smtp_server.mailbox.messages) == 4

    # Half the window later: not due, nothing sent.
    await let_rate_windows_pass(redis, timedelta(seconds=30))
    assert await pipeline.fire_retries(timedelta(seconds=30)) == 0
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1

    await let_rate_windows_pass(redis, timedelta(seconds=31))
    assert await pipeline.fire_retries(timedelta(seconds=31)) == 1

    slack_posts = provider.requests_to("POST", SLACK_HOOK)
    assert len(slack_posts) == 2
    assert [(r.status, r.attempt) for r in await pipeline.log() if r.delivery_id == slack_id] == [
        (DeliveryStatus.QUEUED, 1),
        (DeliveryStatus.SENT, 1),
    ]
    assert await state_of(redis, slack_id) == "done"


async def test_two_dispatcher_instances_share_one_rate_limit_budget(
    redis: Redis, pipeline_for: Callable[..., Pipeline], provider: FakeProvider
) -> None:
    limits = ("slack:recipient=1/minute",)
    first = pipeline_for("instance-a", rate_limits=limits)
    second = pipeline_for("instance-b", rate_limits=limits)

    await first.handle(OPENED)  # instance A sends the opening to Slack
    await first.dispatcher.handle_incident_event(UPDATED, attempt=1)
    await second.drain()  # instance B takes the update's jobs (and skips A's done ones)

    update_slack = delivery_of(UPDATED.event_id, "slack", SLACK)
    records = await second.log()
    assert [(r.status, r.attempt) for r in records if r.delivery_id == update_slack] == [
        (DeliveryStatus.QUEUED, 1)
    ]
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 1
    # B's other channels were not limited: its Mastodon post of the update went.
    assert len(provider.requests_to("POST", STATUSES)) == 2

    await let_rate_windows_pass(redis, timedelta(seconds=61))
    assert await second.fire_retries(timedelta(seconds=61)) == 1

    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    assert sent_per_delivery(await second.log())[update_slack] == 1
