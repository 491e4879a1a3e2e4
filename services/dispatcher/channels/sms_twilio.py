"""SMS through the Twilio Messaging API: one form-encoded POST per message.

``POST {twilio_api_url}/2010-04-01/Accounts/{sid}/Messages.json`` with ``To``,
``From`` (or ``MessagingServiceSid`` when the sender is a Messaging Service,
``MG...``) and ``Body``, authenticated with HTTP basic auth ``sid:auth_token``.
Twilio answers 201 with the Message resource, whose ``sid`` is the provider id.

Errors carry a Twilio error code in the JSON body (``{code, message, more_info,
status}``); the code decides before the HTTP status does: 20429 (too many
requests) is retried after ``Retry-After``, 21211 (invalid ``To`` number) never is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import (
    RETRYABLE_STATUSES,
    excerpt,
    json_object,
    retry_after,
    scrubbed,
    transport_failure,
)
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage

PROVIDER: Final = "Twilio"
RETRYABLE_CODES: Final = frozenset({20429})  # Too Many Requests
PERMANENT_CODES: Final = frozenset({21211})  # Invalid 'To' Phone Number
_MESSAGING_SERVICE_PREFIX: Final = "MG"


class TwilioSmsChannel:
    name = "sms"
    # Twilio's Messages API takes no idempotency key: a crash after Twilio accepted a
    # message and before the pipeline recorded it can send that SMS a second time.
    idempotent = False

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        settings = self._ctx.settings
        sid = settings.twilio_account_sid
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        sender = settings.twilio_from
        missing = [
            name
            for name, value in (
                ("CLARION_TWILIO_ACCOUNT_SID", sid),
                ("CLARION_TWILIO_AUTH_TOKEN", token),
                ("CLARION_TWILIO_FROM", sender),
            )
            if not value
        ]
        if missing or sid is None or sender is None:
            return NotConfigured(f"Twilio SMS is not configured: set {', '.join(missing)}")

        form = {"To": recipient}
        if sender.startswith(_MESSAGING_SERVICE_PREFIX):
            form["MessagingServiceSid"] = sender
        else:
            form["From"] = sender
        form["Body"] = message.text
        url = (
            f"{settings.twilio_api_url.rstrip('/')}/2010-04-01/Accounts/"
            f"{quote(sid, safe='')}/Messages.json"
        )
        hidden = (token, recipient)
        try:
            response = await self._ctx.http.post(url, data=form, auth=(sid, token))
        except httpx.HTTPError as exc:
            return scrubbed(transport_failure(PROVIDER, exc), *hidden)
        return scrubbed(classify_twilio(response, self._ctx.clock.now()), *hidden)


def classify_twilio(response: httpx.Response, now: datetime | None = None) -> Outcome:
    """Twilio's answer: 2xx sent (``sid``), then its error code, then the HTTP status."""
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        sid = body.get("sid")
        return Sent(sid if isinstance(sid, str) and sid else None)
    code = body.get("code")
    error = _describe_error(response, body)
    if code in RETRYABLE_CODES:
        return Retryable(error, retry_after(response, now))
    if code in PERMANENT_CODES:
        return Permanent(error)
    if status in RETRYABLE_STATUSES:
        return Retryable(error, retry_after(response, now))
    return Permanent(error)


def _describe_error(response: httpx.Response, body: dict[str, Any]) -> str:
    code = body.get("code")
    message = body.get("message") or body.get("detail") or body.get("title")
    if code is None and not message:
        return f"{PROVIDER} answered {response.status_code}: {excerpt(response)}"
    text = f"{PROVIDER} answered {response.status_code}: error {code}"
    if message:
        text += f": {message}"
    more_info = body.get("more_info")
    if isinstance(more_info, str) and more_info:
        text += f" ({more_info})"
    return text
