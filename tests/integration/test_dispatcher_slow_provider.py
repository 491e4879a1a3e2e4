"""One slow or rate-limited provider never delays the others, in the real dispatcher app.

The app runs in process with its lifespan: its per-channel consumers read real
Valkey, email goes to a real SMTP server, and Slack's webhook is a local server
that holds its answer until the test lets it go. What is checked is the ORDER in
which deliveries complete (the delivery log, the mailbox), never a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Final

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.delivery_log import DeliveryLog
from shared.clock import ManualClock
from shared.contracts import DeliveryRecorded, DeliveryStatus, IncidentEvent
from shared.plan import Plan
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, delivery_state_key
from tests.support.asgi import running
from tests.support.builders import T0, make_incident_opened, make_incident_updated
from tests.support.fake_provider import FakeProvider, Received
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ALICE: Final = "alice@example.com"
BOB: Final = "bob@example.com"
SLACK_HOOK: Final = "/services/T0001/B0001/hook-secret-path"
EVENTS: Final[tuple[IncidentEvent, ...]] = (
    make_incident_opened(event_id="ev-1", occurred_at=T0),
    make_incident_updated(event_id="ev-2", occurred_at=T0 + timedelta(minutes=1)),
    make_incident_updated(event_id="ev-3", occurred_at=T0 + timedelta(minutes=2)),
)
EMAILS_PER_EVENT: Final = 2


def plan() -> Plan:
    return make_plan(
        audiences={
            "customers": {"public": True, "email": [ALICE, BOB]},
            "team": {"slack": [{"name": "ops", "url_env": "SLACK_WEBHOOK_URL"}]},
        },
        routes=[{"name": "everyone", "audiences": ["customers", "team"]}],
    )


@pytest.fixture
def slack() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def dispatcher(
    redis: Redis,
    make_settings: Callable[..., Settings],
    smtp_server: SmtpServer,
    slack: FakeProvider,
    clock: ManualClock,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real dispatcher app: email to the SMTP server, Slack to the fake webhook."""
    settings = make_settings(
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        rate_limits=(),
        consumer_name="dispatcher-slow-provider",
        # New entries wake a blocked XREADGROUP at once, so this costs no latency; a
        # long block means far fewer reconnects racing FastStream's shutdown, which
        # cancels its subscriber tasks without awaiting them (a socket opened in that
        # window is never closed: a ResourceWarning, an error under filterwarnings).
        polling_interval_ms=1000,
        # A held send must not be reclaimed and sent again while the test holds it.
        idempotency_lease_ms=60_000,
        reclaim_idle_ms=60_000,
    )
    environ = {"SLACK_WEBHOOK_URL": slack.url + SLACK_HOOK}
    app = create_app(settings, clock, plan=plan(), environ=environ)
    async with running(app, "http://dispatcher") as client:
        yield client


async def publish(redis_url: str, *events: IncidentEvent) -> None:
    async with RedisBroker(redis_url) as broker:
        for event in events:
            await broker.publish(event, stream=INCIDENT_EVENTS)


async def log_of(redis: Redis) -> list[DeliveryRecorded]:
    """Every delivery record, in the order they were written."""
    return list(reversed(await DeliveryLog(redis).recent(limit=1000)))


async def records_until(
    redis: Redis, predicate: Callable[[list[DeliveryRecorded]], bool], what: str
) -> list[DeliveryRecorded]:
    async def probe() -> list[DeliveryRecorded] | None:
        records = await log_of(redis)
        return records if predicate(records) else None

    return await eventually(probe, within=20.0, what=what)


def with_status(
    records: list[DeliveryRecorded], channel: str, status: DeliveryStatus
) -> list[DeliveryRecorded]:
    return [r for r in records if r.channel == channel and r.status is status]


def to_slack(request: Received) -> bool:
    return request.path == SLACK_HOOK


async def test_a_held_slack_webhook_does_not_delay_email(
    dispatcher: httpx.AsyncClient,
    redis: Redis,
    redis_url: str,
    smtp_server: SmtpServer,
    slack: FakeProvider,
) -> None:
    release = threading.Event()
    slack.answer("POST", SLACK_HOOK, 200, body="ok", hold=release)  # Slack hangs

    first, *later = EVENTS

    await publish(redis_url, first)
    # Slack has the first event's post in hand and is not answering...
    await asyncio.to_thread(slack.wait_for_requests, 1, to_slack)
    # ...when the next events come in.
    await publish(redis_url, *later)

    emails = EMAILS_PER_EVENT * len(EVENTS)
    records = await records_until(
        redis,
        lambda rs: len(with_status(rs, "email", DeliveryStatus.SENT)) == emails,
        "every email of every event sent",
    )

    # Every email went while no Slack send had finished.
    assert not release.is_set()
    assert [r for r in records if r.channel == "slack"] == []
    assert len(smtp_server.mailbox.messages) == emails
    assert {r.event_id for r in with_status(records, "email", DeliveryStatus.SENT)} == {
        e.event_id for e in EVENTS
    }
    assert slack.requests_to("POST", SLACK_HOOK)

    release.set()
    records = await records_until(
        redis,
        lambda rs: len(with_status(rs, "slack", DeliveryStatus.SENT)) == len(EVENTS),
        "the Slack posts completing once Slack answers",
    )

    order = [r.channel for r in records]
    assert order == ["email"] * emails + ["slack"] * len(EVENTS), order
    assert len(slack.requests_to("POST", SLACK_HOOK)) == len(EVENTS)
    assert all(r.status is DeliveryStatus.SENT for r in records)


async def test_a_slack_429_does_not_hold_up_email(
    dispatcher: httpx.AsyncClient,
    redis: Redis,
    redis_url: str,
    smtp_server: SmtpServer,
    slack: FakeProvider,
    clock: ManualClock,
) -> None:
    slack.answer("POST", SLACK_HOOK, 429, body="rate_limited", headers={"Retry-After": "120"})
    first, *later = EVENTS

    await publish(redis_url, first)
    await records_until(
        redis,
        lambda rs: bool(with_status(rs, "slack", DeliveryStatus.RETRYING)),
        "Slack's 429 for the first event",
    )
    await publish(redis_url, *later)  # Slack asked for two minutes; email does not wait

    emails = EMAILS_PER_EVENT * len(EVENTS)
    records = await records_until(
        redis,
        lambda rs: (
            len(with_status(rs, "email", DeliveryStatus.SENT)) == emails
            and len(with_status(rs, "slack", DeliveryStatus.RETRYING)) == len(EVENTS)
        ),
        "every email sent and every Slack post waiting for its retry",
    )

    assert len(smtp_server.mailbox.messages) == emails
    first_429 = next(
        i for i, r in enumerate(records) if r.channel == "slack" and r.event_id == first.event_id
    )
    later_emails = [
        i
        for i, r in enumerate(records)
        if r.channel == "email" and r.event_id in {e.event_id for e in later}
    ]
    assert len(later_emails) == EMAILS_PER_EVENT * len(later)
    assert min(later_emails) > first_429  # emails went on after Slack said "wait"
    for retrying in with_status(records, "slack", DeliveryStatus.RETRYING):
        assert retrying.next_attempt_at is not None
        assert retrying.next_attempt_at >= clock.now() + timedelta(seconds=120)
    assert with_status(records, "slack", DeliveryStatus.SENT) == []
    assert len(slack.requests_to("POST", SLACK_HOOK)) == len(EVENTS)


async def test_a_slow_provider_gets_at_most_the_concurrency_while_more_jobs_are_taken_on(
    redis: Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    slack: FakeProvider,
    clock: ManualClock,
) -> None:
    events = [
        make_incident_updated(event_id=f"ev-{n}", occurred_at=T0 + timedelta(minutes=n))
        for n in range(5)
    ]
    settings = make_settings(
        rate_limits=(),
        consumer_name="dispatcher-concurrency",
        polling_interval_ms=1000,
        idempotency_lease_ms=60_000,
        reclaim_idle_ms=60_000,
        channel_concurrency=2,
        channel_jobs_in_flight=8,
    )
    team_only = make_plan(
        audiences={"team": {"slack": [{"name": "ops", "url_env": "SLACK_WEBHOOK_URL"}]}},
        routes=[{"name": "team", "audiences": ["team"]}],
    )
    release = threading.Event()
    slack.answer("POST", SLACK_HOOK, 200, body="ok", hold=release)
    environ = {"SLACK_WEBHOOK_URL": slack.url + SLACK_HOOK}
    app = create_app(settings, clock, plan=team_only, environ=environ)
    async with running(app, "http://dispatcher"):
        await publish(redis_url, *events)
        await asyncio.to_thread(slack.wait_for_requests, 2, to_slack)

        async def claimed() -> int:  # deliveries a worker holds (an owner on their state)
            keys = [key async for key in redis.scan_iter(delivery_state_key("*"))]
            owners = [await redis.hexists(key, "owner") for key in keys]
            return sum(owners) if sum(owners) == len(events) else 0

        await eventually(claimed, within=20.0, what="every Slack delivery claimed")
        # All five taken on, two of them at Slack, which holds them: the other three wait.
        assert len(slack.requests_to("POST", SLACK_HOOK)) == settings.channel_concurrency

        release.set()
        records = await records_until(
            redis,
            lambda rs: len(with_status(rs, "slack", DeliveryStatus.SENT)) == len(events),
            "every Slack post sent once Slack answers",
        )
    assert len(slack.requests_to("POST", SLACK_HOOK)) == len(events)
    assert all(r.status is DeliveryStatus.SENT for r in records)
