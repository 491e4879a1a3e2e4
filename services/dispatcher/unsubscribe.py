"""Unsubscribe links: a token that names a subscriber and proves we issued it.

A token is ``<address>.<mac>``, both base64url without padding, where the MAC is
HMAC-SHA256 over the address under the unsubscribe secret. Whoever holds the
secret can check a token and read the address back without a database lookup
(the subscription page does); nobody without it can make one for an address.

The address is encoded, not encrypted: the link only ever goes to that address.

The secret is ``CLARION_UNSUBSCRIBE_SECRET``. When it is unset, Clarion makes one
at first use and keeps it in Redis (:func:`unsubscribe_secret`), so subscriber
mail carries a working List-Unsubscribe with zero setup. Set the variable to
keep links valid across a Redis that loses its data, and to share them between
deployments that do not share a Redis.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis

from shared.settings import Settings

REDIS_KEY: Final = "clarion:unsubscribe:secret"
"""Where the generated secret lives when CLARION_UNSUBSCRIBE_SECRET is unset."""

_CONTEXT: Final = b"clarion unsubscribe v1\x00"
_MAC_BYTES: Final = 32
_MAX_TOKEN: Final = 2048  # a longer token is not one of ours; don't decode it


class SecretUnavailable(RuntimeError):
    """The generated secret could not be read back from Redis (deleted while being made)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: str | bytes, address: bytes) -> bytes:
    return hmac.new(_key(secret), _CONTEXT + address, hashlib.sha256).digest()


def unsubscribe_token(secret: str | bytes, address: str) -> str:
    """A URL-safe token for ``address`` that only ``secret`` can have made."""
    if not secret:
        raise ValueError("an unsubscribe token needs a non-empty secret")
    raw = address.encode("utf-8")
    return f"{_b64(raw)}.{_b64(_mac(secret, raw))}"


def verify_unsubscribe_token(secret: str | bytes, token: str) -> str | None:
    """The address ``token`` was made for, or None when it is not a token ``secret`` made."""
    decoded = _decode(token) if secret else None
    if decoded is None:
        return None
    raw, mac = decoded
    if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, _mac(secret, raw)):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _decode(token: str) -> tuple[bytes, bytes] | None:
    """The address bytes and MAC of a well-formed token; None for anything else."""
    if not token or len(token) > _MAX_TOKEN:
        return None
    encoded_address, dot, encoded_mac = token.partition(".")
    if not dot or not encoded_address or not encoded_mac:
        return None
    try:
        raw, mac = _unb64(encoded_address), _unb64(encoded_mac)
    except (binascii.Error, ValueError):
        return None
    # Exactly one spelling per token: re-encoding must give the same text back.
    if _b64(raw) != encoded_address or _b64(mac) != encoded_mac:
        return None
    return raw, mac


def unsubscribe_url(base_url: str, token: str) -> str:
    """``{base_url}/unsubscribe?token=...``, keeping any query ``base_url`` already has."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/unsubscribe"
    query = urlencode({"token": token})
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


async def unsubscribe_secret(settings: Settings, redis: Redis) -> bytes:
    """CLARION_UNSUBSCRIBE_SECRET, else the one generated and kept in Redis for this install.

    Every process asks for the same key; the first to ask creates it (``SET NX``),
    so dispatchers and the subscription page always agree.
    """
    if settings.unsubscribe_secret is not None:
        configured = settings.unsubscribe_secret.get_secret_value()
        if configured:
            return configured.encode()
    stored = await redis.get(REDIS_KEY)
    if stored is None:
        await redis.set(REDIS_KEY, secrets.token_urlsafe(32), nx=True)
        stored = await redis.get(REDIS_KEY)
    if stored is None:  # deleted between the two calls: not worth a loop
        raise SecretUnavailable("the generated unsubscribe secret vanished from Redis")
    return stored if isinstance(stored, bytes) else str(stored).encode()
