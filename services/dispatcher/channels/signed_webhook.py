"""Signed webhook: the incident event as JSON, signed per Standard Webhooks, sent safely.

Headers (https://www.standardwebhooks.com):

- ``webhook-id``: the delivery id, the same on every attempt of one delivery;
- ``webhook-timestamp``: this attempt's time, in whole unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``
  (the exact body bytes sent), keyed with the secret: ``whsec_`` + base64 of the key
  bytes, as the spec prints secrets (the prefix is optional here).

Without ``secret_env`` the webhook goes out unsigned; with ``secret_env`` named but
unset it is not sent at all (NotConfigured), never unsigned by accident.

The URL is the plan's, so it could point anywhere: the host is resolved, refused
when any address is not public (unless ``CLARION_WEBHOOK_ALLOW_PRIVATE``), and the
connection is pinned to the checked address (:mod:`.ssrf`). Redirects are never
followed: a 3xx is a permanent failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import httpx

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import classify_response, transport_failure
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.channels.ssrf import AddressRefused, ResolutionFailed, pin
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.plan.model import SignedWebhook

KEY_PREFIX = "whsec_"


class InvalidSecret(ValueError):
    """The signing secret is not ``whsec_`` + base64 (the value itself is never quoted)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64-decode what follows ``whsec_``."""
    encoded = secret.strip().removeprefix(KEY_PREFIX)
    encoded += "=" * (-len(encoded) % 4)  # the spec's libraries accept unpadded secrets
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecret("the signing secret is not whsec_ followed by base64") from exc
    if not key:
        raise InvalidSecret("the signing secret is empty")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode('ascii')}"


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The JSON body, serialized once: what is signed is byte for byte what is sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SignedWebhookChannel:
    name = "webhook"
    provider = "webhook"
    # Standard Webhooks receivers must treat webhook-id as an idempotency key and drop a
    # repeat (the spec says so), and ours is the delivery id, stable across attempts.
    idempotent = True

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx

    def _signing_key(self, entry: SignedWebhook) -> bytes | Outcome | None:
        """The HMAC key; None to send unsigned; an outcome when the secret is unusable."""
        if entry.secret_env is None:
            return None
        secret = self._ctx.secret(entry.secret_env)
        if secret is None:
            return NotConfigured(
                f"set {entry.secret_env} to the signing secret of webhook {entry.name!r}"
            )
        try:
            return secret_key(secret)
        except InvalidSecret as exc:
            return Permanent(f"{entry.secret_env}: {exc}")

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        ctx = self._ctx
        entry = ctx.recipient_entry(delivery)
        if not isinstance(entry, SignedWebhook):
            return Permanent(f"recipient {delivery.recipient!r} is not a signed webhook")
        key = self._signing_key(entry)
        if key is not None and not isinstance(key, bytes):
            return key

        payload = message.payload or {"title": message.title, "text": message.text}
        body = encode_body(payload)
        webhook_id = delivery.delivery_id
        timestamp = int(ctx.clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if key is not None:
            headers["webhook-signature"] = sign(key, webhook_id, timestamp, body)

        try:
            target = await pin(
                str(entry.url),
                allow_private=ctx.settings.webhook_allow_private,
                dns_timeout=ctx.settings.http_connect_timeout_seconds,
            )
        except AddressRefused as exc:
            return Permanent(f"webhook {entry.name!r} refused: {exc}")
        except ResolutionFailed as exc:
            return Retryable(f"webhook {entry.name!r}: {exc}")

        try:
            response = await ctx.http.post(
                target.url,
                content=body,
                headers=headers | target.headers,
                extensions=target.extensions,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            return transport_failure(f"webhook {entry.name!r}", exc)
        return classify(entry.name, response, webhook_id)


def classify(name: str, response: httpx.Response, webhook_id: str) -> Outcome:
    status = response.status_code
    if 300 <= status < 400:
        return Permanent(
            f"webhook {name!r} answered {status}: redirects are not followed; "
            "point the plan at the final URL"
        )
    outcome = classify_response(f"webhook {name!r}", response, webhook_id)
    if isinstance(outcome, Sent):
        return Sent(webhook_id)
    return outcome
