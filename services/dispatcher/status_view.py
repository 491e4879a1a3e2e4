"""The status page as people read it: the overall status, components, open incidents, and
the last 90 days of resolved ones. Pure: the routes load incidents, this decides what shows.

Words and levels follow common hosted status pages, so readers (and widgets reading
``/status.json``) meet what they know: the page's indicator is ``none``, ``minor``,
``major`` or ``critical``; a component is ``operational``, ``degraded_performance``,
``partial_outage`` or ``major_outage``. Both follow the most severe open incident:
SEV1 is critical (components: major outage), SEV2 major (partial outage), SEV3 minor
(degraded performance). Internal-only severities never reach the page at all: the
page only holds what the plan routes to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from services.dispatcher.status_page_store import StatusPageIncident, StatusPageUpdate
from shared.contracts import Severity
from shared.plan import Component, Plan

HISTORY: Final = timedelta(days=90)
"""How far back resolved incidents are listed."""


class Indicator(StrEnum):
    """The page's overall level, worst open incident first."""

    NONE = "none"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def description(self) -> str:
        return _INDICATOR_WORDS[self]

    @property
    def tone(self) -> str:
        return {"none": "ok"}.get(self.value, self.value)


class ComponentStatus(StrEnum):
    OPERATIONAL = "operational"
    DEGRADED_PERFORMANCE = "degraded_performance"
    PARTIAL_OUTAGE = "partial_outage"
    MAJOR_OUTAGE = "major_outage"

    @property
    def words(self) -> str:
        return self.value.replace("_", " ").capitalize()

    @property
    def tone(self) -> str:
        return _COMPONENT_TONES[self]


_INDICATOR_WORDS: Final = {
    Indicator.NONE: "All systems operational",
    Indicator.MINOR: "Degraded performance",
    Indicator.MAJOR: "Partial outage",
    Indicator.CRITICAL: "Major outage",
}
_COMPONENT_TONES: Final = {
    ComponentStatus.OPERATIONAL: "ok",
    ComponentStatus.DEGRADED_PERFORMANCE: "minor",
    ComponentStatus.PARTIAL_OUTAGE: "major",
    ComponentStatus.MAJOR_OUTAGE: "critical",
}
_IMPACT: Final = {
    Severity.CRITICAL: Indicator.CRITICAL,
    Severity.ERROR: Indicator.MAJOR,
    Severity.WARNING: Indicator.MINOR,
    Severity.INFO: Indicator.NONE,
}
_COMPONENT_STATUS: Final = {
    Severity.CRITICAL: ComponentStatus.MAJOR_OUTAGE,
    Severity.ERROR: ComponentStatus.PARTIAL_OUTAGE,
    Severity.WARNING: ComponentStatus.DEGRADED_PERFORMANCE,
    Severity.INFO: ComponentStatus.OPERATIONAL,
}


def impact_of(incident: StatusPageIncident) -> Indicator:
    """How bad an incident is on the page's scale (SEV1 critical ... SEV4 none)."""
    return _IMPACT[incident.severity]


@dataclass(frozen=True)
class ComponentView:
    component: Component
    status: ComponentStatus
    incident_ids: tuple[str, ...]
    """The open incidents touching it, most severe first."""


@dataclass(frozen=True)
class StatusPage:
    organization: str
    generated_at: datetime
    indicator: Indicator
    components: tuple[ComponentView, ...]
    open: tuple[StatusPageIncident, ...]
    """Open incidents, most severe first, then newest first."""
    history: tuple[StatusPageIncident, ...]
    """Incidents resolved in the last 90 days, most recently resolved first."""

    @property
    def all_operational(self) -> bool:
        return not self.open

    @property
    def next_update_at(self) -> datetime | None:
        """The soonest next update any open incident has promised."""
        promises = [p for p in (next_update_of(i) for i in self.open) if p is not None]
        return min(promises, default=None)


def build_status_page(
    incidents: Sequence[StatusPageIncident], plan: Plan, now: datetime
) -> StatusPage:
    """What the page shows of ``incidents`` at ``now``."""
    open_ = sorted(
        (i for i in incidents if i.is_open),
        key=lambda i: (i.severity.rank, -i.opened_at.timestamp()),
    )
    cutoff = now - HISTORY
    history = sorted(
        (i for i in incidents if not i.is_open and ended(i) >= cutoff),
        key=ended,
        reverse=True,
    )
    worst = min((i.severity for i in open_), key=lambda s: s.rank, default=None)
    indicator = Indicator.NONE if worst is None else _IMPACT[worst]
    return StatusPage(
        organization=plan.organization,
        generated_at=now,
        indicator=indicator,
        components=component_views(plan, open_),
        open=tuple(open_),
        history=tuple(history),
    )


def component_views(
    plan: Plan, open_incidents: Sequence[StatusPageIncident]
) -> tuple[ComponentView, ...]:
    """Each plan component with the status its worst open incident gives it."""
    touching: dict[str, list[StatusPageIncident]] = {c.name: [] for c in plan.components}
    for incident in open_incidents:
        for name in affected_components(plan, incident):
            touching[name].append(incident)
    views = []
    for component in plan.components:
        incidents = sorted(touching[component.name], key=lambda i: i.severity.rank)
        status = (
            _COMPONENT_STATUS[incidents[0].severity] if incidents else ComponentStatus.OPERATIONAL
        )
        views.append(ComponentView(component, status, tuple(i.id for i in incidents)))
    return tuple(views)


def affected_components(plan: Plan, incident: StatusPageIncident) -> tuple[str, ...]:
    """The plan's components an incident touches: by its service, or named by an operator."""
    return plan.components_of(incident.service, incident.components)


def next_update_of(incident: StatusPageIncident) -> datetime | None:
    """The next update the latest update of an open incident promised."""
    latest = latest_update(incident)
    if not incident.is_open or latest is None:
        return None
    return latest.next_update_at


def latest_update(incident: StatusPageIncident) -> StatusPageUpdate | None:
    return max(incident.updates, key=lambda u: (u.posted_at, u.id), default=None)


def ended(incident: StatusPageIncident) -> datetime:
    return incident.resolved_at or incident.updated_at
