"""Email through Mailgun's HTTP API (``POST /v3/<domain>/messages``, basic auth ``api:<key>``).

Form fields: ``from``, ``to``, ``subject``, ``text``, ``html``; every extra
header of :mod:`.email_message` as ``h:<Name>`` (our Message-ID, the incident
thread headers, List-Unsubscribe for subscribers); ``v:`` variables tie
Mailgun's events back to the delivery. Mailgun shows ``v:`` variables to the
recipient (``X-Mailgun-Variables``), so they carry opaque ids only.
Mailgun answers 200 with ``{"id": "<message-id>", "message": "Queued..."}``.

Mailgun takes no idempotency key, so the driver is not idempotent.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

import httpx

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.email_message import OutgoingEmail, UnsubscribeLinks, prepare
from services.dispatcher.channels.http_outcome import (
    RETRYABLE_STATUSES,
    describe,
    retry_after,
    transport_failure,
)
from services.dispatcher.channels.outcome import NotConfigured, Outcome, Permanent, Retryable, Sent
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.redaction import redact_text

PROVIDER: Final = "Mailgun"
NO_KEY: Final = "no Mailgun API key configured (CLARION_MAILGUN_API_KEY)"
NO_DOMAIN: Final = "no Mailgun sending domain configured (CLARION_MAILGUN_DOMAIN)"
TAG: Final = "incident"
_FIELD_NAMES: Final = {"Message-ID": "Message-Id"}  # as Mailgun's documentation spells it


def mailgun_form(email: OutgoingEmail, delivery: Delivery) -> dict[str, str]:
    """The form fields for one delivery."""
    form = {
        "from": email.sender,
        "to": email.recipient,
        "subject": email.subject,
        "text": email.text,
    }
    if email.html is not None:
        form["html"] = email.html
    for name, value in email.headers:
        form[f"h:{_FIELD_NAMES.get(name, name)}"] = value
    form["o:tag"] = TAG
    form["v:delivery_id"] = delivery.delivery_id
    form["v:incident_id"] = delivery.incident_id
    return form


def messages_url(api_url: str, domain: str) -> str:
    return f"{api_url.rstrip('/')}/v3/{quote(domain.strip(), safe='')}/messages"


def classify_mailgun(response: httpx.Response) -> Outcome:
    """200: sent (the body's ``id``). 408/429/5xx: retry. Other 4xx (400 bad field,
    401 bad key, 402 account, 404 unknown domain, 413 too large): permanent."""
    status = response.status_code
    if 200 <= status < 300:
        return Sent(_message_id(response))
    text = redact_text(describe(PROVIDER, response))
    if status in RETRYABLE_STATUSES:
        return Retryable(text, retry_after(response))
    return Permanent(text)


def _message_id(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


class MailgunChannel:
    name = "email"
    idempotent = False

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self._links = UnsubscribeLinks(ctx)

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        settings = self._ctx.settings
        key = settings.mailgun_api_key.get_secret_value() if settings.mailgun_api_key else ""
        if not key:
            return NotConfigured(NO_KEY)
        domain = (settings.mailgun_domain or "").strip()
        if not domain:
            return NotConfigured(NO_DOMAIN)
        prepared = await prepare(self._ctx, self._links, message, recipient, delivery)
        if not isinstance(prepared, OutgoingEmail):
            return prepared
        try:
            response = await self._ctx.http.post(
                messages_url(settings.mailgun_api_url, domain),
                data=mailgun_form(prepared, delivery),
                auth=("api", key),
            )
        except httpx.HTTPError as exc:
            return transport_failure(PROVIDER, exc)
        return classify_mailgun(response)
