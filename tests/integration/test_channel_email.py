"""The SMTP email driver against a real aiosmtpd server: the message, threading,
List-Unsubscribe, STARTTLS, implicit TLS, AUTH, and how failures are classified."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.email import EmailChannel, build_email_channel
from services.dispatcher.channels.email_mailgun import MailgunChannel
from services.dispatcher.channels.email_sendgrid import SendGridChannel
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.fanout import Delivery, plan_deliveries
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import RenderContext
from services.dispatcher.unsubscribe import REDIS_KEY, unsubscribe_secret, verify_unsubscribe_token
from shared.clock import ManualClock
from shared.contracts import IncidentOpened, IncidentResolved, IncidentUpdated
from shared.plan import ChannelName, Plan
from shared.settings import Settings
from tests.support.builders import (
    make_delivery,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_updated,
)
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer, free_port

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SECRET = "unsubscribe-secret-for-tests"
PASSWORD = "smtp-password-for-tests"
FROM = "Example Status <status@example.com>"
MESSAGE = RenderedMessage(
    ChannelName.EMAIL,
    title="Investigating: Checkout is failing",
    text="We are investigating.\n",
    html="<p>We are investigating.</p>",
)
EMAIL_PATTERN = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def two_audience_plan(status_page_url: str | None = "https://status.example.com") -> Plan:
    """Customers (public) and on-call (internal) both hear everything by email."""
    extra: dict[str, Any] = {"status_page_url": status_page_url} if status_page_url else {}
    return make_plan(
        audiences={
            "customers": {"public": True, "email": ["alice@example.com"]},
            "oncall": {"public": False, "email": ["oncall@example.com"]},
        },
        routes=[{"name": "everyone", "audiences": ["customers", "oncall"]}],
        **extra,
    )


@pytest.fixture
async def http(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(make_settings()) as client:
        yield client


@pytest.fixture
def starttls_server() -> Iterator[SmtpServer]:
    server = SmtpServer(tls="starttls", credentials=("clarion", PASSWORD))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def implicit_tls_server() -> Iterator[SmtpServer]:
    server = SmtpServer(tls="implicit")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def channel_for(
    make_settings: Callable[..., Settings], redis: Redis, http: httpx.AsyncClient
) -> AsyncIterator[Callable[..., EmailChannel]]:
    built: list[EmailChannel] = []

    def factory(
        server: SmtpServer | None = None,
        plan: Plan | None = None,
        trust: SmtpServer | None = None,
        store: Redis | None = None,
        keep_sessions: int = 0,  # the test's server may stop before the channel closes
        **overrides: Any,
    ) -> EmailChannel:
        values: dict[str, Any] = {"email_from": FROM, "unsubscribe_secret": SECRET}
        if server is not None:
            values |= {"smtp_host": server.host, "smtp_port": server.port}
        settings = make_settings(**(values | overrides))
        ctx = DriverContext(
            settings=settings,
            plan=plan or two_audience_plan(),
            http=http,
            redis=store or redis,
            clock=ManualClock(NOW),
            environ={},
        )
        tls = trust.tls.client_context() if trust is not None and trust.tls else None
        channel = EmailChannel(ctx, tls_context=tls, keep_sessions=keep_sessions)
        built.append(channel)
        return channel

    yield factory
    for channel in built:  # close the SMTP sessions it kept
        await channel.aclose()


def assert_clean(outcome: Outcome, *secrets: str) -> None:
    """No address and no secret in what goes to the delivery log."""
    text = outcome.error if isinstance(outcome, Permanent | Retryable) else ""
    if isinstance(outcome, NotConfigured):
        text = outcome.reason
    assert not EMAIL_PATTERN.search(text), text
    for secret in (SECRET, PASSWORD, *secrets):
        assert secret not in text


# The message


async def test_the_email_arrives_multipart_with_its_headers(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    delivery = make_delivery(delivery_id="0123456789abcdef", incident_id="inc-9")

    outcome = await channel_for(smtp_server).send(MESSAGE, "alice@example.com", delivery)

    assert outcome == Sent("<0123456789abcdef@example.com>")
    [received] = smtp_server.mailbox.wait_for(lambda messages: len(messages) == 1)
    assert received["X-Envelope-To"] == "alice@example.com"
    assert received["From"] == FROM
    assert received["To"] == "alice@example.com"
    assert received["Subject"] == MESSAGE.subject
    assert received["Message-ID"] == "<0123456789abcdef@example.com>"
    assert received["Date"] == "Mon, 23 Nov 2026 14:30:00 +0000"
    assert received["Auto-Submitted"] == "auto-generated"
    assert received["X-Clarion-Incident"] == "inc-9"
    assert received["In-Reply-To"] == "<incident-inc-9@example.com>"
    assert received.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in received.iter_parts()] == ["text/plain", "text/html"]
    text = received.get_body(preferencelist=("plain",))
    html = received.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert text.get_content().strip() == "We are investigating."
    assert html.get_content().strip() == "<p>We are investigating.</p>"


async def test_a_resent_delivery_repeats_its_message_id(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    channel = channel_for(smtp_server)
    delivery = make_delivery(delivery_id="feedc0de")
    other = make_delivery(delivery_id="c0ffee", event_id="ev-2")

    first = await channel.send(MESSAGE, "alice@example.com", delivery)
    again = await channel.send(MESSAGE, "alice@example.com", delivery)
    different = await channel.send(MESSAGE, "alice@example.com", other)

    received = smtp_server.mailbox.wait_for(lambda messages: len(messages) == 3)
    ids = [m["Message-ID"] for m in received]
    assert ids == ["<feedc0de@example.com>", "<feedc0de@example.com>", "<c0ffee@example.com>"]
    assert first == again == Sent("<feedc0de@example.com>")
    assert different == Sent("<c0ffee@example.com>")


async def test_an_incidents_messages_thread_under_one_root(
    channel_for: Callable[..., EmailChannel],
    smtp_server: SmtpServer,
    make_settings: Callable[..., Settings],
) -> None:
    plan = two_audience_plan()
    channel = channel_for(smtp_server, plan=plan)
    renderer = Renderer(RenderContext.of(plan, make_settings()))
    other = make_incident(id="inc-2", key="group-2", title="Search is slow")
    events: list[IncidentOpened | IncidentUpdated | IncidentResolved] = [
        make_incident_opened(),
        make_incident_updated(),
        make_incident_resolved(),
        make_incident_opened(other, event_id="ev-opened-2"),
    ]
    sent: list[Delivery] = []
    for event in events:
        for delivery in plan_deliveries(event, event.incident, plan):
            rendered = renderer.render(event, event.incident, delivery.audience, delivery.channel)
            outcome = await channel.send(rendered, delivery.recipient, delivery)
            assert isinstance(outcome, Sent)
            sent.append(delivery)

    received = smtp_server.mailbox.wait_for(lambda messages: len(messages) == len(sent))
    assert len(sent) == 8  # 4 events x 2 audiences
    by_incident: dict[str, list[EmailMessage]] = {}
    for message in received:
        by_incident.setdefault(message["X-Clarion-Incident"], []).append(message)
    roots = {
        incident: {(m["In-Reply-To"], m["References"]) for m in messages}
        for incident, messages in by_incident.items()
    }
    assert roots == {
        "inc-1": {("<incident-inc-1@example.com>", "<incident-inc-1@example.com>")},
        "inc-2": {("<incident-inc-2@example.com>", "<incident-inc-2@example.com>")},
    }
    assert len(by_incident["inc-1"]) == 6
    assert len({m["Message-ID"] for m in received}) == 8  # every message its own id
    assert all(m["Message-ID"] not in m["References"] for m in received)


# List-Unsubscribe


async def test_subscribers_get_a_signed_one_click_unsubscribe_and_internal_mail_none(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    channel = channel_for(smtp_server)
    public = make_delivery(delivery_id="pub", recipient="alice@example.com", public=True)
    internal = make_delivery(
        delivery_id="int", recipient="oncall@example.com", audience="oncall", public=False
    )

    assert isinstance(await channel.send(MESSAGE, "alice@example.com", public), Sent)
    assert isinstance(await channel.send(MESSAGE, "oncall@example.com", internal), Sent)

    smtp_server.mailbox.wait_for(lambda messages: len(messages) == 2)
    [to_alice] = smtp_server.to("alice@example.com")
    [to_oncall] = smtp_server.to("oncall@example.com")
    header = to_alice["List-Unsubscribe"]
    assert header.startswith("<https://status.example.com/unsubscribe?token=")
    assert header.endswith(">")
    assert to_alice["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert to_alice["Precedence"] == "bulk"
    [token] = parse_qs(urlsplit(header[1:-1]).query)["token"]
    assert verify_unsubscribe_token(SECRET, token) == "alice@example.com"
    assert verify_unsubscribe_token(SECRET, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert verify_unsubscribe_token("some other secret", token) is None
    assert to_oncall["List-Unsubscribe"] is None
    assert to_oncall["List-Unsubscribe-Post"] is None
    assert to_oncall["Precedence"] is None


async def test_without_a_configured_secret_links_use_one_kept_in_redis(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer, redis: Redis
) -> None:
    """Zero setup: the built-in page on loopback (plain HTTP, so no one-click POST)."""
    channel = channel_for(
        smtp_server,
        plan=two_audience_plan(status_page_url=None),
        unsubscribe_secret=None,
        dispatcher_port=8001,
    )

    for delivery_id in ("first", "second"):
        delivery = make_delivery(delivery_id=delivery_id, public=True)
        assert isinstance(await channel.send(MESSAGE, "alice@example.com", delivery), Sent)

    first, second = smtp_server.mailbox.wait_for(lambda messages: len(messages) == 2)
    assert first["List-Unsubscribe"] == second["List-Unsubscribe"]
    url = urlsplit(first["List-Unsubscribe"][1:-1])
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:8001", "/status/unsubscribe")
    assert first["List-Unsubscribe-Post"] is None
    stored = await redis.get(REDIS_KEY)
    assert stored
    [token] = parse_qs(url.query)["token"]
    assert verify_unsubscribe_token(stored, token) == "alice@example.com"


async def test_the_secret_is_the_setting_else_one_every_process_shares_through_redis(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    configured = await unsubscribe_secret(make_settings(unsubscribe_secret=SECRET), redis)
    assert configured == SECRET.encode()
    assert await redis.get(REDIS_KEY) is None

    settings = make_settings(unsubscribe_secret=None)
    generated = await asyncio.gather(*(unsubscribe_secret(settings, redis) for _ in range(10)))

    assert len(set(generated)) == 1
    assert len(generated[0]) >= 32
    assert await redis.get(REDIS_KEY) == generated[0]


async def test_without_redis_subscriber_mail_waits_and_internal_mail_goes(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    """The generated secret lives in Redis: no Redis, no signed link, so try again later."""
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=5)
    try:
        channel = channel_for(smtp_server, store=unreachable, unsubscribe_secret=None)
        public = await channel.send(MESSAGE, "alice@example.com", make_delivery(public=True))
        internal = await channel.send(
            MESSAGE, "oncall@example.com", make_delivery(audience="oncall", public=False)
        )
    finally:
        await unreachable.aclose()

    assert isinstance(public, Retryable)
    assert "unsubscribe" in public.error
    assert isinstance(internal, Sent)
    [received] = smtp_server.mailbox.wait_for(lambda messages: len(messages) == 1)
    assert received["X-Envelope-To"] == "oncall@example.com"
    assert_clean(public)


# TLS and AUTH


async def test_starttls_and_auth_are_really_used(
    channel_for: Callable[..., EmailChannel], starttls_server: SmtpServer
) -> None:
    channel = channel_for(
        starttls_server,
        trust=starttls_server,
        smtp_starttls=True,
        smtp_username="clarion",
        smtp_password=PASSWORD,
    )

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Sent)
    starttls_server.mailbox.wait_for(lambda messages: len(messages) == 1)
    assert [(f.tls, f.starttls, f.login) for f in starttls_server.sessions] == [
        (True, True, "clarion")
    ]
    assert [(a.login, a.tls, a.accepted) for a in starttls_server.auth_attempts] == [
        ("clarion", True, True)
    ]


async def test_implicit_tls_is_really_used(
    channel_for: Callable[..., EmailChannel], implicit_tls_server: SmtpServer
) -> None:
    channel = channel_for(implicit_tls_server, trust=implicit_tls_server, smtp_tls=True)

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Sent)
    implicit_tls_server.mailbox.wait_for(lambda messages: len(messages) == 1)
    assert [(f.tls, f.starttls, f.login) for f in implicit_tls_server.sessions] == [
        (True, False, None)
    ]


async def test_a_kept_session_carries_the_next_message_without_a_new_login(
    channel_for: Callable[..., EmailChannel], starttls_server: SmtpServer
) -> None:
    channel = channel_for(
        starttls_server,
        trust=starttls_server,
        keep_sessions=2,
        smtp_starttls=True,
        smtp_username="clarion",
        smtp_password=PASSWORD,
    )

    first = await channel.send(MESSAGE, "alice@example.com", make_delivery())
    second = await channel.send(MESSAGE, "bob@example.com", make_delivery(delivery_id="d-2"))
    await channel.aclose()  # QUIT the kept session before the server stops

    assert isinstance(first, Sent)
    assert isinstance(second, Sent)
    starttls_server.mailbox.wait_for(lambda messages: len(messages) == 2)
    assert len({f.connection for f in starttls_server.sessions}) == 1
    assert all(f.starttls and f.login == "clarion" for f in starttls_server.sessions)
    assert len(starttls_server.auth_attempts) == 1


async def test_an_untrusted_certificate_stops_the_send_before_any_password(
    channel_for: Callable[..., EmailChannel], starttls_server: SmtpServer
) -> None:
    channel = channel_for(  # the system trust store does not know the test certificate
        starttls_server, smtp_starttls=True, smtp_username="clarion", smtp_password=PASSWORD
    )

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)
    assert "certificate" in outcome.error.lower()
    assert starttls_server.auth_attempts == []
    assert starttls_server.mailbox.messages == []
    assert_clean(outcome)


async def test_a_server_without_starttls_gets_nothing_when_starttls_is_required(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    channel = channel_for(smtp_server, smtp_starttls=True)

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Permanent)
    assert "STARTTLS" in outcome.error
    assert smtp_server.mailbox.messages == []


async def test_wrong_credentials_are_permanent_and_never_echoed(
    channel_for: Callable[..., EmailChannel], starttls_server: SmtpServer
) -> None:
    channel = channel_for(
        starttls_server,
        trust=starttls_server,
        smtp_starttls=True,
        smtp_username="clarion",
        smtp_password="not-the-password",
    )

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Permanent)
    assert "535" in outcome.error
    attempts = starttls_server.auth_attempts  # aiosmtplib tries each offered mechanism
    assert attempts
    assert {(a.login, a.tls, a.accepted) for a in attempts} == {("clarion", True, False)}
    assert starttls_server.mailbox.messages == []
    assert_clean(outcome, "not-the-password")


async def test_a_username_without_a_password_is_not_configured(
    channel_for: Callable[..., EmailChannel], starttls_server: SmtpServer
) -> None:
    channel = channel_for(starttls_server, smtp_starttls=True, smtp_username="clarion")

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, NotConfigured)
    assert "CLARION_SMTP_PASSWORD" in outcome.reason
    assert starttls_server.auth_attempts == []


async def test_tls_and_starttls_together_are_a_configuration_error(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    channel = channel_for(smtp_server, smtp_tls=True, smtp_starttls=True)

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Permanent)
    assert "CLARION_SMTP_TLS" in outcome.error
    assert smtp_server.mailbox.messages == []


# Failures


async def test_a_refused_recipient_is_permanent(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    smtp_server.bounce.add("alice@example.com")

    outcome = await channel_for(smtp_server).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Permanent)
    assert "550" in outcome.error
    assert smtp_server.mailbox.messages == []
    assert_clean(outcome)


async def test_a_deferred_recipient_is_retryable(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add("alice@example.com")

    outcome = await channel_for(smtp_server).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)
    assert "451" in outcome.error
    assert smtp_server.mailbox.messages == []
    assert_clean(outcome)


async def test_a_refused_connection_is_retryable(
    channel_for: Callable[..., EmailChannel],
) -> None:
    channel = channel_for(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=5)

    outcome = await channel.send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)
    assert_clean(outcome)


async def test_an_unusable_address_is_permanent_and_not_named(
    channel_for: Callable[..., EmailChannel], smtp_server: SmtpServer
) -> None:
    outcome = await channel_for(smtp_server).send(
        MESSAGE, "alice@example.com\r\nBcc: eve@example.com", make_delivery()
    )

    assert isinstance(outcome, Permanent)
    assert smtp_server.mailbox.messages == []
    assert_clean(outcome)


async def test_without_an_smtp_host_the_driver_is_not_configured(
    channel_for: Callable[..., EmailChannel], redis: Redis
) -> None:
    outcome = await channel_for(smtp_host=None).send(
        MESSAGE, "alice@example.com", make_delivery(public=True)
    )

    assert outcome == NotConfigured("no SMTP server configured (CLARION_SMTP_HOST)")
    assert await redis.keys("*") == []  # nothing queued, nothing generated


# Choosing the provider


@pytest.mark.parametrize(
    ("provider", "driver"),
    [("smtp", EmailChannel), ("sendgrid", SendGridChannel), ("mailgun", MailgunChannel)],
)
async def test_the_email_provider_setting_picks_the_driver(
    provider: str,
    driver: type,
    make_settings: Callable[..., Settings],
    redis: Redis,
    http: httpx.AsyncClient,
) -> None:
    ctx = DriverContext(
        settings=make_settings(email_provider=provider),
        plan=two_audience_plan(),
        http=http,
        redis=redis,
        clock=ManualClock(NOW),
        environ={},
    )

    channel = build_email_channel(ctx)

    assert isinstance(channel, driver)
    assert channel.idempotent is False
