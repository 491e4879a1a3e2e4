"""What the status page templates get: every value already in readers' words and times.

Times are shown in the plan's zones with UTC always among them; each also carries its
ISO form, so the page's ``<time datetime>`` elements let a small script add the reader's
own zone. Update bodies are Markdown rendered to safe HTML (raw HTML in an update is text).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import Any, Final
from urllib.parse import quote
from zoneinfo import ZoneInfo

from markdown_it import MarkdownIt
from markupsafe import Markup

from services.dispatcher.rendering.timefmt import format_duration, format_timestamp
from services.dispatcher.status_page_store import StatusPageIncident
from services.dispatcher.status_view import (
    StatusPage,
    affected_components,
    ended,
    impact_of,
    next_update_of,
)
from shared.plan import Plan

_MARKDOWN: Final = MarkdownIt("commonmark", {"html": False})
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
STATE_WORDS: Final = {
    "investigating": "Investigating",
    "identified": "Identified",
    "monitoring": "Monitoring",
    "resolved": "Resolved",
}


def markdown_html(text: str) -> Markup:
    """An update's Markdown body as safe HTML (links and emphasis; no raw HTML)."""
    return Markup(_MARKDOWN.render(text))  # noqa: S704  (markdown-it escapes; raw HTML is off)


def incident_path(incident_id: str) -> str:
    """The incident's page, relative to the site root."""
    return f"/status/incidents/{quote(incident_id, safe='')}"


def page_zones(plan: Plan) -> tuple[ZoneInfo, ...]:
    """The plan's zones, with UTC added when the plan leaves it out."""
    zones = plan.zones
    if any(zone.key == "UTC" for zone in zones):
        return zones
    return (*zones, ZoneInfo("UTC"))


def moment(value: datetime, zones: Sequence[ZoneInfo]) -> dict[str, str]:
    return {"text": format_timestamp(value, zones), "iso": value.astimezone(UTC).isoformat()}


def status_page_values(page: StatusPage, plan: Plan) -> dict[str, Any]:
    """What ``page/status.html.j2`` needs."""
    zones = page_zones(plan)
    next_update = page.next_update_at
    return {
        "organization": page.organization,
        "generated": moment(page.generated_at, zones),
        "indicator": page.indicator.value,
        "tone": page.indicator.tone,
        "headline": page.indicator.description,
        "all_operational": page.all_operational,
        "next_update": moment(next_update, zones) if next_update else None,
        "components": [
            {
                "name": view.component.name,
                "description": view.component.description,
                "status": view.status.value,
                "words": view.status.words,
                "tone": view.status.tone,
            }
            for view in page.components
        ],
        "open": [incident_values(i, plan, page.generated_at) for i in page.open],
        "history_days": history_days(page.history, plan, page.generated_at),
    }


def incident_values(incident: StatusPageIncident, plan: Plan, now: datetime) -> dict[str, Any]:
    """One incident, as its card on the page and its own page show it."""
    zones = page_zones(plan)
    promise = next_update_of(incident)
    impact = impact_of(incident)
    words = plan.policy(incident.severity).name
    return {
        "id": incident.id,
        "path": incident_path(incident.id),
        "title": incident.title,
        "impact": incident.impact,
        "severity_words": words[:1].upper() + words[1:],
        "tone": impact.tone if incident.is_open else "ok",
        "open": incident.is_open,
        "state": incident.state.value,
        "state_words": STATE_WORDS[incident.state.value],
        "components": list(affected_components(plan, incident)),
        "started": moment(incident.opened_at, zones),
        "resolved": moment(incident.resolved_at, zones) if incident.resolved_at else None,
        "duration": format_duration(ended(incident) - incident.opened_at),
        "next_update": moment(promise, zones) if promise else None,
        "next_update_overdue": promise is not None and promise < now,
        "postmortem_url": incident.postmortem_url,
        "postmortem_summary": incident.postmortem_summary,
        "updates": [
            {
                "id": update.id,
                "state": update.state.value,
                "state_words": STATE_WORDS[update.state.value],
                "body": markdown_html(update.body),
                "posted": moment(update.posted_at, zones),
            }
            for update in incident.updates
        ],
    }


def history_days(
    history: Sequence[StatusPageIncident], plan: Plan, now: datetime
) -> list[dict[str, Any]]:
    """Resolved incidents grouped by the day they ended (in the plan's first zone)."""
    first = plan.zones[0]

    def day(incident: StatusPageIncident) -> str:
        local = ended(incident).astimezone(first)
        return f"{_DAYS[local.weekday()]} {local.day} {_MONTHS[local.month - 1]} {local.year}"

    return [
        {"date": date, "incidents": [incident_values(i, plan, now) for i in incidents]}
        for date, incidents in groupby(history, key=day)
    ]
