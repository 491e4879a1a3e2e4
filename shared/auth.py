"""Credential checks (webhooks, ops API), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from pydantic import SecretStr

from shared.errors import Unauthorized


def secret_equals(presented: str | bytes, expected: str | bytes) -> bool:
    """Whether two secrets are equal, in time that depends neither on where they differ
    nor (both sides are hashed first) on their lengths."""
    return hmac.compare_digest(_digest(presented), _digest(expected))


def parse_authorization(authorization: str | None) -> tuple[str, str]:
    """``"Bearer abc"`` -> ``("bearer", "abc")``; a missing header gives ``("", "")``."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return scheme.lower(), credentials.strip()


def check_bearer(authorization: str | None, token: SecretStr | None) -> None:
    """Raise :class:`Unauthorized` unless ``authorization`` carries ``token``.

    With no token configured every request is accepted (the app warns at startup).
    """
    if token is None:
        return
    scheme, credentials = parse_authorization(authorization)
    # Compare even when the scheme is wrong, so timing says nothing about which part failed.
    matches = secret_equals(credentials, token.get_secret_value())
    if scheme != "bearer" or not matches:
        raise Unauthorized("missing or wrong bearer token")


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is 127.0.0.0/8, ::1 or an IPv4-mapped loopback address."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
