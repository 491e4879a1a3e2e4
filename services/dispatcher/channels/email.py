"""Email over SMTP (aiosmtplib; transactions pipelined where the server offers it):
STARTTLS or implicit TLS, AUTH, one attempt per send.

Without ``CLARION_SMTP_HOST`` the driver answers :class:`NotConfigured` and the
pipeline keeps the message in the local outbox. :func:`build_email_channel`
picks SMTP, SendGrid or Mailgun by ``CLARION_EMAIL_PROVIDER``; all three send
the same message (:mod:`.email_message`).

SMTP gives no idempotency: a crash after the server accepted DATA and before
the pipeline recorded it may send once more, with the same Message-ID.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Final

import aiosmtplib

from services.dispatcher.channels import Channel
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.email_flat import FlatEmails
from services.dispatcher.channels.email_mailgun import MailgunChannel
from services.dispatcher.channels.email_message import (
    OutgoingEmail,
    UnsubscribeLinks,
    message_id_for,
    prepare,
)
from services.dispatcher.channels.email_sendgrid import SendGridChannel
from services.dispatcher.channels.outcome import NotConfigured, Outcome, Permanent, Retryable, Sent
from services.dispatcher.channels.smtp_sessions import SmtpSessions, smtp_client
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.redaction import REDACTED, redact_text

__all__ = [
    "EmailChannel",
    "build_email_channel",
    "classify_smtp_error",
    "message_id_for",
]

NO_SMTP: Final = "no SMTP server configured (CLARION_SMTP_HOST)"


def build_email_channel(ctx: DriverContext) -> Channel:
    """The email driver ``CLARION_EMAIL_PROVIDER`` names: SMTP (the default), SendGrid, Mailgun."""
    provider = ctx.settings.email_provider
    if provider == "sendgrid":
        return SendGridChannel(ctx)
    if provider == "mailgun":
        return MailgunChannel(ctx)
    return EmailChannel(ctx)


def classify_smtp_error(exc: Exception, secrets: Iterable[str] = ()) -> Outcome:
    """4xx and connection trouble may pass later; 5xx will not.

    Server replies often quote the address ("<a@b.example>: user unknown"), so
    every text is redacted; ``secrets`` (the password) are blanked out too.
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
        replies = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        if any(code >= 500 for code in codes):
            return Permanent(_clean(f"recipient refused: {replies}", secrets))
        return Retryable(_clean(f"recipient deferred: {replies}", secrets))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = _clean(f"SMTP {exc.code}: {exc.message}", secrets)
        return Permanent(text) if exc.code >= 500 else Retryable(text)
    if isinstance(exc, OSError | TimeoutError):  # includes connect/disconnect/timeout errors
        return Retryable(_clean(_describe(exc), secrets))
    return Permanent(_clean(_describe(exc), secrets))


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clean(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return redact_text(text)


class EmailChannel:
    """SMTP. ``tls_context`` overrides the system trust store (a private CA, or tests)."""

    name = "email"
    idempotent = False

    def __init__(
        self,
        ctx: DriverContext,
        *,
        tls_context: ssl.SSLContext | None = None,
        keep_sessions: int | None = None,
    ) -> None:
        """``keep_sessions``: open sessions kept for reuse (default: the channel's concurrency)."""
        self._ctx = ctx
        self._links = UnsubscribeLinks(ctx)
        self._tls_context = tls_context
        keep = ctx.settings.channel_concurrency if keep_sessions is None else keep_sessions
        self._sessions = SmtpSessions(self._connect, keep=keep)
        self._flat = FlatEmails()

    async def aclose(self) -> None:
        await self._sessions.aclose()

    async def _connect(self) -> aiosmtplib.SMTP:
        session = smtp_client(self._ctx.settings, self._tls_context)
        try:
            await session.connect()  # and STARTTLS and AUTH, as configured
        except BaseException:
            session.close()
            raise
        return session

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        settings = self._ctx.settings
        if not settings.smtp_host:
            return NotConfigured(NO_SMTP)
        if settings.smtp_tls and settings.smtp_starttls:
            return Permanent("CLARION_SMTP_TLS and CLARION_SMTP_STARTTLS exclude each other")
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        username = settings.smtp_username or None
        if username and not password:
            return NotConfigured("CLARION_SMTP_USERNAME is set but CLARION_SMTP_PASSWORD is not")
        prepared = await prepare(self._ctx, self._links, message, recipient, delivery)
        if not isinstance(prepared, OutgoingEmail):
            return prepared
        flat = self._flat
        try:
            await self._sessions.send(
                flat.envelope_sender(prepared),
                [prepared.recipient],
                lambda utf8, cte_type: flat.flatten(prepared, utf8=utf8, cte_type=cte_type),
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            # ValueError: aiosmtplib refusing its settings (a newline in the host name, ...)
            return classify_smtp_error(exc, secrets=[password or ""])
        return Sent(prepared.message_id)
