"""One incident email, whichever way it leaves: its words, its headers, its MIME form.

Shared by the SMTP, SendGrid and Mailgun drivers so that the same delivery
carries the same headers on every provider:

- ``Message-ID`` is ``<delivery_id@sender-domain>``: a retry of a delivery
  repeats it, so a receiving system can tell a duplicate from a new message.
- ``In-Reply-To`` and ``References`` name one root per incident,
  ``<incident-<id>@sender-domain>``, so mail clients thread an incident's
  opened, update and resolved messages together. No message carries the root
  as its own Message-ID; clients thread on the shared reference regardless.
- ``Auto-Submitted: auto-generated`` (RFC 3834) and
  ``X-Auto-Response-Suppress: OOF, AutoReply`` (Exchange) keep vacation
  responders from answering; subscriber mail also says ``Precedence: bulk``.
  Internal mail does not: some filters file bulk mail away from on-call eyes.
- Subscriber mail (public audiences) carries ``List-Unsubscribe`` with a signed
  link (:mod:`services.dispatcher.unsubscribe`), and, when that link is HTTPS,
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 allows
  one-click only over HTTPS). Internal audiences get neither.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from typing import Final

from redis.exceptions import RedisError

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.outcome import Outcome, Permanent, Retryable
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.unsubscribe import (
    SecretUnavailable,
    unsubscribe_secret,
    unsubscribe_token,
    unsubscribe_url,
)

FALLBACK_DOMAIN: Final = "clarion.invalid"
ONE_CLICK: Final = "List-Unsubscribe=One-Click"
AUTO_RESPONSE_SUPPRESS: Final = "OOF, AutoReply"
_ID_SAFE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A plain address (dot-atom @ host name with a dot): valid without parsing it.
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


@lru_cache(maxsize=64)
def sender_domain(email_from: str) -> str:
    """The domain of the From address: where our Message-IDs and thread ids live."""
    _, at, domain = parseaddr(email_from)[1].rpartition("@")
    domain = domain.strip().lower()
    if not at or not domain or not _ID_SAFE.fullmatch(domain):
        return FALLBACK_DOMAIN
    return domain


def message_id_for(delivery: Delivery, email_from: str) -> str:
    """Deterministic: a retried send of the same delivery carries the same Message-ID."""
    return f"<{delivery.delivery_id}@{sender_domain(email_from)}>"


def thread_root_id(incident_id: str, email_from: str) -> str:
    """The one id every message about ``incident_id`` refers to, so clients thread them."""
    local = incident_id if _ID_SAFE.fullmatch(incident_id) else _digest(incident_id)
    return f"<incident-{local}@{sender_domain(email_from)}>"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class InvalidRecipient(ValueError):
    """The recipient is not an address mail can go to (the message never names it)."""


def check_recipient(recipient: str) -> str:
    """``recipient`` as a bare address; raises :class:`InvalidRecipient` when it is not one."""
    candidate = recipient.strip()
    if _PLAIN_ADDRESS.fullmatch(candidate):
        return candidate
    if not candidate or any(c in candidate for c in '\r\n<>,;"') or " " in candidate:
        raise InvalidRecipient("recipient is not a valid email address")
    try:
        address = Address(addr_spec=candidate)
    except (HeaderParseError, ValueError, IndexError):
        raise InvalidRecipient("recipient is not a valid email address") from None
    if not address.username or not address.domain or "." not in address.domain:
        raise InvalidRecipient("recipient is not a valid email address")
    return candidate


@dataclass(frozen=True)
class OutgoingEmail:
    """Everything every provider needs to send one incident email."""

    sender: str
    recipient: str
    subject: str
    text: str
    html: str | None
    message_id: str
    date: datetime
    headers: tuple[tuple[str, str], ...]
    """Message-ID and every header beyond From, To, Subject and Date, in order."""

    @property
    def header_map(self) -> dict[str, str]:
        """The extra headers as a mapping, for providers that take a JSON object or fields."""
        return dict(self.headers)

    @property
    def unsubscribe_url(self) -> str | None:
        value = self.header_map.get("List-Unsubscribe")
        return value[1:-1] if value else None

    def mime(self) -> EmailMessage:
        """The RFC 5322 message: multipart/alternative text + HTML (text alone without HTML)."""
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = self.recipient
        email["Subject"] = self.subject
        email["Date"] = format_datetime(self.date)
        for name, value in self.headers:
            email[name] = value
        email.set_content(self.text)
        if self.html is not None:
            email.add_alternative(self.html, subtype="html")
        return email


def compose(
    message: RenderedMessage,
    recipient: str,
    delivery: Delivery,
    *,
    email_from: str,
    now: datetime,
    unsubscribe_link: str | None = None,
) -> OutgoingEmail:
    """The email for one delivery. ``unsubscribe_link`` only matters for public audiences.

    Raises :class:`InvalidRecipient` when ``recipient`` is not a usable address.
    """
    to = check_recipient(recipient)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    message_id = message_id_for(delivery, email_from)
    root = thread_root_id(delivery.incident_id, email_from)
    headers: list[tuple[str, str]] = [
        ("Message-ID", message_id),
        ("In-Reply-To", root),
        ("References", root),
        ("Auto-Submitted", "auto-generated"),
        ("X-Auto-Response-Suppress", AUTO_RESPONSE_SUPPRESS),
    ]
    if delivery.public:
        headers.append(("Precedence", "bulk"))
    headers.append(("X-Clarion-Incident", _one_line(delivery.incident_id)))
    if delivery.public and unsubscribe_link:
        headers.append(("List-Unsubscribe", f"<{unsubscribe_link}>"))
        if unsubscribe_link.lower().startswith("https://"):
            headers.append(("List-Unsubscribe-Post", ONE_CLICK))
    return OutgoingEmail(
        sender=email_from,
        recipient=to,
        subject=_one_line(message.subject),
        text=message.text,
        html=message.html,
        message_id=message_id,
        date=now,
        headers=tuple(headers),
    )


class UnsubscribeLinks:
    """Signed one-click links under the page customers follow. The secret is read from
    Redis once per driver, not once per message: it never changes once created."""

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self._secret: bytes | None = None

    async def for_recipient(self, recipient: str) -> str:
        if self._secret is None:
            self._secret = await unsubscribe_secret(self._ctx.settings, self._ctx.redis)
        base = self._ctx.plan.follow_url(self._ctx.settings.local_status_url)
        return unsubscribe_url(base, unsubscribe_token(self._secret, recipient.strip()))


async def prepare(
    ctx: DriverContext,
    links: UnsubscribeLinks,
    message: RenderedMessage,
    recipient: str,
    delivery: Delivery,
) -> OutgoingEmail | Outcome:
    """The email for a driver to send, or the outcome that stops it before any sending."""
    try:
        check_recipient(recipient)
    except InvalidRecipient as exc:
        return Permanent(str(exc))
    link = None
    if delivery.public:
        try:
            link = await links.for_recipient(recipient)
        except (RedisError, SecretUnavailable) as exc:
            return Retryable(f"unsubscribe secret unavailable: {type(exc).__name__}")
    return compose(
        message,
        recipient,
        delivery,
        email_from=ctx.settings.email_from,
        now=ctx.clock.now(),
        unsubscribe_link=link,
    )
