"""SMS through a generic HTTP gateway: one JSON POST per message.

``POST {CLARION_SMS_GATEWAY_URL}`` with ``{"to", "text", "idempotency_key"}``, the
same key in an ``Idempotency-Key`` header, and ``Authorization: Bearer
{CLARION_SMS_GATEWAY_TOKEN}`` when a token is set. Any 2xx is sent; the provider
id is the ``id`` (or ``message_id``) of a JSON answer, when there is one. Other
answers are read the way every HTTP channel reads them (:mod:`.http_outcome`).
"""

from __future__ import annotations

import json
from typing import Any, Final

import httpx

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import classify_response, scrubbed, transport_failure
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Sent,
)
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage

PROVIDER: Final = "SMS gateway"
_ID_FIELDS: Final = ("id", "message_id")


class SmsGatewayChannel:
    name = "sms"
    # We pass our idempotency key on, but nothing tells us the gateway honours it,
    # so a crash between its answer and our record may send the SMS twice.
    idempotent = False

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        settings = self._ctx.settings
        url = settings.sms_gateway_url
        if not url:
            return NotConfigured("the SMS gateway is not configured: set CLARION_SMS_GATEWAY_URL")
        token = settings.sms_gateway_token.get_secret_value() if settings.sms_gateway_token else ""
        headers = {"Idempotency-Key": delivery.delivery_id}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = {"to": recipient, "text": message.text, "idempotency_key": delivery.delivery_id}
        hidden = (token, recipient)
        try:
            response = await self._ctx.http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            return scrubbed(transport_failure(PROVIDER, exc), *hidden)
        if 200 <= response.status_code < 300:
            return Sent(_message_id(response))
        return scrubbed(classify_response(PROVIDER, response), *hidden)


def _message_id(response: httpx.Response) -> str | None:
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    for field in _ID_FIELDS:
        value = body.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None
