"""Fan-out: which deliveries an event gets, by the plan's routes. Pure; no I/O.

Every planned delivery has an idempotency key ``<event_id>:<channel>:<recipient>``
and a delivery id derived from it, so a redelivered event plans the same
deliveries and the idempotency store can tell which already happened. A
recipient in two audiences hears once, in the first audience's words.

Internal-only events (``EventKind.internal_only``: the scheduler's acknowledgement
escalation and post-mortem reminder) never reach a public audience, nor a channel
anyone can read (status page, social accounts), even when a route matches them by
default: routes hear every kind unless they list some. This is the one place that
decides, so the pipeline, approval and ``clarion plan check`` all agree.

Email subscribers of the status page (:class:`EmailSubscribers`, loaded by the
pipeline) are email recipients of every audience with ``subscribers: true``, with
the same idempotency keys, so an address both listed and subscribed hears once.
Public email to an address that unsubscribed is planned as suppressed, so the
delivery log says why it was not sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from services.dispatcher.rendering.values import DispatchEvent, event_time, kind_of
from services.dispatcher.subscriptions import canonical_address
from shared.contracts import Incident, UpdateDue
from shared.plan import ChannelName, Plan
from shared.plan.model import BROADCAST_CHANNELS, Audience

SUPPRESSED_RESOLVED: Final = "incident resolved"
SUPPRESSED_UNSUBSCRIBED: Final = "recipient unsubscribed"


@dataclass(frozen=True)
class Delivery:
    """One message to one recipient on one channel, for one event."""

    delivery_id: str
    idempotency_key: str
    event_id: str
    incident_id: str
    channel: ChannelName
    recipient: str
    audience: str
    occurred_at: datetime
    incident: Incident | None = None
    public: bool = False
    needs_approval: bool = False
    suppressed_reason: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.suppressed_reason is not None


def idempotency_key(event_id: str, channel: str, recipient: str) -> str:
    return f"{event_id}:{channel}:{recipient}"


def delivery_id_for(key: str) -> str:
    """A stable, opaque id for an idempotency key (also used in the email Message-ID)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def suppression_reason(event: DispatchEvent, incident: Incident) -> str | None:
    """Why an event must not be sent, or None. Only scheduled updates are ever suppressed."""
    if isinstance(event, UpdateDue) and not incident.is_open:
        return SUPPRESSED_RESOLVED
    return None


@dataclass(frozen=True)
class EmailSubscribers:
    """Who hears an event by email beyond the plan's lists, and whom public mail skips.

    Loaded by the pipeline (:mod:`.subscriptions`) for one event, only when
    :func:`email_reach` says a route needs it, so :func:`plan_deliveries` stays pure.
    """

    addresses: tuple[str, ...] = ()
    """Confirmed subscribers who hear of this incident (canonical addresses): recipients
    in every routed audience with ``subscribers: true`` that gets email."""
    unsubscribed: frozenset[str] = frozenset()
    """Canonical addresses that unsubscribed: a public audience's email to them is
    suppressed, plan-listed or not."""


NO_SUBSCRIBERS: Final = EmailSubscribers()


@dataclass(frozen=True)
class EmailReach:
    """What the email side of an event's fan-out needs to know before planning."""

    subscribers: bool
    """A routed audience with ``subscribers: true`` gets this event by email."""
    public_addresses: tuple[str, ...]
    """The plan-listed addresses of the routed public audiences that get it by email."""

    @property
    def needs_lookup(self) -> bool:
        return self.subscribers or bool(self.public_addresses)


def _targets(
    event: DispatchEvent, incident: Incident, plan: Plan
) -> Iterator[tuple[str, Audience, ChannelName]]:
    """(audience name, audience, channel) for every route that applies, in plan order;
    the same pair may come more than once."""
    kind = kind_of(event)
    internal_only = plan.policy(incident.severity).internal_only or kind.internal_only
    routes = plan.routes_for(
        kind,
        incident.severity,
        incident.service,
        incident.components,
        tuple(alert.labels for alert in incident.alerts),
    )
    for route in routes:
        for name in route.audiences:
            audience = plan.audiences[name]
            if audience.public and internal_only:
                continue
            for channel in route.channels or audience.channels:
                if kind.internal_only and channel in BROADCAST_CHANNELS:
                    continue
                yield name, audience, channel


def email_reach(event: DispatchEvent, incident: Incident, plan: Plan) -> EmailReach:
    """Whether planning ``event`` needs subscribers or the unsubscribed list at all."""
    subscribers = False
    public: dict[str, None] = {}
    for _, audience, channel in _targets(event, incident, plan):
        if channel is not ChannelName.EMAIL:
            continue
        subscribers = subscribers or audience.subscribers
        if audience.public:
            public.update(dict.fromkeys(audience.addresses(channel)))
    return EmailReach(subscribers=subscribers, public_addresses=tuple(public))


def plan_deliveries(
    event: DispatchEvent,
    incident: Incident,
    plan: Plan,
    subscribers: EmailSubscribers = NO_SUBSCRIBERS,
) -> list[Delivery]:
    """Every delivery the plan routes ``event`` to, for ``incident`` as it stands.

    ``subscribers``: the status page's email subscribers for this incident, and the
    addresses that unsubscribed (none unless given). A subscriber the plan also lists
    hears once, as the plan's recipient.
    """
    reason = suppression_reason(event, incident)
    planned: dict[str, Delivery] = {}
    emailed: set[str] = set()  # canonical addresses planned for email so far
    for name, audience, channel in _targets(event, incident, plan):
        is_email = channel is ChannelName.EMAIL
        for recipient, subscriber in _recipients(audience, channel, subscribers):
            canonical = canonical_address(recipient) if is_email else recipient
            if subscriber and canonical in emailed:
                continue  # the plan lists them (perhaps spelled otherwise): they hear once
            key = idempotency_key(event.event_id, channel.value, recipient)
            if key in planned:
                continue
            if is_email:
                emailed.add(canonical)
            unsubscribed = is_email and audience.public and canonical in subscribers.unsubscribed
            planned[key] = Delivery(
                delivery_id=delivery_id_for(key),
                idempotency_key=key,
                event_id=event.event_id,
                incident_id=event.incident_id,
                channel=channel,
                recipient=recipient,
                audience=name,
                occurred_at=event_time(event),
                incident=incident,
                public=audience.public,
                needs_approval=audience.public and plan.needs_approval(incident.severity),
                suppressed_reason=reason or (SUPPRESSED_UNSUBSCRIBED if unsubscribed else None),
            )
    return list(planned.values())


def _recipients(
    audience: Audience, channel: ChannelName, subscribers: EmailSubscribers
) -> Iterator[tuple[str, bool]]:
    """(recipient, is a subscriber): the plan's list first, then the subscribers."""
    for recipient in audience.addresses(channel):
        yield recipient, False
    if channel is ChannelName.EMAIL and audience.subscribers:
        for recipient in subscribers.addresses:
            yield recipient, True
