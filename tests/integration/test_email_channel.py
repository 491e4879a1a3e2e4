"""The email channel against a real SMTP server, and the local outbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.email import EmailChannel
from services.dispatcher.channels.outbox import OutboxChannel
from services.dispatcher.channels.outcome import Permanent, Retryable, Sent
from services.dispatcher.outbox import read_outbox
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import ManualClock
from shared.plan import ChannelName
from shared.settings import Settings
from tests.support.builders import make_delivery
from tests.support.smtp import SmtpServer, free_port

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
MESSAGE = RenderedMessage(
    ChannelName.EMAIL,
    title="Investigating: Checkout is failing",
    text="We are investigating.",
    html="<p>We are investigating.</p>",
)


def channel_for(settings: Settings, redis: Redis) -> EmailChannel:
    return EmailChannel(settings, redis, ManualClock(NOW))


async def test_email_arrives_multipart_with_message_id(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    settings = make_settings(
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        email_from="Example Status <status@example.com>",
    )

    delivery = make_delivery(delivery_id="0123456789abcdef")

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", delivery)

    assert outcome == Sent("<0123456789abcdef@example.com>")
    [received] = smtp_server.mailbox.wait_for(lambda messages: len(messages) == 1)
    assert received["Message-ID"] == "<0123456789abcdef@example.com>"
    assert received["Subject"] == MESSAGE.subject
    assert received["X-Envelope-To"] == "alice@example.com"
    assert received["Date"] is not None
    assert received.get_content_type() == "multipart/alternative"
    body = received.get_body(preferencelist=("plain",))
    html = received.get_body(preferencelist=("html",))
    assert body is not None
    assert html is not None
    assert body.get_content().strip() == "We are investigating."
    assert html.get_content().strip() == "<p>We are investigating.</p>"
    assert await read_outbox(redis) == []


async def test_without_smtp_email_lands_in_the_outbox(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(smtp_host=None)
    channel = channel_for(settings, redis)

    first = await channel.send(
        MESSAGE, "alice@example.com", make_delivery(recipient="alice@example.com")
    )
    later = RenderedMessage(
        ChannelName.EMAIL, title="Resolved: Checkout is failing", text="Fixed.", html=None
    )
    await channel.send(later, "bob@example.com", make_delivery(recipient="bob@example.com"))

    assert isinstance(first, Sent)
    newest, oldest = await read_outbox(redis)
    assert newest.subject == "Resolved: Checkout is failing"
    assert newest.to == "bob@example.com"
    assert oldest.to == "alice@example.com"
    assert oldest.text == "We are investigating."
    assert oldest.message_id == first.provider_id
    assert oldest.incident_id == "inc-1"
    assert oldest.queued_at == NOW
    assert oldest.channel == "email"
    assert "CLARION_SMTP_HOST" in oldest.reason
    assert [e.to for e in await read_outbox(redis, limit=1)] == ["bob@example.com"]


async def test_smtp_5xx_is_permanent(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.bounce.add("alice@example.com")
    settings = make_settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Permanent)
    assert "550" in outcome.error
    assert smtp_server.mailbox.messages == []


async def test_smtp_4xx_is_retryable(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add("alice@example.com")
    settings = make_settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)
    assert "451" in outcome.error
    assert smtp_server.mailbox.messages == []


async def test_unreachable_smtp_server_is_retryable(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=5)

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)


async def test_a_channel_without_a_driver_keeps_its_message_in_the_outbox(redis: Redis) -> None:
    channel = OutboxChannel(redis, ManualClock(NOW), "no sms driver configured")
    sms = RenderedMessage(ChannelName.SMS, title="Investigating", text="Checkout is failing.")
    slack = RenderedMessage(
        ChannelName.SLACK, title="Investigating", text="Checkout.", payload={"blocks": []}
    )

    outcome = await channel.send(
        sms, "+14155550100", make_delivery(channel=ChannelName.SMS, recipient="+14155550100")
    )
    await channel.send(slack, "#incidents", make_delivery(channel=ChannelName.SLACK))

    assert isinstance(outcome, Sent)
    assert outcome.provider_id is not None
    assert outcome.provider_id.startswith("outbox:")
    [queued] = await read_outbox(redis, channel="sms")
    assert queued.to == "+14155550100"
    assert queued.text == "Checkout is failing."
    assert queued.subject == "Investigating"
    assert queued.reason == "no sms driver configured"
    assert queued.payload is None
    [posted] = await read_outbox(redis, channel="slack")
    assert posted.payload == {"blocks": []}
    assert [m.channel for m in await read_outbox(redis)] == ["slack", "sms"]
    assert await read_outbox(redis, channel="email") == []


async def test_the_outbox_filter_reaches_past_other_channels(redis: Redis) -> None:
    channel = OutboxChannel(redis, ManualClock(NOW), "no driver")
    message = RenderedMessage(ChannelName.SMS, title="t", text="old sms")
    await channel.send(message, "+14155550100", make_delivery(channel=ChannelName.SMS))
    for n in range(100):
        chat = RenderedMessage(ChannelName.DISCORD, title="t", text=f"chat {n}")
        await channel.send(chat, "ops", make_delivery(channel=ChannelName.DISCORD))

    [sms] = await read_outbox(redis, limit=5, channel="sms")

    assert sms.text == "old sms"
    assert len(await read_outbox(redis, limit=5, channel="discord")) == 5
