"""Mastodon: one status per message, ``POST {instance}/api/v1/statuses``.

The account (instance and the variable holding its access token) comes from the
plan. The request carries ``Authorization: Bearer <token>`` and our idempotency
key as ``Idempotency-Key``; the form body is ``status`` and ``visibility=public``.
Mastodon answers 200 with the Status, whose ``id`` is the provider id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

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
from shared.plan.model import MastodonAccount

PROVIDER: Final = "Mastodon"
_REFUSED_TOKEN: Final = frozenset({401, 403})
_INVALID_STATUS: Final = 422


class MastodonChannel:
    name = "mastodon"
    # Mastodon drops a second POST with the same Idempotency-Key (it keeps keys for an
    # hour) and answers with the status it already made, so a retry after a crash
    # between its answer and our record does not post twice. Retries of one delivery
    # come within the pipeline's backoff, well inside that hour.
    idempotent = True

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        account = _account(self._ctx, delivery)
        if account is None:
            return Permanent(
                f"{recipient} is not a Mastodon account of audience {delivery.audience}"
            )
        token = self._ctx.secret(account.access_token_env)
        instance = str(account.instance).rstrip("/")
        if token is None:
            return NotConfigured(
                f"Mastodon is not configured for {instance}: set {account.access_token_env} "
                "to an access token with the write:statuses scope"
            )
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": delivery.delivery_id}
        form = {"status": message.text, "visibility": "public"}
        try:
            response = await self._ctx.http.post(
                f"{instance}/api/v1/statuses", data=form, headers=headers
            )
        except httpx.HTTPError as exc:
            return scrubbed(transport_failure(PROVIDER, exc), token)
        outcome = classify_mastodon(response, self._ctx.clock.now(), account.access_token_env)
        return scrubbed(outcome, token)


def classify_mastodon(response: httpx.Response, now: datetime, token_env: str) -> Outcome:
    """Mastodon's answer: 200 sent; 401/403/422 permanent; 429 retried after the reset."""
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        status_id = body.get("id")
        return Sent(str(status_id) if status_id is not None else None)
    error = body.get("error")
    detail = str(error) if error else None
    if status in _REFUSED_TOKEN:
        return Permanent(
            f"{PROVIDER} answered {status}: {detail or 'access refused'} "
            f"(check the token in {token_env} and its write:statuses scope)"
        )
    if status == _INVALID_STATUS:
        return Permanent(f"{PROVIDER} rejected the status (422): {detail or 'invalid'}")
    if status == 429:
        wait = retry_after(response, now) or _reset_after(response, now)
        return Retryable(f"{PROVIDER} answered 429: {detail or 'rate limited'}", wait)
    return classify_response(PROVIDER, response)


def _reset_after(response: httpx.Response, now: datetime) -> timedelta | None:
    """``X-RateLimit-Reset`` (an ISO 8601 time) as a delay from ``now``."""
    value = response.headers.get("x-ratelimit-reset")
    if not value:
        return None
    try:
        reset = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if reset.tzinfo is None:
        return None
    return max(reset - now, timedelta(0))


def _account(ctx: DriverContext, delivery: Delivery) -> MastodonAccount | None:
    try:
        entry = ctx.recipient_entry(delivery)
    except KeyError:
        return None
    return entry if isinstance(entry, MastodonAccount) else None
