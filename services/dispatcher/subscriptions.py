"""Email subscribers of the status page: who asked, who confirmed, who left.

Double opt-in. A subscription request is kept as *pending* under a random token
that only the confirmation email carries; Redis holds the token's SHA-256, never
the token, so a copy of the database cannot confirm anyone. A pending request
lasts :data:`PENDING_FOR` (48 h) and confirms once: confirming reads and deletes
it in one command (``GETDEL``).

Confirmed subscribers are one hash, address -> ``{"components": [...],
"subscribed_at": ...}`` (no components: every incident), read in pages with
``HSCAN`` when an incident is fanned out, so ten thousand subscribers cost a few
round trips, not ten thousand. Unsubscribing removes the address from the hash
and adds its digest to the *unsubscribed* set; public audiences skip a plan-listed
address found there (it clicked the List-Unsubscribe link of our mail), and
subscribing again and confirming takes it out. Both changes are one MULTI/EXEC.

Addresses are compared in their canonical form (:func:`canonical_address`): no
surrounding space, domain in lower case (the local part is the mailbox owner's and
stays as written). Key names never contain an address: they carry its digest.

At most one confirmation email goes to an address per :data:`MAIL_EVERY` (10 min):
:meth:`SubscriptionStore.claim_confirmation_mail` is the gate, on the injected clock.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from shared.clock import Clock
from shared.logs import get_logger
from shared.redis_values import as_text
from shared.streams import PREFIX

PENDING_FOR: Final = timedelta(hours=48)
"""How long a confirmation link works."""
MAIL_EVERY: Final = timedelta(minutes=10)
"""At most one confirmation email per address in this time."""
SCAN_PAGE: Final = 1000
"""Subscribers read per HSCAN round trip."""
MAX_ADDRESS: Final = 254
"""RFC 5321's limit on a forward path, less the angle brackets."""

PENDING_KEY: Final = f"{PREFIX}:subscriptions:pending:{{token_digest}}"
CONFIRMED_KEY: Final = f"{PREFIX}:subscriptions:confirmed"
UNSUBSCRIBED_KEY: Final = f"{PREFIX}:subscriptions:unsubscribed"
MAIL_SENT_KEY: Final = f"{PREFIX}:subscriptions:mail-sent:{{address_digest}}"

TOKEN_BYTES: Final = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 43 characters, no padding
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

# Allow a mail when none went to the address within the window (on the caller's clock).
_CLAIM_MAIL = """
local last = redis.call('GET', KEYS[1])
if last and (tonumber(ARGV[1]) - tonumber(last)) < tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

log = get_logger("clarion.dispatcher.subscriptions")


class InvalidAddress(ValueError):
    """Not an email address we can send to (the message never repeats the input)."""


def canonical_address(address: str) -> str:
    """``address`` as subscriptions compare it: stripped, domain in lower case. No checks."""
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else address.strip()


def parse_address(raw: str) -> str:
    """The canonical form of a typed-in address; :class:`InvalidAddress` when it is not one.

    Plain ``local@domain`` only (no display names, no quoted local parts, no IP
    literals); an internationalised domain is stored in its ASCII (IDNA) form.
    """
    candidate = raw.strip()
    local, at, domain = candidate.rpartition("@")
    if not at or len(candidate) > MAX_ADDRESS or len(local) > 64 or not _LOCAL.fullmatch(local):
        raise InvalidAddress("enter an email address like name@example.com")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidAddress("the part after @ is not a domain name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidAddress("the part after @ is not a domain name")
    if labels[-1].isdigit():
        raise InvalidAddress("the part after @ is not a domain name")
    return f"{local}@{ascii_domain}"


def address_digest(address: str) -> str:
    """What key names and the unsubscribed set hold instead of an address."""
    return hashlib.sha256(canonical_address(address).encode("utf-8")).hexdigest()


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def well_formed_token(token: str) -> bool:
    """True when ``token`` could be one of ours (cheap check before any lookup)."""
    return bool(_TOKEN.fullmatch(token))


def chosen_components(requested: Iterable[str], known: Iterable[str]) -> tuple[str, ...]:
    """The plan's names for the components a form asked for (any case), in plan order.

    Raises ValueError naming the first that the plan does not have.
    """
    names = list(known)
    by_folded = {name.casefold(): name for name in names}
    picked: set[str] = set()
    for name in requested:
        found = by_folded.get(name.strip().casefold())
        if found is None:
            raise ValueError(f"there is no component called {name.strip()!r}")
        picked.add(found)
    return tuple(name for name in names if name in picked)


def hears(chosen: Collection[str], touched: Collection[str], known: Collection[str]) -> bool:
    """Does a subscriber who chose ``chosen`` hear of an incident touching ``touched``?

    Yes when they chose nothing (every incident), when the incident touches none of
    the plan's components (``known``), or when it touches one they chose. A subscriber
    whose every choice has left the plan hears everything rather than nothing.
    """
    if not chosen or not touched:
        return True
    folded_known = {name.casefold() for name in known}
    still_there = {name.casefold() for name in chosen} & folded_known
    if not still_there:
        return True
    return bool(still_there & {name.casefold() for name in touched})


class _Stored(BaseModel):
    model_config = ConfigDict(frozen=True)


class PendingSubscription(_Stored):
    """A request waiting for its confirmation link to be used."""

    address: str
    components: tuple[str, ...] = ()
    requested_at: AwareDatetime
    expires_at: AwareDatetime


class Subscription(_Stored):
    """A confirmed subscriber's choice (no components: every incident)."""

    components: tuple[str, ...] = ()
    subscribed_at: AwareDatetime


@dataclass(frozen=True)
class Subscriber:
    address: str
    subscription: Subscription


def audience_of(
    subscribers: Iterable[Subscriber], touched: Collection[str], known: Collection[str]
) -> list[str]:
    """The addresses of ``subscribers`` who hear of an incident touching ``touched``, sorted."""
    return sorted(
        s.address for s in subscribers if hears(s.subscription.components, touched, known)
    )


class SubscriptionStore:
    """Pending requests, confirmed subscribers and unsubscribed addresses, in Redis."""

    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock
        self._claim_mail = redis.register_script(_CLAIM_MAIL)

    # Asking and confirming

    async def request(
        self, address: str, components: tuple[str, ...] = ()
    ) -> tuple[str, PendingSubscription]:
        """Keep a pending request for ``address``; returns the token for its link, and it."""
        now = self._clock.now()
        pending = PendingSubscription(
            address=canonical_address(address),
            components=components,
            requested_at=now,
            expires_at=now + PENDING_FOR,
        )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        key = PENDING_KEY.format(token_digest=_token_digest(token))
        await self._redis.set(key, pending.model_dump_json(), ex=PENDING_FOR)
        return token, pending

    async def pending(self, token: str) -> PendingSubscription | None:
        """The request ``token`` confirms, without using it up; None when there is none."""
        if not well_formed_token(token):
            return None
        raw = await self._redis.get(PENDING_KEY.format(token_digest=_token_digest(token)))
        return self._live(raw)

    async def confirm(self, token: str) -> Subscriber | None:
        """Use ``token`` (once): the address becomes a subscriber. None for an unknown,
        used or expired token."""
        if not well_formed_token(token):
            return None
        raw = await self._redis.getdel(PENDING_KEY.format(token_digest=_token_digest(token)))
        pending = self._live(raw)
        if pending is None:
            return None
        subscription = Subscription(components=pending.components, subscribed_at=self._clock.now())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(CONFIRMED_KEY, pending.address, subscription.model_dump_json())
            pipe.srem(UNSUBSCRIBED_KEY, address_digest(pending.address))
            await pipe.execute()
        log.info("subscription.confirmed", components=len(pending.components))
        return Subscriber(pending.address, subscription)

    def _live(self, raw: bytes | str | None) -> PendingSubscription | None:
        if raw is None:
            return None
        try:
            pending = PendingSubscription.model_validate_json(raw)
        except ValidationError:
            log.warning("subscription.pending_unreadable")
            return None
        return pending if self._clock.now() < pending.expires_at else None

    # Leaving

    async def unsubscribe(self, address: str) -> None:
        """``address`` hears no more: not as a subscriber, nor as a public plan recipient."""
        canonical = canonical_address(address)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(CONFIRMED_KEY, canonical)
            pipe.sadd(UNSUBSCRIBED_KEY, address_digest(canonical))
            await pipe.execute()
        log.info("subscription.unsubscribed")

    async def unsubscribed_among(self, addresses: Iterable[str]) -> frozenset[str]:
        """The canonical forms of those ``addresses`` that unsubscribed (one round trip)."""
        canonical = sorted({canonical_address(a) for a in addresses})
        if not canonical:
            return frozenset()
        found = await self._redis.smismember(
            UNSUBSCRIBED_KEY, [address_digest(a) for a in canonical]
        )
        return frozenset(a for a, there in zip(canonical, found, strict=True) if there)

    # Throttling the confirmation mail

    async def claim_confirmation_mail(self, address: str) -> bool:
        """True when a confirmation mail may go to ``address`` now (and counts it)."""
        key = MAIL_SENT_KEY.format(address_digest=address_digest(address))
        now_ms = int(self._clock.now().timestamp() * 1000)
        window_ms = int(MAIL_EVERY.total_seconds() * 1000)
        allowed = await self._claim_mail(keys=[key], args=[now_ms, window_ms])
        return bool(allowed)

    async def release_confirmation_mail(self, address: str) -> None:
        """The mail could not be sent: let the next request try at once."""
        await self._redis.delete(MAIL_SENT_KEY.format(address_digest=address_digest(address)))

    # Reading subscribers

    async def subscription(self, address: str) -> Subscription | None:
        raw = await self._redis.hget(CONFIRMED_KEY, canonical_address(address))
        return None if raw is None else _subscription(canonical_address(address), raw)

    async def subscribers(self) -> list[Subscriber]:
        """Every confirmed subscriber, read in pages (HSCAN), never one by one."""
        found: list[Subscriber] = []
        async for field, raw in self._redis.hscan_iter(CONFIRMED_KEY, count=SCAN_PAGE):
            address = as_text(field)
            subscription = _subscription(address, raw)
            if subscription is not None:
                found.append(Subscriber(address, subscription))
        return found

    async def add_confirmed(self, subscribers: Mapping[str, tuple[str, ...]]) -> None:
        """Subscribe addresses that opted in elsewhere (a list being imported): address ->
        components, written in batches. The addresses are checked like a typed-in one."""
        now = self._clock.now()
        entries = {
            parse_address(address): Subscription(
                components=components, subscribed_at=now
            ).model_dump_json()
            for address, components in subscribers.items()
        }
        addresses = list(entries)
        for start in range(0, len(addresses), SCAN_PAGE):
            batch = addresses[start : start + SCAN_PAGE]
            mapping: dict[FieldT, EncodableT] = {a: entries[a] for a in batch}
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(CONFIRMED_KEY, mapping=mapping)
                pipe.srem(UNSUBSCRIBED_KEY, *(address_digest(a) for a in batch))
                await pipe.execute()

    async def count(self) -> int:
        return int(await self._redis.hlen(CONFIRMED_KEY))

    async def recipients_for(self, touched: Collection[str], known: Collection[str]) -> list[str]:
        """The subscribers who hear of an incident touching the plan components ``touched``
        (``known``: every component the plan has)."""
        return audience_of(await self.subscribers(), touched, known)


def _subscription(address: str, raw: bytes | str) -> Subscription | None:
    try:
        return Subscription.model_validate_json(raw)
    except ValidationError:
        log.warning("subscription.unreadable", address_digest=address_digest(address)[:12])
        return None
