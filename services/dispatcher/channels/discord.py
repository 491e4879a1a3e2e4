"""Discord webhook: execute the webhook with ``?wait=true`` so Discord answers with the message.

Without ``wait`` Discord answers 204 and a message it failed to save goes
unreported; with it the answer is the Message object, whose ``id`` the delivery
log keeps. A 429 says how long to wait twice: ``retry_after`` (float seconds) in
the JSON body and ``Retry-After`` (whole seconds) in the headers; the longer of the
two is used. Error bodies are ``{code, message, errors}``: 50035 (Invalid Form
Body) and the other 4xx codes are permanent. Webhooks take no idempotency key.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import httpx

from services.dispatcher.channels.chat_webhook import (
    post_json,
    response_id,
    scrubbed,
    webhook_url,
)
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import classify_response, json_object, retry_after
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage

CONTENT_MAX = 2000


def body_retry_after(data: dict[str, Any]) -> timedelta | None:
    """``retry_after`` from a 429 body: seconds, possibly fractional."""
    value = data.get("retry_after")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return timedelta(seconds=min(float(value), 7 * 86400))


def _first_field_error(errors: Any, path: tuple[str, ...] = ()) -> str | None:
    """The first ``field.path: message`` in Discord's nested ``errors`` object."""
    if not isinstance(errors, dict):
        return None
    found = errors.get("_errors")
    if isinstance(found, list) and found and isinstance(found[0], dict):
        where = ".".join(path) or "body"
        return f"{where}: {found[0].get('message') or found[0].get('code')}"
    for key, value in errors.items():
        if key == "_errors":
            continue
        nested = _first_field_error(value, (*path, str(key)))
        if nested is not None:
            return nested
    return None


def describe_error(status: int, data: dict[str, Any]) -> str | None:
    """``discord answered 400: error 50035 Invalid Form Body (embeds.0.title: ...)``."""
    if "code" not in data:
        return None
    text = f"discord answered {status}: error {data.get('code')} {data.get('message', '')}".rstrip()
    detail = _first_field_error(data.get("errors"))
    return f"{text} ({detail})" if detail else text


def classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    data = json_object(response)
    if 200 <= status < 300:
        return Sent(response_id(response))
    if status == 429:
        waits = [w for w in (retry_after(response), body_retry_after(data)) if w is not None]
        scope = response.headers.get("x-ratelimit-scope") or (
            "global" if data is not None and data.get("global") else None
        )
        where = f" ({scope} limit)" if scope else ""
        return Retryable(f"discord rate limited the webhook{where}", max(waits, default=None))
    outcome = classify_response("discord", response)
    described = describe_error(status, data)
    if isinstance(outcome, Permanent) and described is not None:
        return Permanent(described)
    return outcome


class DiscordChannel:
    name = "discord"
    provider = "discord"
    idempotent = False  # every execution of a webhook posts a new message

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        url = webhook_url(self._ctx, delivery, self.provider)
        if isinstance(url, NotConfigured):
            return url
        try:
            target = httpx.URL(url).copy_merge_params({"wait": "true"})
        except httpx.InvalidURL:
            return Permanent(f"the {self.provider} webhook URL is not a valid URL")
        payload = message.payload or {
            "content": message.text[:CONTENT_MAX],
            "allowed_mentions": {"parse": []},
        }
        answer = await post_json(self._ctx, self.provider, target, payload)
        if not isinstance(answer, httpx.Response):
            return answer
        return scrubbed(classify(answer), url)
