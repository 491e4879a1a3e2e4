"""Slack incoming webhook: POST the Block Kit message to the webhook URL.

Slack answers ``200 ok`` (plain text) on success and a plain-text error code
otherwise (``invalid_payload``, ``no_service``, ``channel_is_archived``...). Those
codes describe a webhook or a message that will not work on a second try, so they
are permanent whatever HTTP status carries them (bar a 429). A 429 (with
``Retry-After``) and 5xx answers (``rollup_error``) are worth another try.
Incoming webhooks return no message id and take no idempotency key.
"""

from __future__ import annotations

from typing import Final

import httpx

from services.dispatcher.channels.chat_webhook import post_json, scrubbed, webhook_url
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import classify_response
from services.dispatcher.channels.outcome import NotConfigured, Outcome, Permanent, Sent
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage

PERMANENT_ERRORS: Final = frozenset(
    {
        "invalid_payload",
        "invalid_token",
        "no_service",
        "no_service_id",
        "no_team",
        "team_disabled",
        "channel_not_found",
        "channel_is_archived",
        "action_prohibited",
        "user_not_found",
        "no_text",
        "too_many_attachments",
        "posting_to_general_channel_denied",
        "no_active_hooks",
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_attachments",
        "missing_text_or_fallback_or_attachments",
    }
)
"""Slack's plain-text answers that say this webhook or this message will never work."""


def error_code(response: httpx.Response) -> str | None:
    """Slack's plain-text error code (``channel_is_archived``), when the body is one."""
    try:
        text = response.text.strip()
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return None
    if text and len(text) <= 64 and all(c.islower() or c == "_" for c in text):
        return text
    return None


class SlackChannel:
    name = "slack"
    provider = "slack"
    idempotent = False  # an incoming webhook posts every request it gets

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        url = webhook_url(self._ctx, delivery, self.provider)
        if isinstance(url, NotConfigured):
            return url
        payload = message.payload or {"text": message.text}
        answer = await post_json(self._ctx, self.provider, url, payload)
        if not isinstance(answer, httpx.Response):
            return answer
        return scrubbed(classify(answer), url)


def classify(response: httpx.Response) -> Outcome:
    """2xx sent; a known error code permanent (unless it came with a 429); else by status."""
    status = response.status_code
    if 200 <= status < 300:
        return Sent(None)
    code = error_code(response)
    if code in PERMANENT_ERRORS and status != 429:
        return Permanent(f"slack answered {status} {code}")
    return classify_response("slack", response)
