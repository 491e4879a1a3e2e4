"""The status page as people read it: open incidents first, then recently resolved. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from markdown_it import MarkdownIt
from markupsafe import Markup

from services.dispatcher.rendering.timefmt import format_timestamp
from services.dispatcher.status_page_store import StatusPageIncident

RESOLVED_WINDOW: Final = timedelta(days=7)
RESOLVED_SHOWN: Final = 10


@dataclass(frozen=True)
class StatusPage:
    organization: str
    generated_at: datetime
    open: tuple[StatusPageIncident, ...]
    resolved: tuple[StatusPageIncident, ...]

    @property
    def all_operational(self) -> bool:
        return not self.open


def build_status_page(
    incidents: Sequence[StatusPageIncident], organization: str, now: datetime
) -> StatusPage:
    """Open incidents newest first, then those resolved in the last week, newest first."""
    open_ = sorted((i for i in incidents if i.is_open), key=lambda i: i.opened_at, reverse=True)
    cutoff = now - RESOLVED_WINDOW
    resolved = sorted(
        (i for i in incidents if not i.is_open and _ended(i) >= cutoff),
        key=_ended,
        reverse=True,
    )[:RESOLVED_SHOWN]
    return StatusPage(organization, now, tuple(open_), tuple(resolved))


def status_json(page: StatusPage) -> dict[str, Any]:
    return {
        "organization": page.organization,
        "generated_at": page.generated_at.isoformat(),
        "status": "operational" if page.all_operational else "incident",
        "open": [i.model_dump(mode="json") for i in page.open],
        "recently_resolved": [i.model_dump(mode="json") for i in page.resolved],
    }


_MARKDOWN: Final = MarkdownIt("commonmark", {"html": False})  # raw HTML in an update is text


def markdown_html(text: str) -> Markup:
    """An update's Markdown body as safe HTML (links and emphasis; no raw HTML)."""
    return Markup(_MARKDOWN.render(text))  # noqa: S704  (markdown-it escapes; raw HTML is off)


def template_values(page: StatusPage, zones: Sequence[ZoneInfo]) -> dict[str, Any]:
    """What ``page/status.html.j2`` needs, with every time formatted in ``zones``."""
    return {
        "organization": page.organization,
        "generated": format_timestamp(page.generated_at, zones),
        "all_operational": page.all_operational,
        "open": [_incident(i, zones) for i in page.open],
        "resolved": [_incident(i, zones) for i in page.resolved],
    }


def _incident(incident: StatusPageIncident, zone: Sequence[ZoneInfo]) -> dict[str, Any]:
    return {
        "id": incident.id,
        "title": incident.title,
        "impact": incident.impact,
        "service": incident.service,
        "state": incident.state.value,
        "opened": format_timestamp(incident.opened_at, zone),
        "resolved": format_timestamp(incident.resolved_at, zone) if incident.resolved_at else None,
        "updates": [
            {
                "headline": u.headline,
                "body": markdown_html(u.body),
                "state": u.state.value,
                "posted": format_timestamp(u.posted_at, zone),
                "posted_iso": u.posted_at.isoformat(),
            }
            for u in incident.updates
        ],
    }


def _ended(incident: StatusPageIncident) -> datetime:
    return incident.resolved_at or incident.updated_at
