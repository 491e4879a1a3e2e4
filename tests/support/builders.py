"""Contract objects for tests, built from plain defaults that a test overrides by keyword.

Each builder validates what it builds, so a misspelt override fails loudly
(contracts forbid unknown fields). The defaults are stable and each builder's
docstring names the ones a test may assert on; a value that is the point of a
test (a time, a severity, a status) is best passed explicitly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from redis.asyncio import Redis

from services.dispatcher.fanout import Delivery
from shared.contracts import (
    AlertState,
    AlertStatus,
    Incident,
    IncidentOpened,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentStatus,
    IncidentUpdated,
    Severity,
    UpdateDue,
)
from shared.plan import ChannelName
from shared.streams import INCIDENTS_BY_TIME, incident_key

T0: Final = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
"""When the default incident opens: 14:30 UTC, Mon 23 Nov 2026."""


def make_alert_state(**overrides: Any) -> AlertState:
    """A firing critical alert, ``fp-1``."""
    values: dict[str, Any] = {
        "fingerprint": "fp-1",
        "status": AlertStatus.FIRING,
        "severity": Severity.CRITICAL,
        "summary": "HTTP 5xx ratio above 5%",
    }
    return AlertState.model_validate(values | overrides)


def make_incident(**overrides: Any) -> Incident:
    """Open, critical ``inc-1``, "Checkout is failing", no alerts; opened and updated at T0.

    ``updated_at`` follows an overridden ``opened_at`` unless overridden itself.
    """
    opened_at = overrides.get("opened_at", T0)
    values: dict[str, Any] = {
        "id": "inc-1",
        "key": "group-1",
        "source": "alertmanager",
        "title": "Checkout is failing",
        "impact": "Customers cannot place orders.",
        "severity": Severity.CRITICAL,
        "status": IncidentStatus.INVESTIGATING,
        "opened_at": opened_at,
        "updated_at": opened_at,
    }
    return Incident.model_validate(values | overrides)


def make_resolved_incident(
    *, resolved_at: datetime = T0 + timedelta(hours=1), **overrides: Any
) -> Incident:
    """``make_incident(**overrides)``, resolved and last updated at ``resolved_at``."""
    return make_incident(
        status=IncidentStatus.RESOLVED, updated_at=resolved_at, resolved_at=resolved_at, **overrides
    )


def _event(event_id: str, incident: Incident, overrides: dict[str, Any]) -> dict[str, Any]:
    """An event about ``incident``, by default at the time it was last updated."""
    values: dict[str, Any] = {
        "event_id": event_id,
        "occurred_at": incident.updated_at,
        "incident": incident,
    }
    return values | overrides


def make_incident_opened(incident: Incident | None = None, **overrides: Any) -> IncidentOpened:
    """``incident`` (``make_incident()`` by default) opened."""
    return IncidentOpened.model_validate(
        _event("ev-opened", make_incident() if incident is None else incident, overrides)
    )


def make_incident_updated(incident: Incident | None = None, **overrides: Any) -> IncidentUpdated:
    """``incident`` (``make_incident()`` by default) updated, with no changes listed."""
    return IncidentUpdated.model_validate(
        _event("ev-updated", make_incident() if incident is None else incident, overrides)
    )


def make_incident_severity_changed(
    incident: Incident | None = None,
    *,
    previous_severity: Severity = Severity.WARNING,
    **overrides: Any,
) -> IncidentSeverityChanged:
    """``incident`` (``make_incident()``: critical) changed from ``previous_severity``."""
    incident = make_incident() if incident is None else incident
    overrides = {"previous_severity": previous_severity, **overrides}
    return IncidentSeverityChanged.model_validate(
        _event("ev-severity-changed", incident, overrides)
    )


def make_incident_resolved(incident: Incident | None = None, **overrides: Any) -> IncidentResolved:
    """``incident`` (``make_resolved_incident()`` by default) resolved."""
    return IncidentResolved.model_validate(
        _event("ev-resolved", make_resolved_incident() if incident is None else incident, overrides)
    )


def make_update_due(
    *, sequence: int = 1, due_at: datetime = T0 + timedelta(minutes=30), **overrides: Any
) -> UpdateDue:
    """Update ``sequence`` of ``inc-1``, emitted on time, the next promised 30 minutes later."""
    values: dict[str, Any] = {
        "event_id": f"due-{sequence}",
        "incident_id": "inc-1",
        "sequence": sequence,
        "due_at": due_at,
        "emitted_at": due_at,
        "next_update_at": due_at + timedelta(minutes=30),
    }
    return UpdateDue.model_validate(values | overrides)


def make_delivery(**overrides: Any) -> Delivery:
    """An email for ``alice@example.com`` about event ``ev-1`` of ``inc-1``, at T0."""
    values: dict[str, Any] = {
        "delivery_id": "0123456789abcdef",
        "event_id": "ev-1",
        "incident_id": "inc-1",
        "channel": ChannelName.EMAIL,
        "recipient": "alice@example.com",
        "audience": "customers",
        "occurred_at": T0,
    } | overrides
    key = f"{values['event_id']}:{values['channel']}:{values['recipient']}"
    return Delivery(**({"idempotency_key": key} | values))


async def store_incident(redis: Redis, incident: Incident) -> None:
    """Write ``incident`` as ingest does: its JSON under its key, its id in the time index."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(incident_key(incident.id), incident.model_dump_json())
        pipe.zadd(INCIDENTS_BY_TIME, {incident.id: incident.opened_at.timestamp()})
        await pipe.execute()
