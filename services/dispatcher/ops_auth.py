"""Who may read and act on the ops API (/v1) and the ops pages (/ops): holders of
CLARION_OPS_TOKEN, or, when no token is configured, clients on this host only.

The API takes the token as ``Authorization: Bearer <token>``. The pages take the same
header, or a session cookie that the login form sets. The cookie is never the token:
it is ``v1.<issued at>.<nonce>.<mac>``, where the mac is an HMAC keyed with the token
over a fixed purpose string, the issue time and the nonce, so it proves that whoever
holds it typed the token, expires on its own (:data:`SESSION_LIFETIME`), and every
session dies when the token changes. Nothing is stored server-side, so signing out
clears the cookie in that browser only; rotate the token to end every session.

Every form that changes something carries a CSRF token: an HMAC of the session (the
cookie's value; for the bearer header or a token-less loopback client, a fixed name),
so a page on another site cannot make a signed-in browser act.

Refusals: :class:`LoginRequired` (401, the pages answer with the login form) when a
token is configured and none or a wrong one came; :class:`shared.errors.Forbidden`
(403) when no token is configured and the client is not on this host, or a form's
CSRF token is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from fastapi import Request, Response
from pydantic import SecretStr

from services.dispatcher.state import get_state
from shared.auth import check_bearer, is_loopback, parse_authorization, secret_equals
from shared.errors import Forbidden
from shared.settings import Settings

SESSION_COOKIE: Final = "clarion_ops_session"
SESSION_LIFETIME: Final = timedelta(hours=12)
SESSION_CLOCK_SKEW: Final = timedelta(minutes=1)
"""A cookie issued by an instance whose clock is ahead by this much is still accepted."""
COOKIE_PATH: Final = "/ops"
CSRF_FIELD: Final = "csrf_token"
HOME: Final = "/ops"

_SESSION_PURPOSE: Final = b"clarion ops session v1"
_CSRF_PURPOSE: Final = b"clarion ops csrf v1"
_SESSION_VERSION: Final = "v1"
_SESSION_SHAPE: Final = re.compile(r"v1\.(\d{1,12})\.([A-Za-z0-9_-]{16,64})\.([A-Za-z0-9_-]{43})")
_APP_KEY_ATTRIBUTE: Final = "ops_page_key"
_LOOPBACK_ONLY: Final = (
    "CLARION_OPS_TOKEN is not set: the ops pages and API answer requests from this host only"
)


class AuthMethod(StrEnum):
    """How a page request proved it may see the ops pages."""

    BEARER = "bearer"
    SESSION = "session"
    LOOPBACK = "loopback"


@dataclass(frozen=True)
class OpsViewer:
    """Who is looking at an ops page, and the CSRF token their forms must carry."""

    method: AuthMethod
    csrf_token: str

    @property
    def signed_in(self) -> bool:
        """Whether a session cookie let them in (so signing out means something)."""
        return self.method is AuthMethod.SESSION


class LoginRequired(Exception):
    """A page request without a valid token or session: answered 401 with the login form.

    ``problem`` is what to tell the person (None: they simply have not signed in yet);
    ``clear_cookie``: the request carried a session cookie that is no longer valid."""

    def __init__(self, problem: str | None = None, *, clear_cookie: bool = False) -> None:
        super().__init__(problem or "sign in with the ops token")
        self.problem = problem
        self.clear_cookie = clear_cookie


# Tokens and keys


def configured_token(settings: Settings) -> SecretStr | None:
    """The ops token, or None when it is unset or empty."""
    token = settings.ops_token
    return token if token is not None and token.get_secret_value() else None


def page_key(request: Request) -> bytes:
    """The HMAC key of sessions and CSRF tokens: the ops token; without one, a random key
    made once per app (token-less deployments answer loopback clients only)."""
    token = configured_token(get_state(request).settings)
    if token is not None:
        return token.get_secret_value().encode()
    key: bytes | None = getattr(request.app.state, _APP_KEY_ATTRIBUTE, None)
    if key is None:
        key = secrets.token_bytes(32)
        setattr(request.app.state, _APP_KEY_ATTRIBUTE, key)
    return key


# Sessions and CSRF tokens (pure)


def issue_session(key: bytes, now: datetime, nonce: str | None = None) -> str:
    """A new session cookie value, issued at ``now``."""
    issued = str(int(now.timestamp()))
    nonce = nonce or secrets.token_urlsafe(16)
    return f"{_SESSION_VERSION}.{issued}.{nonce}.{_session_mac(key, issued, nonce)}"


def session_valid(
    key: bytes, value: str, now: datetime, lifetime: timedelta = SESSION_LIFETIME
) -> bool:
    """Whether ``value`` is a session this key issued, not expired at ``now``."""
    match = _SESSION_SHAPE.fullmatch(value)
    if match is None:
        return False
    issued, nonce, presented = match.groups()
    expected = _session_mac(key, issued, nonce)
    authentic = hmac.compare_digest(presented.encode(), expected.encode())
    age = now.timestamp() - int(issued)
    fresh = -SESSION_CLOCK_SKEW.total_seconds() <= age < lifetime.total_seconds()
    return authentic and fresh


def csrf_token_for(key: bytes, binding: str) -> str:
    """The CSRF token of the session ``binding`` (a cookie value, or a method's name)."""
    mac = hmac.new(key, _CSRF_PURPOSE + b"\x00" + binding.encode(), hashlib.sha256).digest()
    return _b64(mac)


def _session_mac(key: bytes, issued: str, nonce: str) -> str:
    message = b"\x00".join((_SESSION_PURPOSE, issued.encode(), nonce.encode()))
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Redirects


def safe_next(target: str | None) -> str:
    """``target`` if it is a path under /ops on this site, else /ops: never an open redirect."""
    if not target or len(target) > 2000 or any(c in target for c in "\\\r\n\t"):
        return HOME
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return HOME
    path = parts.path
    if not (path == HOME or path.startswith(HOME + "/")) or ".." in path.split("/"):
        return HOME
    return f"{path}?{parts.query}" if parts.query else path


# Route dependencies


async def require_ops_token(request: Request) -> None:
    """The /v1 API: ``Authorization: Bearer <token>`` when an ops token is configured;
    without one, clients on this host only (403 for others)."""
    settings = get_state(request).settings
    token = configured_token(settings)
    if token is None:
        if not is_loopback(_client_host(request)):
            raise Forbidden(_LOOPBACK_ONLY)
        return
    check_bearer(request.headers.get("authorization"), token)


async def ops_viewer(request: Request) -> OpsViewer:
    """The ops pages: the bearer header, or a valid session cookie, or (no token
    configured) a client on this host. Raises :class:`LoginRequired` or Forbidden."""
    settings = get_state(request).settings
    token = configured_token(settings)
    key = page_key(request)
    if token is None:
        if not is_loopback(_client_host(request)):
            raise Forbidden(_LOOPBACK_ONLY)
        return OpsViewer(AuthMethod.LOOPBACK, csrf_token_for(key, AuthMethod.LOOPBACK.value))
    scheme, credentials = parse_authorization(request.headers.get("authorization"))
    if scheme == "bearer":
        if secret_equals(credentials, token.get_secret_value()):
            return OpsViewer(AuthMethod.BEARER, csrf_token_for(key, AuthMethod.BEARER.value))
        raise LoginRequired("The bearer token is not the ops token.")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise LoginRequired()
    if not session_valid(key, cookie, get_state(request).clock.now()):
        raise LoginRequired("Your session has expired. Sign in again.", clear_cookie=True)
    return OpsViewer(AuthMethod.SESSION, csrf_token_for(key, cookie))


def check_csrf(viewer: OpsViewer, presented: str | None) -> None:
    """Raise Forbidden unless a form carried ``viewer``'s CSRF token."""
    if not presented or not hmac.compare_digest(presented.encode(), viewer.csrf_token.encode()):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and retry")


def token_matches(request: Request, presented: str) -> bool:
    """Whether ``presented`` (the login form's field) is the configured ops token."""
    token = configured_token(get_state(request).settings)
    return token is not None and secret_equals(presented, token.get_secret_value())


# Cookies


def set_session_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def _client_host(request: Request) -> str | None:
    return request.client.host if request.client else None
