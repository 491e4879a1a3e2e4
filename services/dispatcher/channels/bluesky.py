"""Bluesky: one ``app.bsky.feed.post`` record per message, over XRPC on the account's PDS.

A session (``com.atproto.server.createSession`` with the handle and an app
password) is reused across sends rather than created per post: the PDS allows only
30 session creations per 5 minutes per account. Sessions are kept in Redis (with
a TTL), so every dispatcher instance shares one; when Redis is unreachable, each
instance keeps its own in memory. When ``createRecord`` answers ``ExpiredToken``
the session is refreshed (``com.atproto.server.refreshSession``), or recreated if
the refresh fails, and the post is tried once more.

Exactly once: each delivery posts under a record key computed from the delivery
(:func:`record_key`), so a repeat lands on a key that already exists, and that is
read as sent. Links in the text get link facets (UTF-8 byte offsets), which is
how Bluesky makes them clickable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from redis.exceptions import RedisError

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import (
    RETRYABLE_STATUSES,
    describe,
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
from shared.plan.model import BlueskyAccount
from shared.streams import PREFIX

PROVIDER: Final = "Bluesky"
POST_COLLECTION: Final = "app.bsky.feed.post"
SESSION_KEY: Final = f"{PREFIX}:bluesky:session:{{account}}"
SESSION_TTL: Final = timedelta(hours=24)
"""How long a shared session is kept. Access tokens are refreshed long before; this
bounds how long tokens sit in Redis for an account that stopped posting."""

_CREATE_SESSION: Final = "/xrpc/com.atproto.server.createSession"
_REFRESH_SESSION: Final = "/xrpc/com.atproto.server.refreshSession"
_CREATE_RECORD: Final = "/xrpc/com.atproto.repo.createRecord"
_GET_RECORD: Final = "/xrpc/com.atproto.repo.getRecord"
_STALE_SESSION_ERRORS: Final = frozenset({"ExpiredToken", "InvalidToken"})
_ALREADY_EXISTS: Final = ("already exists", "alreadyexists", "already a value at key")
_TID_ALPHABET: Final = "234567abcdefghijklmnopqrstuvwxyz"
_URL: Final = re.compile(r"https?://[^\s<>\"'`]+")
_TRAILING: Final = ".,;:!?'\""


@dataclass(frozen=True)
class Session:
    access_jwt: str
    refresh_jwt: str
    did: str


class BlueskyChannel:
    name = "bluesky"
    # True: the record key is a pure function of the delivery (record_key), so the
    # PDS itself refuses a second post for the same delivery however many times we
    # try (after a crash, a reclaim, a dead-letter replay), and that refusal is read
    # as Sent. The reference PDS reports the collision as a bare 500, so any 5xx is
    # checked with getRecord before it is called a failure.
    idempotent = True

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self._memory: dict[str, Session] = {}  # when Redis is unreachable
        self._locks: dict[str, asyncio.Lock] = {}

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        account = _account(self._ctx, delivery)
        if account is None:
            return Permanent(
                f"{recipient} is not a Bluesky account of audience {delivery.audience}"
            )
        password = self._ctx.secret(account.app_password_env)
        if password is None:
            return NotConfigured(
                f"Bluesky is not configured for {account.handle}: set "
                f"{account.app_password_env} to an app password of that account"
            )
        login = _Login(account, password, str(account.service).rstrip("/"))
        outcome = await self._post(login, message.text, record_key(delivery))
        return scrubbed(outcome, login.password)

    # Posting

    async def _post(self, login: _Login, text: str, rkey: str) -> Outcome:
        session = await self._session(login)
        if not isinstance(session, Session):
            return session
        answer = await self._create_record(login, session, rkey, text)
        if isinstance(answer, httpx.Response) and _session_is_stale(answer):
            session = await self._renew(login, session)
            if not isinstance(session, Session):
                return session
            answer = await self._create_record(login, session, rkey, text)
            if isinstance(answer, httpx.Response) and _session_is_stale(answer):
                # Refused even when new (a clock far off, a revoked app password):
                # drop it so that the next attempt starts with a new login.
                await self._forget(login.cache_key)
                return Retryable(f"{describe(PROVIDER, answer)} (even with a new session)")
        if not isinstance(answer, httpx.Response):
            return answer
        return await self._posted(login, session, rkey, answer)

    async def _create_record(
        self, login: _Login, session: Session, rkey: str, text: str
    ) -> httpx.Response | Outcome:
        body = {
            "repo": session.did,
            "collection": POST_COLLECTION,
            "rkey": rkey,
            "record": post_record(text, self._ctx.clock.now()),
        }
        try:
            return await self._ctx.http.post(
                f"{login.service}{_CREATE_RECORD}",
                json=body,
                headers=_bearer(session.access_jwt),
            )
        except httpx.HTTPError as exc:
            return transport_failure(PROVIDER, exc)

    async def _posted(
        self, login: _Login, session: Session, rkey: str, response: httpx.Response
    ) -> Outcome:
        uri = f"at://{session.did}/{POST_COLLECTION}/{rkey}"
        status = response.status_code
        body = json_object(response)
        if 200 <= status < 300:
            created = body.get("uri")
            return Sent(created if isinstance(created, str) and created else uri)
        if _already_exists(*_xrpc_error(body)):
            return Sent(uri)
        if status >= 500 and await self._record_exists(login, session, rkey):
            return Sent(uri)  # an earlier attempt (or this one, before failing) posted it
        return self._failed(login, response)

    def _failed(self, login: _Login, response: httpx.Response) -> Outcome:
        status = response.status_code
        if status == 429:
            return Retryable(describe(PROVIDER, response), _rate_limit_reset(response, self._now))
        if status in RETRYABLE_STATUSES:
            return Retryable(describe(PROVIDER, response), retry_after(response, self._now))
        if status in (401, 403):
            return Permanent(
                f"{describe(PROVIDER, response)} (the session of {login.account.handle} "
                "may not post to its repository)"
            )
        return Permanent(describe(PROVIDER, response))

    async def _record_exists(self, login: _Login, session: Session, rkey: str) -> bool:
        params = {"repo": session.did, "collection": POST_COLLECTION, "rkey": rkey}
        try:
            response = await self._ctx.http.get(
                f"{login.service}{_GET_RECORD}", params=params, headers=_bearer(session.access_jwt)
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    @property
    def _now(self) -> datetime:
        return self._ctx.clock.now()

    # Sessions

    async def _session(self, login: _Login) -> Session | Outcome:
        """The shared session of this account, created when there is none."""
        session = await self._load(login.cache_key)
        if session is not None:
            return session
        async with self._lock(login.cache_key):
            session = await self._load(login.cache_key)  # another send may have made one
            if session is not None:
                return session
            created = await self._create_session(login)
            if isinstance(created, Session):
                await self._store(login.cache_key, created)
            return created

    async def _renew(self, login: _Login, stale: Session) -> Session | Outcome:
        """A fresh session in place of ``stale``: refreshed, else created anew."""
        async with self._lock(login.cache_key):
            current = await self._load(login.cache_key)
            if current is not None and current.access_jwt != stale.access_jwt:
                return current  # another send or dispatcher renewed it already
            session = await self._refresh_session(login, stale)
            if session is None:
                created = await self._create_session(login)
                if not isinstance(created, Session):
                    await self._forget(login.cache_key)
                    return created
                session = created
            await self._store(login.cache_key, session)
            return session

    async def _create_session(self, login: _Login) -> Session | Outcome:
        payload = {"identifier": login.account.handle, "password": login.password}
        try:
            response = await self._ctx.http.post(f"{login.service}{_CREATE_SESSION}", json=payload)
        except httpx.HTTPError as exc:
            return transport_failure(PROVIDER, exc)
        session = _session_from(response, fallback_did=None)
        if session is not None:
            return session
        what = f"{describe(PROVIDER, response)} to createSession for {login.account.handle}"
        if response.status_code == 429:
            return Retryable(what, _rate_limit_reset(response, self._now))
        if response.status_code in RETRYABLE_STATUSES:
            return Retryable(what, retry_after(response, self._now))
        if 200 <= response.status_code < 300:
            return Retryable(f"{PROVIDER} answered createSession without a usable session")
        return Permanent(f"{what} (check the app password in {login.account.app_password_env})")

    async def _refresh_session(self, login: _Login, stale: Session) -> Session | None:
        try:
            response = await self._ctx.http.post(
                f"{login.service}{_REFRESH_SESSION}", headers=_bearer(stale.refresh_jwt)
            )
        except httpx.HTTPError:
            return None
        return _session_from(response, fallback_did=stale.did)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _load(self, key: str) -> Session | None:
        try:
            raw = await self._ctx.redis.get(key)
        except RedisError:
            return self._memory.get(key)
        if raw is None:
            return None
        try:
            return Session(**json.loads(raw))
        except (TypeError, ValueError):
            return None

    async def _store(self, key: str, session: Session) -> None:
        self._memory[key] = session
        with contextlib.suppress(RedisError):  # this instance still has it in memory
            await self._ctx.redis.set(key, json.dumps(asdict(session)), px=SESSION_TTL // _MS)

    async def _forget(self, key: str) -> None:
        self._memory.pop(key, None)
        with contextlib.suppress(RedisError):
            await self._ctx.redis.delete(key)


_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True)
class _Login:
    account: BlueskyAccount
    password: str
    service: str

    @property
    def cache_key(self) -> str:
        digest = hashlib.sha256(f"{self.service}\n{self.account.handle}".encode()).hexdigest()
        return SESSION_KEY.format(account=digest[:32])


# The record


def post_record(text: str, now: datetime) -> dict[str, Any]:
    """An ``app.bsky.feed.post`` record: the text, when, and a link facet per URL."""
    record: dict[str, Any] = {"$type": POST_COLLECTION, "text": text, "createdAt": _datetime(now)}
    facets = link_facets(text)
    if facets:
        record["facets"] = facets
    return record


def link_facets(text: str) -> list[dict[str, Any]]:
    """A ``app.bsky.richtext.facet#link`` for every http(s) URL, at UTF-8 byte offsets."""
    facets: list[dict[str, Any]] = []
    for match in _URL.finditer(text):
        url = _trim(match.group(0))
        if len(url) <= len("https://"):
            continue
        start = len(text[: match.start()].encode())
        facets.append(
            {
                "index": {"byteStart": start, "byteEnd": start + len(url.encode())},
                "features": [{"$type": "app.bsky.richtext.facet#link", "uri": url}],
            }
        )
    return facets


def _trim(url: str) -> str:
    """Leave out sentence punctuation and an unbalanced closing bracket after a URL."""
    while url:
        last = url[-1]
        if last in _TRAILING or (last == ")" and url.count(")") > url.count("(")):
            url = url[:-1]
        else:
            break
    return url


def record_key(delivery: Delivery) -> str:
    """The record key of this delivery's post: a TID, the same on every attempt.

    ``app.bsky.feed.post`` records are keyed by TID (the lexicon says ``"key":
    "tid"``, and the AppView ignores posts under other keys), so the key is a TID
    built from the delivery alone: the whole seconds of its event's time (keys stay
    roughly in time order, as TIDs are meant to) plus sub-second microseconds and a
    10-bit clock id taken from a hash of the delivery id. The event time and the
    delivery id are the same on every retry and replay of the delivery.
    """
    digest = hashlib.sha256(f"bluesky-post:{delivery.delivery_id}".encode()).digest()
    micros_in_second = int.from_bytes(digest[:4], "big") % 1_000_000
    clock_id = int.from_bytes(digest[4:6], "big") & 0x3FF
    seconds = max(int(delivery.occurred_at.timestamp()), 0)
    timestamp = (seconds * 1_000_000 + micros_in_second) & ((1 << 53) - 1)
    return encode_tid(timestamp, clock_id)


def encode_tid(timestamp_us: int, clock_id: int) -> str:
    """A TID: 13 base32-sortable characters of (0, 53-bit µs timestamp, 10-bit clock id)."""
    value = ((timestamp_us & ((1 << 53) - 1)) << 10) | (clock_id & 0x3FF)
    chars = []
    for _ in range(13):
        chars.append(_TID_ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def _datetime(moment: datetime) -> str:
    """An atproto datetime: RFC 3339 in UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Reading answers


def _session_from(response: httpx.Response, fallback_did: str | None) -> Session | None:
    if not 200 <= response.status_code < 300:
        return None
    body = json_object(response)
    access, refresh = body.get("accessJwt"), body.get("refreshJwt")
    did = body.get("did") or fallback_did
    if not (isinstance(access, str) and isinstance(refresh, str) and isinstance(did, str)):
        return None
    if not (access and refresh and did):
        return None
    return Session(access_jwt=access, refresh_jwt=refresh, did=did)


def _session_is_stale(response: httpx.Response) -> bool:
    """The access token expired or was revoked: renew the session and try once more."""
    if response.status_code not in (400, 401):
        return False
    error, _ = _xrpc_error(json_object(response))
    return error in _STALE_SESSION_ERRORS or (
        response.status_code == 401 and error in (None, "AuthenticationRequired")
    )


def _already_exists(error: str | None, message: str | None) -> bool:
    text = f"{error or ''} {message or ''}".lower()
    return any(mark in text for mark in _ALREADY_EXISTS)


def _xrpc_error(body: dict[str, Any]) -> tuple[str | None, str | None]:
    error, message = body.get("error"), body.get("message")
    return (
        error if isinstance(error, str) else None,
        message if isinstance(message, str) else None,
    )


def _rate_limit_reset(response: httpx.Response, now: datetime) -> timedelta | None:
    """``Retry-After``, else ``RateLimit-Reset`` (epoch seconds) as a delay from ``now``."""
    wait = retry_after(response, now)
    if wait is not None:
        return wait
    value = response.headers.get("ratelimit-reset")
    if not value:
        return None
    try:
        reset = datetime.fromtimestamp(int(value.strip()), UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return max(reset - now, timedelta(0))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _account(ctx: DriverContext, delivery: Delivery) -> BlueskyAccount | None:
    try:
        entry = ctx.recipient_entry(delivery)
    except KeyError:
        return None
    return entry if isinstance(entry, BlueskyAccount) else None
