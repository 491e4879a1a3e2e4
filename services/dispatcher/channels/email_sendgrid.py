"""Email through SendGrid's v3 Mail Send API (``POST /v3/mail/send``, Bearer API key).

The body carries the same message as SMTP would: text then HTML content, our
Message-ID, the incident thread headers and, for subscribers, List-Unsubscribe
(:mod:`.email_message`). ``custom_args`` tie SendGrid's events back to the
delivery. SendGrid answers 202 with the message's id in ``X-Message-Id``.

SendGrid takes no idempotency key, so the driver is not idempotent.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any, Final

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

PROVIDER: Final = "SendGrid"
SEND_PATH: Final = "/v3/mail/send"
NO_KEY: Final = "no SendGrid API key configured (CLARION_SENDGRID_API_KEY)"
CATEGORY: Final = "incident"


def sendgrid_body(email: OutgoingEmail, delivery: Delivery) -> dict[str, Any]:
    """The Mail Send request for one delivery (one personalization, one recipient)."""
    name, address = parseaddr(email.sender)
    sender: dict[str, str] = {"email": address or email.sender}
    if name:
        sender["name"] = name
    content = [{"type": "text/plain", "value": email.text}]
    if email.html is not None:  # SendGrid wants text/plain before text/html
        content.append({"type": "text/html", "value": email.html})
    return {
        "personalizations": [{"to": [{"email": email.recipient}]}],
        "from": sender,
        "subject": email.subject,
        "content": content,
        "headers": email.header_map,
        "custom_args": {
            "delivery_id": delivery.delivery_id,
            "incident_id": delivery.incident_id,
            "event_id": delivery.event_id,
        },
        "categories": [CATEGORY],
    }


def classify_sendgrid(response: httpx.Response, now: datetime | None = None) -> Outcome:
    """202: sent (``X-Message-Id``). 408/429/5xx: retry (Retry-After, else the rate-limit
    reset). Any other 4xx (400 bad request, 401/403 bad key, 413 too large): permanent."""
    status = response.status_code
    if 200 <= status < 300:
        return Sent(response.headers.get("x-message-id") or None)
    text = redact_text(describe(PROVIDER, response))
    if status in RETRYABLE_STATUSES:
        return Retryable(text, retry_after(response, now) or _rate_limit_reset(response, now))
    return Permanent(text)


def _rate_limit_reset(response: httpx.Response, now: datetime | None) -> timedelta | None:
    """``X-RateLimit-Reset`` (epoch seconds) as a delay, when a 429 has no Retry-After."""
    if response.status_code != 429 or now is None:
        return None
    value = response.headers.get("x-ratelimit-reset", "").strip()
    try:
        reset = float(value)
    except ValueError:
        return None
    seconds = reset - now.timestamp()
    if not math.isfinite(seconds):
        return None
    return timedelta(seconds=min(max(seconds, 0.0), 7 * 86400))


class SendGridChannel:
    name = "email"
    idempotent = False

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self._links = UnsubscribeLinks(ctx)

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        settings = self._ctx.settings
        key = settings.sendgrid_api_key.get_secret_value() if settings.sendgrid_api_key else ""
        if not key:
            return NotConfigured(NO_KEY)
        prepared = await prepare(self._ctx, self._links, message, recipient, delivery)
        if not isinstance(prepared, OutgoingEmail):
            return prepared
        try:
            response = await self._ctx.http.post(
                settings.sendgrid_api_url.rstrip("/") + SEND_PATH,
                json=sendgrid_body(prepared, delivery),
                headers={"Authorization": f"Bearer {key}"},
            )
        except httpx.HTTPError as exc:
            return transport_failure(PROVIDER, exc)
        return classify_sendgrid(response, self._ctx.clock.now())
