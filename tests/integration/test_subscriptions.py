"""Email subscriptions against real Valkey and a real SMTP server: the store (double opt-in,
single-use expiring tokens, throttling, unsubscribing), the confirmation email, and
subscribers in the real dispatcher pipeline, at ten thousand subscribers too."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, Protocol

import pytest
from redis.asyncio import Connection, Redis

from services.dispatcher.fanout import delivery_id_for, idempotency_key
from services.dispatcher.outbox import read_outbox
from services.dispatcher.subscription_mail import (
    OUTBOX_REASON,
    ConfirmationMailer,
    ask_to_confirm,
)
from services.dispatcher.subscriptions import (
    CONFIRMED_KEY,
    MAIL_EVERY,
    PENDING_FOR,
    UNSUBSCRIBED_KEY,
    SubscriptionStore,
)
from services.dispatcher.unsubscribe import verify_unsubscribe_token
from shared.clock import ManualClock
from shared.contracts import ApprovalGranted, DeliveryStatus, Severity
from shared.plan import Plan
from shared.redis_values import as_text
from shared.settings import Settings
from shared.streams import delivery_stream
from tests.support.builders import T0, make_incident, make_incident_opened
from tests.support.dispatching import Pipeline, build_pipeline
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer, free_port

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"  # listed in the plan for customers
ENGINEER = "oncall@example.com"  # listed in the plan for engineering (internal)
SUB = "sub@example.org"
SECRET = "unsubscribe-secret-for-tests"
FOLLOW = "https://status.example.com"
COMPONENTS = [
    {"name": "Website", "services": ["web"]},
    {"name": "Checkout", "services": ["checkout-api"]},
    {"name": "API", "services": ["api"]},
]
AUDIENCES: dict[str, Any] = {
    "customers": {"public": True, "subscribers": True, "email": [ALICE], "status_page": True},
    "engineering": {"email": [ENGINEER]},
}
PLAN = make_plan(
    audiences=AUDIENCES,
    routes=[{"audiences": ["customers", "engineering"]}],
    components=COMPONENTS,
    status_page_url=FOLLOW,
)


def opened(event_id: str, **incident: Any) -> Any:
    return make_incident_opened(make_incident(**incident), event_id=event_id, occurred_at=T0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def store(redis: Redis, clock: ManualClock) -> SubscriptionStore:
    return SubscriptionStore(redis, clock)


async def subscribe(store: SubscriptionStore, address: str, *components: str) -> None:
    token, _ = await store.request(address, components)
    assert await store.confirm(token) is not None


# The store: double opt-in


async def test_a_request_subscribes_nobody_until_its_token_confirms_it(
    store: SubscriptionStore, clock: ManualClock
) -> None:
    token, pending = await store.request("Sub@Example.ORG", ("Checkout",))

    assert pending.address == "Sub@example.org"
    assert pending.expires_at == T0 + PENDING_FOR
    assert await store.count() == 0
    assert (await store.pending(token)) == pending  # looking does not use it up
    clock.advance(timedelta(minutes=3))
    confirmed = await store.confirm(token)

    assert confirmed is not None
    assert confirmed.address == "Sub@example.org"
    assert confirmed.subscription.components == ("Checkout",)
    assert confirmed.subscription.subscribed_at == T0 + timedelta(minutes=3)
    assert [s.address for s in await store.subscribers()] == ["Sub@example.org"]


async def test_a_token_confirms_once(store: SubscriptionStore) -> None:
    token, _ = await store.request(SUB)

    assert await store.confirm(token) is not None
    assert await store.confirm(token) is None
    assert await store.pending(token) is None


async def test_a_token_expires_after_48_hours(
    store: SubscriptionStore, redis: Redis, clock: ManualClock
) -> None:
    token, _ = await store.request(SUB)
    digest = hashlib.sha256(token.encode()).hexdigest()
    ttl = await redis.ttl(f"clarion:subscriptions:pending:{digest}")
    assert PENDING_FOR - timedelta(minutes=1) < timedelta(seconds=ttl) <= PENDING_FOR

    clock.advance(PENDING_FOR - timedelta(seconds=1))
    assert await store.pending(token) is not None
    clock.advance(timedelta(seconds=1))

    assert await store.pending(token) is None
    assert await store.confirm(token) is None
    assert await store.count() == 0


async def test_forged_and_malformed_tokens_confirm_nothing(store: SubscriptionStore) -> None:
    token, _ = await store.request(SUB)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")

    for attempt in (forged, "", "x" * 43, token + "x", token[:-1], "../" + token[3:]):
        assert await store.confirm(attempt) is None
    assert await store.count() == 0
    assert await store.confirm(token) is not None


async def test_redis_holds_a_hash_of_the_token_never_the_token(
    store: SubscriptionStore, redis: Redis
) -> None:
    token, _ = await store.request(SUB)

    keys = [as_text(key) for key in await redis.keys("clarion:subscriptions:*")]
    values = [as_text(await redis.get(key)) for key in keys]

    assert keys
    assert all(token not in key for key in keys)
    assert all(token not in value for value in values)
    assert any(hashlib.sha256(token.encode()).hexdigest() in key for key in keys)


async def test_confirming_again_changes_the_components(store: SubscriptionStore) -> None:
    await subscribe(store, SUB, "Checkout")
    await subscribe(store, "sub@EXAMPLE.org")  # the same mailbox (domain case), now everything

    subscription = await store.subscription(SUB)
    assert subscription is not None
    assert subscription.components == ()
    assert await store.count() == 1


# Unsubscribing


async def test_unsubscribing_removes_the_subscriber_and_remembers_the_address(
    store: SubscriptionStore, redis: Redis
) -> None:
    await subscribe(store, SUB)

    await store.unsubscribe(" sub@EXAMPLE.org ")

    assert await store.count() == 0
    assert await store.unsubscribed_among([SUB, ALICE, "SUB@Example.org"]) == {SUB}
    members = await redis.smembers(UNSUBSCRIBED_KEY)
    assert all(b"@" not in member for member in members)  # digests, not addresses


async def test_subscribing_again_and_confirming_lifts_the_suppression(
    store: SubscriptionStore,
) -> None:
    await store.unsubscribe(ALICE)  # a plan-listed address clicked List-Unsubscribe
    token, _ = await store.request(ALICE)
    assert await store.unsubscribed_among([ALICE]) == {ALICE}  # asking is not enough

    await store.confirm(token)

    assert await store.unsubscribed_among([ALICE]) == frozenset()
    assert await store.subscription(ALICE) is not None


# Which subscribers hear an incident


async def test_subscribers_hear_of_the_components_they_chose(store: SubscriptionStore) -> None:
    await subscribe(store, "all@example.com")
    await subscribe(store, "checkout@example.com", "Checkout")
    await subscribe(store, "web-api@example.com", "Website", "API")
    known = ["Website", "Checkout", "API"]

    assert await store.recipients_for(("Checkout",), known) == [
        "all@example.com",
        "checkout@example.com",
    ]
    assert await store.recipients_for(("API",), known) == [
        "all@example.com",
        "web-api@example.com",
    ]
    assert len(await store.recipients_for((), known)) == 3


async def test_an_unreadable_entry_is_skipped_not_fatal(
    store: SubscriptionStore, redis: Redis
) -> None:
    await subscribe(store, SUB)
    await redis.hset(CONFIRMED_KEY, "broken@example.com", "{not json")

    assert [s.address for s in await store.subscribers()] == [SUB]


# Throttling the confirmation mail


async def test_one_confirmation_mail_per_address_per_ten_minutes(
    store: SubscriptionStore, clock: ManualClock
) -> None:
    assert await store.claim_confirmation_mail(SUB)
    assert not await store.claim_confirmation_mail("sub@Example.ORG")  # same mailbox
    assert await store.claim_confirmation_mail("other@example.org")
    clock.advance(MAIL_EVERY - timedelta(seconds=1))
    assert not await store.claim_confirmation_mail(SUB)
    clock.advance(timedelta(seconds=1))

    assert await store.claim_confirmation_mail(SUB)


# The confirmation email


class Ask(Protocol):
    async def __call__(self, address: str, *components: str) -> bool: ...


@pytest.fixture
def ask(
    redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock
) -> Callable[..., Ask]:
    def factory(smtp: SmtpServer | None = None, **overrides: Any) -> Ask:
        values: dict[str, Any] = {"email_from": "Example Status <status@example.com>"}
        if smtp is not None:
            values |= {"smtp_host": smtp.host, "smtp_port": smtp.port}
        settings = make_settings(**(values | overrides))
        store = SubscriptionStore(redis, clock)
        mailer = ConfirmationMailer(settings, redis, clock)

        async def run(address: str, *components: str) -> bool:
            return await ask_to_confirm(
                store,
                mailer,
                address,
                components,
                organization="Example",
                follow_url=FOLLOW,
                email_from=settings.email_from,
            )

        return run

    return factory


def token_in(text: str) -> str:
    marker = f"{FOLLOW}/subscribe/confirm?token="
    start = text.index(marker) + len(marker)
    return text[start : start + 43]


async def test_the_confirmation_goes_out_over_smtp_with_a_working_link(
    ask: Callable[..., Ask], smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    assert await ask(smtp_server)(SUB, "API")

    [mail] = smtp_server.mailbox.wait_for(lambda messages: len(messages) == 1)
    assert mail["X-Envelope-To"] == SUB
    assert mail["Subject"] == "Confirm your Example status updates"
    body = mail.get_body(("plain",))
    assert body is not None
    token = token_in(body.get_content())
    assert await store.count() == 0
    confirmed = await store.confirm(token)
    assert confirmed is not None
    assert confirmed.subscription.components == ("API",)


async def test_asking_again_within_ten_minutes_sends_no_second_mail(
    ask: Callable[..., Ask], smtp_server: SmtpServer, clock: ManualClock
) -> None:
    asking = ask(smtp_server)
    assert await asking(SUB)

    assert not await asking(SUB)
    assert not await asking(" sub@Example.org")
    clock.advance(MAIL_EVERY)
    assert await asking(SUB)
    smtp_server.mailbox.wait_for(lambda messages: len(messages) == 2)
    assert len(smtp_server.to(SUB)) == 2


async def test_without_smtp_the_confirmation_waits_in_the_outbox(
    ask: Callable[..., Ask], redis: Redis, store: SubscriptionStore
) -> None:
    assert await ask()(SUB)

    [kept] = await read_outbox(redis, channel="email")
    assert kept.to == SUB
    assert kept.reason == OUTBOX_REASON
    assert "Confirm" in kept.subject
    assert await store.confirm(token_in(kept.text)) is not None


async def test_an_smtp_failure_lets_the_next_request_try_at_once(
    ask: Callable[..., Ask], make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    nobody_listens = {"smtp_host": "127.0.0.1", "smtp_port": free_port()}  # refused
    assert not await ask(None, smtp_timeout_seconds=2.0, **nobody_listens)(SUB)

    assert await ask(smtp_server)(SUB)  # not throttled by the mail that never left
    smtp_server.mailbox.wait_for(lambda messages: len(messages) == 1)


async def test_an_smtp_server_that_refuses_the_address_sends_nothing(
    ask: Callable[..., Ask], smtp_server: SmtpServer
) -> None:
    smtp_server.bounce.add(SUB)

    assert not await ask(smtp_server)(SUB)
    assert smtp_server.to(SUB) == []


# Subscribers in the dispatcher pipeline


class MakePipeline(Protocol):
    def __call__(
        self, plan: Plan = ..., smtp: SmtpServer | None = ..., *, redis: Redis | None = ...
    ) -> Pipeline: ...


@pytest.fixture
async def make_pipeline(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[MakePipeline]:
    built: list[Pipeline] = []

    def factory(
        plan: Plan = PLAN, smtp: SmtpServer | None = None, *, redis: Redis | None = redis
    ) -> Pipeline:
        settings = make_settings(
            smtp_host=smtp.host if smtp else None,
            smtp_port=smtp.port if smtp else free_port(),
            consumer_name="dispatcher-test",
            rate_limits=(),
            unsubscribe_secret=SECRET,
        )
        assert redis is not None
        pipeline = build_pipeline(redis, settings, plan, ManualClock(T0))
        built.append(pipeline)
        return pipeline

    yield factory
    for pipeline in built:
        await pipeline.aclose()


def email_to(address: str, event_id: str = "ev-1") -> str:
    """The delivery id of ``event_id``'s email to ``address`` (the log masks addresses)."""
    return delivery_id_for(idempotency_key(event_id, "email", address))


async def test_a_confirmed_subscriber_gets_the_incident_email_with_a_way_out(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await subscribe(store, SUB)
    await store.request("pending@example.org")  # never confirmed

    await make_pipeline(smtp=smtp_server).handle(opened("ev-1"))

    [mail] = smtp_server.to(SUB)
    assert mail["Precedence"] == "bulk"
    link = mail["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{FOLLOW}/unsubscribe?token=")
    assert verify_unsubscribe_token(SECRET, link.partition("token=")[2]) == SUB
    assert smtp_server.to("pending@example.org") == []
    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(ENGINEER)) == 1


async def test_an_address_both_listed_and_subscribed_hears_once(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await subscribe(store, "alice@EXAMPLE.com")  # the plan lists alice@example.com
    await subscribe(store, ENGINEER)  # listed for engineering, after customers in the route

    pipeline = make_pipeline(smtp=smtp_server)
    await pipeline.handle(opened("ev-1"))

    assert len(smtp_server.to(ALICE)) == 1
    assert smtp_server.to("alice@EXAMPLE.com") == []
    assert len(smtp_server.to(ENGINEER)) == 1
    sent = [r for r in await pipeline.log() if r.status is DeliveryStatus.SENT]
    assert len(sent) == len({(r.channel, r.recipient) for r in sent})


async def test_subscribers_hear_only_of_the_components_they_chose(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await subscribe(store, "checkout@example.org", "Checkout")
    await subscribe(store, "api@example.org", "API")
    await subscribe(store, "all@example.org")
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(opened("ev-checkout", id="inc-c", service="checkout-api"))
    await pipeline.handle(opened("ev-named", id="inc-n", components=("api",)))
    await pipeline.handle(opened("ev-none", id="inc-x", service="batch-jobs"))

    def incidents_of(address: str) -> list[str]:
        return sorted(m["X-Clarion-Incident"] for m in smtp_server.to(address))

    assert incidents_of("checkout@example.org") == ["inc-c", "inc-x"]
    assert incidents_of("api@example.org") == ["inc-n", "inc-x"]
    assert incidents_of("all@example.org") == ["inc-c", "inc-n", "inc-x"]


async def test_an_unsubscribed_subscriber_hears_no_more(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await subscribe(store, SUB)
    pipeline = make_pipeline(smtp=smtp_server)
    await pipeline.handle(opened("ev-1"))
    assert len(smtp_server.to(SUB)) == 1

    await store.unsubscribe(SUB)
    await pipeline.handle(opened("ev-2", id="inc-2"))

    assert len(smtp_server.to(SUB)) == 1
    assert email_to(SUB, "ev-2") not in {r.delivery_id for r in await pipeline.log()}


async def test_unsubscribing_after_the_mail_was_queued_still_stops_it(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await subscribe(store, SUB)
    pipeline = make_pipeline(smtp=smtp_server)
    await pipeline.handle(opened("ev-1"), drain=False)  # queued, not sent yet

    await store.unsubscribe(SUB)
    await pipeline.drain()

    assert smtp_server.to(SUB) == []
    assert len(smtp_server.to(ALICE)) == 1
    [record] = [r for r in await pipeline.log() if r.delivery_id == email_to(SUB)]
    assert record.status is DeliveryStatus.SUPPRESSED
    assert record.error == "recipient unsubscribed"


async def test_a_listed_public_address_that_unsubscribed_is_suppressed_internal_mail_is_not(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await store.unsubscribe(ALICE)
    await store.unsubscribe(ENGINEER)  # it once subscribed, then left: work mail still comes
    pipeline = make_pipeline(smtp=smtp_server)

    await pipeline.handle(opened("ev-1"))

    assert smtp_server.to(ALICE) == []
    assert len(smtp_server.to(ENGINEER)) == 1
    records = [r for r in await pipeline.log() if r.channel == "email"]
    [alice] = [r for r in records if r.status is DeliveryStatus.SUPPRESSED]
    assert alice.audience == "customers"
    assert alice.error == "recipient unsubscribed"


async def test_subscribers_wait_for_approval_with_the_rest_of_the_public_mail(
    make_pipeline: MakePipeline, smtp_server: SmtpServer, store: SubscriptionStore
) -> None:
    await subscribe(store, SUB)
    plan = make_plan(
        audiences=AUDIENCES,
        routes=[{"audiences": ["customers", "engineering"]}],
        components=COMPONENTS,
        status_page_url=FOLLOW,
        approval=[Severity.CRITICAL.sev],
    )
    pipeline = make_pipeline(plan, smtp_server)
    event = opened("ev-1")

    await pipeline.handle(event)
    assert smtp_server.to(SUB) == []
    assert len(smtp_server.to(ENGINEER)) == 1
    held = {r.delivery_id for r in await pipeline.log() if r.status is DeliveryStatus.HELD}
    assert email_to(SUB) in held

    grant = ApprovalGranted(
        event_id=event.event_id,
        incident_id=event.incident_id,
        granted_at=T0 + timedelta(minutes=1),
        by="ops",
    )
    await pipeline.approve(grant)
    assert len(smtp_server.to(SUB)) == 1


async def test_an_event_that_cannot_be_fanned_out_records_its_subscribers_dead(
    make_pipeline: MakePipeline, store: SubscriptionStore
) -> None:
    await subscribe(store, SUB)
    pipeline = make_pipeline()

    await pipeline.dispatcher.record_dead(opened("ev-1"), 5, "boom")

    dead = {r.delivery_id for r in await pipeline.log() if r.status is DeliveryStatus.DEAD}
    assert {email_to(SUB), email_to(ALICE), email_to(ENGINEER)} <= dead


# Ten thousand subscribers


def counting_redis(url: str) -> tuple[Redis, list[int]]:
    """A client that counts the requests it sends: a pipeline is one, a command is one."""
    sent = [0]

    class Counting(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent[0] += 1
            await super().send_packed_command(command, check_health)

    return Redis.from_url(url, connection_class=Counting), sent


async def test_ten_thousand_subscribers_fan_out_in_a_few_dozen_round_trips(
    make_pipeline: MakePipeline, store: SubscriptionStore, redis: Redis, redis_url: str
) -> None:
    many = 10_000
    await store.add_confirmed({f"reader{n:05d}@example.org": () for n in range(many)})
    await store.add_confirmed({"checkout-only@example.org": ("Checkout",)})
    counted, sent = counting_redis(redis_url)
    try:
        pipeline = make_pipeline(redis=counted)
        await counted.ping()
        before = sent[0]

        await pipeline.handle(opened("ev-big", service="api"), drain=False)

        round_trips = sent[0] - before
    finally:
        await counted.aclose()

    jobs = await redis.xlen(delivery_stream("email"))
    assert jobs == many + 2  # every subscriber, alice and on-call; not checkout-only
    assert round_trips < 100, f"{round_trips} round trips for {many} subscribers"
