"""Render: turn an event and its incident into the words a customer reads. Pure.

Every customer message carries the elements of good incident communication:
the impact in plain words, concern and control, an apology, the next update
time (except on resolution), the status page link, and a timestamp with time zone.
Technical detail (alert summaries) comes last, clearly labelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from services.dispatcher.plan import EMAIL, STATUS_PAGE, DispatchEvent, event_time
from services.dispatcher.templating import environment
from services.dispatcher.timefmt import format_duration, format_timestamp
from shared.contracts import (
    Incident,
    IncidentOpened,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentUpdated,
    Severity,
    UpdateDue,
)
from shared.settings import Settings

MAX_TECHNICAL_LINES: Final = 10

# What a severity means to a customer, in plain words.
SEVERITY_WORDS: Final[Mapping[Severity, str]] = {
    Severity.CRITICAL: "a major outage",
    Severity.ERROR: "a partial outage",
    Severity.WARNING: "degraded performance",
    Severity.INFO: "a minor issue",
}


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str | None = None


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs from the settings, and nothing else."""

    organization: str
    status_page_url: str
    timezone: ZoneInfo
    update_intervals: Mapping[Severity, timedelta]

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderContext:
        return cls(
            organization=settings.organization_name,
            status_page_url=settings.status_page_url,
            timezone=ZoneInfo(settings.display_timezone),
            update_intervals={s: settings.update_interval(s) for s in Severity},
        )


def kind_of(event: DispatchEvent) -> str:
    """The template name for an event: opened, updated, severity_changed, update_due, resolved."""
    kinds: dict[type[Any], str] = {
        IncidentOpened: "opened",
        IncidentUpdated: "updated",
        IncidentSeverityChanged: "severity_changed",
        UpdateDue: "update_due",
        IncidentResolved: "resolved",
    }
    return kinds[type(event)]


def next_update_at(event: DispatchEvent, incident: Incident, context: RenderContext) -> datetime:
    if isinstance(event, UpdateDue):
        return event.next_update_at
    return event.occurred_at + context.update_intervals[incident.severity]


def template_values(
    event: DispatchEvent, incident: Incident, context: RenderContext
) -> dict[str, Any]:
    """Everything the templates may use, already formatted."""
    zone = context.timezone
    kind = kind_of(event)
    resolved = kind == "resolved"
    ended = incident.resolved_at or event_time(event)
    alerts = incident.alerts if resolved else (incident.firing_alerts or incident.alerts)
    # One line per affected instance (its description tells them apart), no repeats.
    technical = list(dict.fromkeys(a.description or a.summary for a in alerts if a.summary))
    began = incident.began_at
    hidden = len(technical) - MAX_TECHNICAL_LINES + incident.truncated_alerts
    values: dict[str, Any] = {
        "kind": kind,
        "org": context.organization,
        "title": incident.title,
        "impact": incident.impact,
        "service": incident.service,
        "timestamp": format_timestamp(event_time(event), zone),
        "next_update": None
        if resolved
        else format_timestamp(next_update_at(event, incident, context), zone),
        "status_url": context.status_page_url,
        "severity_words": SEVERITY_WORDS[incident.severity],
        "started": format_timestamp(began, zone),
        "ended": format_timestamp(ended, zone),
        "duration": format_duration(ended - began),
        "technical": technical[:MAX_TECHNICAL_LINES],
        "technical_more": max(hidden, 0),
        "changes": list(event.changes) if isinstance(event, IncidentUpdated) else [],
        "message": event.message if isinstance(event, IncidentUpdated) else None,
        "status": incident.status.value,
        "sequence": event.sequence if isinstance(event, UpdateDue) else None,
        "previous_severity_words": None,
        "worse": False,
    }
    if isinstance(event, IncidentSeverityChanged):
        values["previous_severity_words"] = SEVERITY_WORDS[event.previous_severity]
        values["worse"] = incident.severity.rank < event.previous_severity.rank
    return values


def render(
    event: DispatchEvent, incident: Incident, context: RenderContext, channel: str = EMAIL
) -> RenderedMessage:
    """The message for ``event`` on ``channel`` (email: text + HTML; status page: text)."""
    env = environment()
    values = template_values(event, incident, context)
    kind = values["kind"]
    if channel == STATUS_PAGE:
        return RenderedMessage(
            subject=env.get_template("status_page/headline.txt.j2").render(values).strip(),
            text=env.get_template(f"status_page/{kind}.txt.j2").render(values).strip(),
        )
    return RenderedMessage(
        subject=" ".join(env.get_template("email/subject.txt.j2").render(values).split()),
        text=env.get_template(f"email/{kind}.txt.j2").render(values).strip() + "\n",
        html=env.get_template(f"email/{kind}.html.j2").render(values),
    )
