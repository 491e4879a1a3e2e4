"""X (Twitter): one post per message, ``POST {x_api_url}/2/tweets`` (X API v2).

The account (and the variable holding its OAuth 2.0 user access token) comes from
the plan. The JSON body is ``{"text": ...}``; X answers 201 ``{"data": {"id", "text"}}``.
Errors are problem objects (``{"title", "detail", "type", "status"}``, sometimes in
an ``errors`` list); rate limits reset at ``x-rate-limit-reset`` (epoch seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import (
    classify_response,
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
from shared.plan.model import XAccount

PROVIDER: Final = "X"
_REFUSED: Final = frozenset({401, 403})
_DUPLICATE_MARK: Final = "duplicate content"
# A 429 may come from the 15-minute window or from a 24-hour cap; each has its reset.
_WINDOWS: Final = (
    ("x-rate-limit-remaining", "x-rate-limit-reset"),
    ("x-user-limit-24hour-remaining", "x-user-limit-24hour-reset"),
    ("x-app-limit-24hour-remaining", "x-app-limit-24hour-reset"),
)


class XChannel:
    name = "x"
    # The X API takes no idempotency key. Its duplicate-content check is no substitute:
    # it refuses a repeat with a 403 that names no post, and only for identical text.
    # A crash between X's answer and our record can therefore post twice.
    idempotent = False

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        account = _account(self._ctx, delivery)
        if account is None:
            return Permanent(f"{recipient} is not an X account of audience {delivery.audience}")
        token = self._ctx.secret(account.access_token_env)
        if token is None:
            return NotConfigured(
                f"X is not configured for {account.account}: set {account.access_token_env} "
                "to an OAuth 2.0 user access token with the tweet.write scope"
            )
        url = f"{self._ctx.settings.x_api_url.rstrip('/')}/2/tweets"
        try:
            response = await self._ctx.http.post(
                url, json={"text": message.text}, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            return scrubbed(transport_failure(PROVIDER, exc), token)
        outcome = classify_x(response, self._ctx.clock.now(), account.access_token_env)
        return scrubbed(outcome, token)


def classify_x(response: httpx.Response, now: datetime, token_env: str) -> Outcome:
    """X's answer: 201 sent (``data.id``); 401/403 permanent; 429 retried after the reset."""
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        data = body.get("data")
        post_id = data.get("id") if isinstance(data, dict) else None
        return Sent(str(post_id) if post_id is not None else None)
    detail = _detail(body)
    if status in _REFUSED:
        if _DUPLICATE_MARK in (detail or "").lower():
            return Permanent(
                f"{PROVIDER} refused the post as duplicate content ({status}): this account "
                "recently posted the same text, so it was not posted again"
            )
        return Permanent(
            f"{PROVIDER} answered {status}: {detail or 'access refused'} "
            f"(check the user access token in {token_env} and its tweet.write scope)"
        )
    if status == 429:
        wait = _reset_after(response, now) or retry_after(response, now)
        return Retryable(f"{PROVIDER} answered 429: {detail or 'too many requests'}", wait)
    return classify_response(PROVIDER, response)


def _reset_after(response: httpx.Response, now: datetime) -> timedelta | None:
    """The latest reset among the exhausted windows (any window when none says so)."""
    exhausted: list[datetime] = []
    others: list[datetime] = []
    for remaining_header, reset_header in _WINDOWS:
        reset = _epoch(response.headers.get(reset_header))
        if reset is None:
            continue
        remaining = response.headers.get(remaining_header, "").strip()
        (exhausted if remaining == "0" else others).append(reset)
    candidates = exhausted or others
    if not candidates:
        return None
    return max(max(candidates) - now, timedelta(0))


def _epoch(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value.strip()), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _detail(body: dict[str, Any]) -> str | None:
    """The human part of a problem object, top level or first of ``errors``."""
    sources: list[Any] = [body]
    errors = body.get("errors")
    if isinstance(errors, list):
        sources.extend(errors)
    for source in sources:
        if not isinstance(source, dict):
            continue
        for field in ("detail", "message", "title"):
            value = source.get(field)
            if isinstance(value, str) and value:
                return value
    return None


def _account(ctx: DriverContext, delivery: Delivery) -> XAccount | None:
    try:
        entry = ctx.recipient_entry(delivery)
    except KeyError:
        return None
    return entry if isinstance(entry, XAccount) else None
