"""The email channel against a real SMTP server, and the local outbox."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from services.dispatcher.channels.email import EmailChannel
from services.dispatcher.channels.outcome import Permanent, Retryable, Sent
from services.dispatcher.outbox import read_outbox
from services.dispatcher.plan import Delivery
from services.dispatcher.render import RenderedMessage
from shared.clock import ManualClock
from shared.settings import Settings
from tests.support.smtp import Mailbox, SmtpServer

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
MESSAGE = RenderedMessage(
    subject="Investigating: Checkout is failing",
    text="We are investigating.",
    html="<p>We are investigating.</p>",
)


class _ScriptedHandler:
    """Accepts mail, except for recipients it is told to bounce (5xx) or defer (4xx)."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.bounce: set[str] = set()
        self.defer: set[str] = set()

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.bounce:
            return "550 5.1.1 no such user here"
        if address in self.defer:
            return "451 4.3.0 mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.mailbox.add(message)
        return "250 2.0.0 OK"


class ScriptedSmtp:
    """A real SMTP server on loopback whose answers per recipient a test chooses."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.handler = _ScriptedHandler(self.mailbox)
        self.port = free_port()
        self._controller = Controller(self.handler, hostname=self.host, port=self.port)

    def __enter__(self) -> ScriptedSmtp:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mailbox.messages if m["X-Envelope-To"] == address]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def scripted_smtp() -> Iterator[ScriptedSmtp]:
    with ScriptedSmtp() as server:
        yield server


def make_delivery(recipient: str = "alice@example.com") -> Delivery:
    return Delivery(
        delivery_id="0123456789abcdef",
        idempotency_key=f"ev-1:email:{recipient}",
        event_id="ev-1",
        incident_id="inc-1",
        channel="email",
        recipient=recipient,
        occurred_at=NOW,
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

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

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

    first = await channel.send(MESSAGE, "alice@example.com", make_delivery("alice@example.com"))
    later = RenderedMessage(subject="Resolved: Checkout is failing", text="Fixed.", html=None)
    await channel.send(later, "bob@example.com", make_delivery("bob@example.com"))

    assert isinstance(first, Sent)
    newest, oldest = await read_outbox(redis)
    assert newest.subject == "Resolved: Checkout is failing"
    assert newest.to == "bob@example.com"
    assert oldest.to == "alice@example.com"
    assert oldest.text == "We are investigating."
    assert oldest.message_id == first.provider_id
    assert oldest.incident_id == "inc-1"
    assert oldest.queued_at == NOW
    assert [e.to for e in await read_outbox(redis, limit=1)] == ["bob@example.com"]


async def test_smtp_5xx_is_permanent(
    redis: Redis, make_settings: Callable[..., Settings], scripted_smtp: ScriptedSmtp
) -> None:
    scripted_smtp.handler.bounce.add("alice@example.com")
    settings = make_settings(smtp_host=scripted_smtp.host, smtp_port=scripted_smtp.port)

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Permanent)
    assert "550" in outcome.error
    assert scripted_smtp.mailbox.messages == []


async def test_smtp_4xx_is_retryable(
    redis: Redis, make_settings: Callable[..., Settings], scripted_smtp: ScriptedSmtp
) -> None:
    scripted_smtp.handler.defer.add("alice@example.com")
    settings = make_settings(smtp_host=scripted_smtp.host, smtp_port=scripted_smtp.port)

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)
    assert "451" in outcome.error
    assert scripted_smtp.mailbox.messages == []


async def test_unreachable_smtp_server_is_retryable(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=5)

    outcome = await channel_for(settings, redis).send(MESSAGE, "alice@example.com", make_delivery())

    assert isinstance(outcome, Retryable)
