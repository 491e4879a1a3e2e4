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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from services.dispatcher.rendering.values import DispatchEvent, event_time, kind_of
from shared.contracts import Incident, UpdateDue
from shared.plan import ChannelName, Plan
from shared.plan.model import BROADCAST_CHANNELS

SUPPRESSED_RESOLVED: Final = "incident resolved"


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


def plan_deliveries(event: DispatchEvent, incident: Incident, plan: Plan) -> list[Delivery]:
    """Every delivery the plan routes ``event`` to, for ``incident`` as it stands."""
    reason = suppression_reason(event, incident)
    kind = kind_of(event)
    internal_only = plan.policy(incident.severity).internal_only or kind.internal_only
    routes = plan.routes_for(
        kind,
        incident.severity,
        incident.service,
        incident.components,
        tuple(alert.labels for alert in incident.alerts),
    )
    planned: dict[str, Delivery] = {}
    for route in routes:
        for name in route.audiences:
            audience = plan.audiences[name]
            if audience.public and internal_only:
                continue
            for channel in route.channels or audience.channels:
                if kind.internal_only and channel in BROADCAST_CHANNELS:
                    continue
                for recipient in audience.addresses(channel):
                    key = idempotency_key(event.event_id, channel.value, recipient)
                    if key in planned:
                        continue
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
                        suppressed_reason=reason,
                    )
    return list(planned.values())
