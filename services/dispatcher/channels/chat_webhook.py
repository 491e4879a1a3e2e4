"""Generic chat webhook: POST the rendered JSON to a URL held in the environment.

The URL of a chat webhook is a credential (whoever has it can post), so it lives
in the environment variable the plan names (``url_env``), and it never appears in
an error or a log line. :func:`webhook_url` and :func:`post_json` are shared with
the Slack and Discord drivers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import (
    classify_response,
    json_object,
    transport_failure,
)
from services.dispatcher.channels.http_outcome import scrubbed as scrub_outcome
from services.dispatcher.channels.outcome import NotConfigured, Outcome
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage


def webhook_url(ctx: DriverContext, delivery: Delivery, provider: str) -> str | NotConfigured:
    """The recipient's webhook URL from its ``url_env``, or why there is none."""
    entry = ctx.recipient_entry(delivery)
    env_name: str | None = getattr(entry, "url_env", None)
    if env_name is None:
        return NotConfigured(f"{provider} recipient {delivery.recipient!r} names no url_env")
    url = ctx.secret(env_name)
    if url is None:
        return NotConfigured(
            f"set {env_name} to the webhook URL of {provider} recipient {delivery.recipient!r}"
        )
    return url


def scrubbed(outcome: Outcome, url: str) -> Outcome:
    """``outcome`` with the secret URL (and its path, which holds the token) taken out."""
    try:
        path = httpx.URL(url).path
    except httpx.InvalidURL:
        path = ""
    return scrub_outcome(outcome, url, path)


async def post_json(
    ctx: DriverContext,
    provider: str,
    url: str | httpx.URL,
    payload: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> httpx.Response | Outcome:
    """POST ``payload``; the answer, or the outcome of a request that got none."""
    try:
        return await ctx.http.post(url, json=dict(payload), headers=dict(headers or {}))
    except httpx.HTTPError as exc:
        return scrubbed(transport_failure(provider, exc), str(url))


def response_id(response: httpx.Response) -> str | None:
    """An ``id`` the receiver gave the message, when it answered with one."""
    value = json_object(response).get("id")
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


class ChatWebhookChannel:
    """Any JSON chat webhook (Mattermost, Rocket.Chat, Google Chat, an in-house bot...)."""

    name = "chat_webhook"
    provider = "chat webhook"
    # We send our Idempotency-Key, but a generic receiver may well ignore it.
    idempotent = False

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        url = webhook_url(self._ctx, delivery, self.provider)
        if isinstance(url, NotConfigured):
            return url
        payload = message.payload or {"title": message.title, "text": message.text}
        answer = await post_json(
            self._ctx,
            self.provider,
            url,
            payload,
            headers={"Idempotency-Key": delivery.delivery_id},
        )
        if not isinstance(answer, httpx.Response):
            return answer
        return scrubbed(classify_response(self.provider, answer, response_id(answer)), url)
