"""The email that asks a new subscriber to confirm: plain words, one link, no tracking.

It says who asked (someone, on the status page, for this address), what they
asked for, where the confirm link is, and that ignoring the email does nothing.
With ``CLARION_SMTP_HOST`` set it goes out over SMTP with the same settings as
incident mail (:mod:`.channels.email`); without, it is kept in the local outbox,
so ``clarion outbox --channel email`` shows it, link included.

Its Message-ID is random (one per request) on the sender's domain, as incident
mail's are, and it says ``Auto-Submitted: auto-generated`` so that vacation
responders stay quiet. It carries no List-Unsubscribe: there is no list yet.
"""

from __future__ import annotations

import contextlib
import secrets
import ssl
from datetime import UTC
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiosmtplib
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.dispatcher.channels.email_message import (
    AUTO_RESPONSE_SUPPRESS,
    OutgoingEmail,
    sender_domain,
)
from services.dispatcher.channels.smtp_sessions import smtp_client
from services.dispatcher.outbox import OutboxMessage, queue_message
from services.dispatcher.page_engine import PAGES
from services.dispatcher.subscriptions import PENDING_FOR, PendingSubscription, SubscriptionStore
from shared.clock import Clock
from shared.logs import get_logger
from shared.redaction import redact_text
from shared.settings import Settings

CONFIRM_PATH: Final = "/subscribe/confirm"
"""Under the page customers follow (the plan's, else the built-in ``/status``)."""
OUTBOX_REASON: Final = "no SMTP server configured (CLARION_SMTP_HOST): subscription confirmation"
OUTBOX_INCIDENT: Final = "-"
"""The outbox names an incident for every message; a confirmation belongs to none."""
HTML_TEMPLATE: Final = "page/subscribe_mail.html.j2"

log = get_logger("clarion.dispatcher.subscriptions")


class MailNotSent(Exception):
    """The confirmation could not be handed to the SMTP server or the outbox."""


def confirm_url(follow_url: str, token: str) -> str:
    """``{follow_url}/subscribe/confirm?token=...``, keeping any query ``follow_url`` has."""
    parts = urlsplit(follow_url)
    path = parts.path.rstrip("/") + CONFIRM_PATH
    query = urlencode({"token": token})
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def scope_words(components: tuple[str, ...]) -> str:
    """What the subscriber will hear about, in a phrase."""
    if not components:
        return "every incident"
    if len(components) == 1:
        return f"incidents affecting {components[0]}"
    return f"incidents affecting {', '.join(components[:-1])} or {components[-1]}"


def compose_confirmation(
    pending: PendingSubscription,
    link: str,
    *,
    organization: str,
    status_url: str,
    email_from: str,
) -> OutgoingEmail:
    """The confirmation email for ``pending``, whose confirm link is ``link``. Pure."""
    scope = scope_words(pending.components)
    hours = int(PENDING_FOR.total_seconds() // 3600)
    date = pending.requested_at.astimezone(UTC)
    asked = date.strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            "Hello,",
            "",
            f"Someone, hopefully you, asked on the {organization} status page ({status_url})",
            f"at {asked} for email updates about {scope}, sent to {pending.address}.",
            "",
            "To start getting them, open this link and press Confirm:",
            "",
            link,
            "",
            "If you did not ask for this, ignore this email: nothing happens, nobody is",
            f"subscribed, and the link stops working in {hours} hours.",
            "",
            "Every update email has a link to unsubscribe in one click.",
            "",
            f"{organization}",
        ]
    )
    html = PAGES.render(
        HTML_TEMPLATE,
        {
            "organization": organization,
            "status_url": status_url,
            "asked": asked,
            "scope": scope,
            "address": pending.address,
            "link": link,
            "hours": hours,
        },
    )
    message_id = f"<subscribe-{secrets.token_hex(16)}@{sender_domain(email_from)}>"
    return OutgoingEmail(
        sender=email_from,
        recipient=pending.address,
        subject=f"Confirm your {organization} status updates",
        text=text + "\n",
        html=html,
        message_id=message_id,
        date=date,
        headers=(
            ("Message-ID", message_id),
            ("Auto-Submitted", "auto-generated"),
            ("X-Auto-Response-Suppress", AUTO_RESPONSE_SUPPRESS),
        ),
    )


class ConfirmationMailer:
    """Sends confirmations over SMTP when configured, else keeps them in the local outbox.

    ``tls_context`` overrides the system trust store (a private CA, or tests)."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        clock: Clock,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._clock = clock
        self._tls_context = tls_context

    async def send(self, mail: OutgoingEmail) -> str:
        """Hand ``mail`` on; returns ``smtp`` or ``outbox:<entry id>``. Raises MailNotSent."""
        if not self._settings.smtp_host:
            return await self._keep(mail)
        await self._send_smtp(mail)
        return "smtp"

    async def _send_smtp(self, mail: OutgoingEmail) -> None:
        settings = self._settings
        if settings.smtp_tls and settings.smtp_starttls:
            raise MailNotSent("CLARION_SMTP_TLS and CLARION_SMTP_STARTTLS exclude each other")
        username = settings.smtp_username or None
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        if username and not password:
            raise MailNotSent("CLARION_SMTP_USERNAME is set but CLARION_SMTP_PASSWORD is not")
        try:
            async with smtp_client(settings, self._tls_context) as client:
                await client.send_message(mail.mime(), recipients=[mail.recipient])
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            text = redact_text(f"{type(exc).__name__}: {exc}")
            if password:
                text = text.replace(password, "[REDACTED]")
            raise MailNotSent(text) from exc

    async def _keep(self, mail: OutgoingEmail) -> str:
        message = OutboxMessage(
            channel="email",
            to=mail.recipient,
            subject=mail.subject,
            text=mail.text,
            message_id=mail.message_id,
            queued_at=self._clock.now(),
            incident_id=OUTBOX_INCIDENT,
            reason=OUTBOX_REASON,
        )
        try:
            entry_id = await queue_message(self._redis, message)
        except (RedisError, OSError) as exc:
            raise MailNotSent(f"outbox unavailable: {type(exc).__name__}") from exc
        return f"outbox:{entry_id}"


async def ask_to_confirm(
    store: SubscriptionStore,
    mailer: ConfirmationMailer,
    address: str,
    components: tuple[str, ...],
    *,
    organization: str,
    follow_url: str,
    email_from: str,
) -> bool:
    """Keep a pending subscription for ``address`` and mail it the confirm link, unless a
    confirmation went there less than :data:`MAIL_EVERY` ago. True when a mail went out.

    Never raises: whoever asked sees the same page whatever happens here, so that page
    tells nobody whether an address is subscribed, throttled, or unreachable.
    """
    try:
        if not await store.claim_confirmation_mail(address):
            log.info("subscription.confirmation_throttled")
            return False
        token, pending = await store.request(address, components)
    except RedisError as exc:
        log.warning("subscription.request_failed", error=type(exc).__name__)
        return False
    mail = compose_confirmation(
        pending,
        confirm_url(follow_url, token),
        organization=organization,
        status_url=follow_url,
        email_from=email_from,
    )
    try:
        where = await mailer.send(mail)
    except MailNotSent as exc:
        log.warning("subscription.confirmation_not_sent", error=str(exc))
        with contextlib.suppress(RedisError):
            await store.release_confirmation_mail(address)  # asking again may work
        return False
    log.info("subscription.confirmation_sent", via=where.partition(":")[0])
    return True
