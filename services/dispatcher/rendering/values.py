"""What templates may use: the event and its incident, already in the words of one audience.

A public audience (customers) gets plain words only: the customer-facing title,
the impact, times with their zone. It never gets alerts, labels or source links,
so no template can leak them. An internal audience also gets the technical detail.

The scheduler's internal events (``ack_overdue``, ``postmortem_due``) add how long
it has been (``elapsed``), the severity's ``acknowledge_within`` and the operator
API path that posts the post-mortem; fan-out never routes them to a public audience.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import quote
from zoneinfo import ZoneInfo

from services.dispatcher.rendering.timefmt import format_duration, format_timestamp
from shared.contracts import (
    Incident,
    IncidentAckOverdue,
    IncidentChange,
    IncidentEscalation,
    IncidentOpened,
    IncidentPostmortemDue,
    IncidentPostmortemPublished,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentUpdated,
    UpdateDue,
)
from shared.plan import EventKind, Plan
from shared.settings import Settings

DispatchEvent = IncidentChange | IncidentEscalation | UpdateDue
"""What the dispatcher sends messages about."""

MAX_ALERTS_SHOWN: Final = 10
RUNBOOK_LINKS: Final = ("runbook", "dashboard", "panel")
"""The alert links an escalation names first (``AlertState.links`` keys), in this order."""
ACKNOWLEDGE_PATH: Final = "/v1/incidents/{incident_id}/acknowledge"
POSTMORTEM_PATH: Final = "/v1/incidents/{incident_id}/postmortem"
"""The operator API calls that acknowledge an incident and post its post-mortem
(ingest's ``/v1/incidents`` router)."""

_KINDS: Final[dict[type[Any], EventKind]] = {
    IncidentOpened: EventKind.OPENED,
    IncidentUpdated: EventKind.UPDATED,
    IncidentSeverityChanged: EventKind.SEVERITY_CHANGED,
    UpdateDue: EventKind.UPDATE_DUE,
    IncidentResolved: EventKind.RESOLVED,
    IncidentPostmortemPublished: EventKind.POSTMORTEM_PUBLISHED,
    IncidentAckOverdue: EventKind.ACK_OVERDUE,
    IncidentPostmortemDue: EventKind.POSTMORTEM_DUE,
}


def kind_of(event: DispatchEvent) -> EventKind:
    return _KINDS[type(event)]


def event_time(event: DispatchEvent) -> datetime:
    """When the event happened, as readers should see it."""
    return event.emitted_at if isinstance(event, UpdateDue) else event.occurred_at


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs besides the event: the plan and where the status page is."""

    plan: Plan
    status_url: str
    incident_pages: bool = False
    """The built-in page, where every incident has its own page under the status URL."""

    @classmethod
    def of(cls, plan: Plan, settings: Settings) -> RenderContext:
        return cls(
            plan=plan,
            status_url=plan.follow_url(settings.local_status_url),
            incident_pages=plan.status_page_url is None,
        )

    def follow_url(self, incident_id: str) -> str:
        """Where readers follow one incident: its own page on the built-in status page."""
        if self.incident_pages:
            return incident_page_url(self.status_url, incident_id)
        return self.status_url

    @property
    def zones(self) -> tuple[ZoneInfo, ...]:
        return self.plan.zones


def customer_title(incident: Incident, plan: Plan) -> str:
    """An operator's title, else the alerts' ``customer_summary``, else the plan's words."""
    if incident.headline_by_operator:
        return incident.title
    if incident.customer_title:
        return incident.customer_title
    words = plan.policy(incident.severity).name
    words = words[:1].upper() + words[1:]
    return f"{words} affecting {incident.service}" if incident.service else words


def incident_page_url(status_url: str, incident_id: str) -> str:
    """The stable address of one incident's page under the built-in status page."""
    return f"{status_url.rstrip('/')}/incidents/{quote(incident_id, safe='')}"


def promised_next_update(event: DispatchEvent) -> datetime | None:
    """When the next update is due, as a message about ``event`` promises it; None: none."""
    return None if kind_of(event) in _NO_NEXT_UPDATE else event.next_update_at


def template_values(
    event: DispatchEvent, incident: Incident, context: RenderContext, audience: str, public: bool
) -> dict[str, Any]:
    """Everything the templates may use for ``audience``, already formatted."""
    zones = context.zones
    kind = kind_of(event)
    moment = event_time(event)
    timestamp = format_timestamp(moment, zones)
    ended = incident.resolved_at or moment
    began = incident.began_at
    next_update = promised_next_update(event)
    policy = context.plan.policy(incident.severity)
    values: dict[str, Any] = {
        "kind": kind.value,
        "audience": audience,
        "internal": not public,
        "org": context.plan.organization,
        "incident_id": incident.id,
        "title": customer_title(incident, context.plan) if public else incident.title,
        "impact": incident.impact,
        "service": incident.service,
        "sev": incident.severity.sev,
        "severity_words": policy.name,
        "status": incident.status.value,
        "timestamp": timestamp,
        "next_update": format_timestamp(next_update, zones) if next_update else None,
        "status_url": context.follow_url(incident.id),
        "status_page_url": context.status_url,
        "started": format_timestamp(began, zones),
        "ended": timestamp if ended is moment else format_timestamp(ended, zones),
        "duration": format_duration(ended - began),
        "changes": list(event.changes) if isinstance(event, IncidentUpdated) else [],
        "message": event.message if isinstance(event, IncidentUpdated) else None,
        "sequence": event.sequence if isinstance(event, UpdateDue) else None,
        "previous_severity_words": None,
        "worse": False,
        "postmortem_url": incident.postmortem_url,
        "postmortem_summary": incident.postmortem_summary,
        "acknowledged_by": None,
        "external_url": None,
        "alerts": [],
        "alerts_more": 0,
        "elapsed": _elapsed(event, incident),
        "acknowledge_within": _exact(policy.acknowledge_within),
        "acknowledge_path": ACKNOWLEDGE_PATH.format(incident_id=incident.id),
        "postmortem_path": POSTMORTEM_PATH.format(incident_id=incident.id),
        "runbooks": [],
    }
    if isinstance(event, IncidentSeverityChanged):
        values["previous_severity_words"] = context.plan.policy(event.previous_severity).name
        values["worse"] = incident.severity.rank < event.previous_severity.rank
    if not public:
        values.update(_technical(incident, kind))
    return values


_NO_NEXT_UPDATE: Final = frozenset(
    {
        EventKind.RESOLVED,
        EventKind.POSTMORTEM_PUBLISHED,
        EventKind.ACK_OVERDUE,
        EventKind.POSTMORTEM_DUE,
    }
)


def _exact(span: timedelta | None) -> str | None:
    """A configured span, as written: "15 minutes" (whole minutes; no "about")."""
    return None if span is None else format_duration(span).removeprefix("about ")


def _elapsed(event: DispatchEvent, incident: Incident) -> str | None:
    """How long the incident has gone unacknowledged, or without a post-mortem."""
    if isinstance(event, IncidentAckOverdue):
        return format_duration(event.occurred_at - incident.opened_at)
    if isinstance(event, IncidentPostmortemDue):
        return format_duration(event.occurred_at - (incident.resolved_at or event.due_at))
    return None


def _technical(incident: Incident, kind: EventKind) -> dict[str, Any]:
    """Alerts, labels and links, for internal readers only."""
    alerts = incident.alerts if kind is EventKind.RESOLVED else incident.firing_alerts
    shown = [
        {
            "status": alert.status.value,
            "summary": alert.summary,
            "description": alert.description,
            "labels": ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items())),
            "links": [{"name": name, "url": url} for name, url in alert.links.items()],
        }
        for alert in (alerts or incident.alerts)[:MAX_ALERTS_SHOWN]
    ]
    hidden = len(alerts or incident.alerts) - len(shown) + incident.truncated_alerts
    return {
        "acknowledged_by": incident.acknowledged_by,
        "external_url": incident.external_url,
        "alerts": shown,
        "alerts_more": max(hidden, 0),
        "runbooks": _runbooks(incident),
    }


def _runbooks(incident: Incident) -> list[dict[str, str]]:
    """The runbook, dashboard and panel links of the incident's alerts, each URL once."""
    found: dict[str, str] = {}
    for name in RUNBOOK_LINKS:
        for alert in incident.alerts:
            url = alert.links.get(name)
            if url and url not in found:
                found[url] = name
    return [{"name": name, "url": url} for url, name in found.items()]
