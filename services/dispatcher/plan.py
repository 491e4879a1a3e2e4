"""Plan: which deliveries an event gets. Pure; no I/O.

Every planned delivery has an idempotency key ``<event_id>:<channel>:<recipient>``
and a delivery id derived from it, so a redelivered event plans the same
deliveries and the idempotency store can tell which already happened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from shared.contracts import Incident, IncidentEvent, UpdateDue

EMAIL: Final = "email"
STATUS_PAGE: Final = "status_page"
STATUS_PAGE_RECIPIENT: Final = "status-page"

SUPPRESSED_RESOLVED: Final = "incident resolved"
SUPPRESSED_UNKNOWN: Final = "incident not found"

DispatchEvent = IncidentEvent | UpdateDue


@dataclass(frozen=True)
class Delivery:
    """One message to one recipient on one channel, for one event."""

    delivery_id: str
    idempotency_key: str
    event_id: str
    incident_id: str
    channel: str
    recipient: str
    occurred_at: datetime
    incident: Incident | None = None
    suppressed_reason: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.suppressed_reason is not None


def idempotency_key(event_id: str, channel: str, recipient: str) -> str:
    return f"{event_id}:{channel}:{recipient}"


def delivery_id_for(key: str) -> str:
    """A stable, opaque id for an idempotency key (also used in the email Message-ID)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def event_time(event: DispatchEvent) -> datetime:
    """When the event happened, as customers should see it."""
    return event.emitted_at if isinstance(event, UpdateDue) else event.occurred_at


def suppression_reason(event: DispatchEvent, incident: Incident | None) -> str | None:
    """Why an event must not be sent, or None. Only scheduled updates are ever suppressed."""
    if not isinstance(event, UpdateDue):
        return None
    if incident is None:
        return SUPPRESSED_UNKNOWN
    if not incident.is_open:
        return SUPPRESSED_RESOLVED
    return None


def plan(
    event: DispatchEvent, incident: Incident | None, email_recipients: Sequence[str]
) -> list[Delivery]:
    """One email per recipient plus one status-page post.

    ``incident`` is the current incident state for an :class:`UpdateDue` (None when it
    is unknown); for incident events it is ignored in favour of ``event.incident``.
    """
    if not isinstance(event, UpdateDue):
        incident = event.incident
    reason = suppression_reason(event, incident)
    targets = [(EMAIL, address) for address in dict.fromkeys(email_recipients)]
    targets.append((STATUS_PAGE, STATUS_PAGE_RECIPIENT))
    deliveries = []
    for channel, recipient in targets:
        key = idempotency_key(event.event_id, channel, recipient)
        deliveries.append(
            Delivery(
                delivery_id=delivery_id_for(key),
                idempotency_key=key,
                event_id=event.event_id,
                incident_id=event.incident_id,
                channel=channel,
                recipient=recipient,
                occurred_at=event_time(event),
                incident=incident,
                suppressed_reason=reason,
            )
        )
    return deliveries
