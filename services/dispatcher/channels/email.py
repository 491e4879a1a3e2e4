"""Email: multipart text + HTML over SMTP, or the local outbox when no SMTP is set."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib
from redis.asyncio import Redis

from services.dispatcher.channels.outcome import Outcome, Permanent, Retryable, Sent
from services.dispatcher.fanout import Delivery
from services.dispatcher.outbox import OutboxMessage, queue_message
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import Clock
from shared.settings import Settings


def message_id_for(delivery: Delivery, email_from: str) -> str:
    """Deterministic: a retried send of the same delivery carries the same Message-ID."""
    _, at, domain = parseaddr(email_from)[1].rpartition("@")
    if not at or not domain:
        domain = "clarion.invalid"
    return f"<{delivery.delivery_id}@{domain}>"


def build_email(
    message: RenderedMessage, recipient: str, delivery: Delivery, settings: Settings, clock: Clock
) -> EmailMessage:
    email = EmailMessage()
    email["From"] = settings.email_from
    email["To"] = recipient
    email["Subject"] = message.subject
    email["Date"] = format_datetime(clock.now())
    email["Message-ID"] = message_id_for(delivery, settings.email_from)
    email["Auto-Submitted"] = "auto-generated"
    email["X-Clarion-Incident"] = delivery.incident_id
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


def classify_smtp_error(exc: Exception) -> Outcome:
    """4xx and connection trouble may pass later; 5xx will not."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
        if any(code >= 500 for code in codes):
            return Permanent(f"recipient refused: {_describe(exc)}")
        return Retryable(f"recipient deferred: {_describe(exc)}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code >= 500:
            return Permanent(f"SMTP {exc.code}: {exc.message}")
        return Retryable(f"SMTP {exc.code}: {exc.message}")
    if isinstance(exc, OSError | TimeoutError):  # includes connect/disconnect/timeout errors
        return Retryable(_describe(exc))
    return Permanent(_describe(exc))


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class EmailChannel:
    name = "email"

    def __init__(self, settings: Settings, redis: Redis, clock: Clock) -> None:
        self._settings = settings
        self._redis = redis
        self._clock = clock

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        settings = self._settings
        email = build_email(message, recipient, delivery, settings, self._clock)
        message_id = str(email["Message-ID"])
        if settings.smtp_host is None:
            outgoing = OutboxMessage(
                channel=delivery.channel,
                to=recipient,
                subject=message.subject,
                text=message.text,
                message_id=message_id,
                queued_at=self._clock.now(),
                incident_id=delivery.incident_id,
                reason="no SMTP server configured (CLARION_SMTP_HOST)",
            )
            await queue_message(self._redis, outgoing)
            return Sent(message_id)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            await aiosmtplib.send(
                email,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=password,
                use_tls=settings.smtp_tls,
                start_tls=settings.smtp_starttls,
                timeout=settings.smtp_timeout_seconds,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return classify_smtp_error(exc)
        return Sent(message_id)
