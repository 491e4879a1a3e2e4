"""Bearer-token checks (webhooks, ops API), compared in constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from shared.errors import Unauthorized


def check_bearer(authorization: str | None, token: SecretStr | None) -> None:
    """Raise :class:`Unauthorized` unless ``authorization`` carries ``token``.

    With no token configured every request is accepted (the app warns at startup).
    """
    if token is None:
        return
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    expected = token.get_secret_value().encode()
    # Compare even when the scheme is wrong, so timing says nothing about which part failed.
    matches = hmac.compare_digest(credentials.strip().encode(), expected)
    if scheme.lower() != "bearer" or not matches:
        raise Unauthorized("missing or wrong bearer token")
