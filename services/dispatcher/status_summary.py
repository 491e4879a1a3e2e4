"""``/status.json``: the page as data, shaped like the summary JSON of hosted status pages.

The shape is Atlassian Statuspage's public ``/api/v2/summary.json`` (``page``, ``status``,
``components``, ``incidents``, ``scheduled_maintenances``), which most status widgets,
chat integrations and aggregators read; the same documents are also served under
``/status/api/v2/``. Clarion adds fields widgets ignore: ``next_update_at`` and
``postmortem_url`` on incidents. The schema is ``schemas/status.schema.json`` (served at
``/status.schema.json``) and docs/status-json.md explains it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from services.dispatcher.status_page_store import StatusPageIncident
from services.dispatcher.status_view import (
    ComponentView,
    StatusPage,
    affected_components,
    impact_of,
    next_update_of,
)
from shared.plan import Plan

SCHEMA_PATH: Final = "schemas/status.schema.json"

IncidentUrl = Callable[[str], str]
"""The absolute address of an incident's page, by incident id."""


def page_id(organization: str) -> str:
    """A stable id for the page: its organization's name as a slug."""
    return re.sub(r"[^a-z0-9]+", "-", organization.lower()).strip("-") or "status"


def component_id(name: str) -> str:
    """A stable id for a component, from its name (renaming it makes a new component)."""
    return hashlib.sha256(name.casefold().encode()).hexdigest()[:12]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def page_object(page: StatusPage, plan: Plan, url: str, updated_at: datetime) -> dict[str, Any]:
    return {
        "id": page_id(page.organization),
        "name": page.organization,
        "url": url,
        "time_zone": plan.timezones[0],
        "updated_at": _iso(updated_at),
    }


def last_change(page: StatusPage) -> datetime:
    """When anything on the page last changed (the page's age when nothing ever did)."""
    changes = [i.updated_at for i in (*page.open, *page.history)]
    changes += [u.posted_at for i in (*page.open, *page.history) for u in i.updates]
    return max(changes, default=page.generated_at)


def summary_document(
    page: StatusPage, plan: Plan, url: str, incident_url: IncidentUrl
) -> dict[str, Any]:
    """The summary: overall status, components, unresolved incidents."""
    updated = last_change(page)
    pid = page_id(page.organization)
    components = component_objects(page, pid, updated)
    return {
        "page": page_object(page, plan, url, updated),
        "status": status_object(page),
        "components": components,
        "incidents": [incident_object(i, plan, pid, incident_url, components) for i in page.open],
        "scheduled_maintenances": [],
    }


def status_document(page: StatusPage, plan: Plan, url: str) -> dict[str, Any]:
    """``status.json``: only the page and its overall status."""
    return {
        "page": page_object(page, plan, url, last_change(page)),
        "status": status_object(page),
    }


def incidents_document(
    page: StatusPage, plan: Plan, url: str, incident_url: IncidentUrl
) -> dict[str, Any]:
    """``incidents.json``: open incidents, then those resolved in the last 90 days."""
    updated = last_change(page)
    pid = page_id(page.organization)
    components = component_objects(page, pid, updated)
    return {
        "page": page_object(page, plan, url, updated),
        "incidents": [
            incident_object(i, plan, pid, incident_url, components)
            for i in (*page.open, *page.history)
        ],
    }


def components_document(page: StatusPage, plan: Plan, url: str) -> dict[str, Any]:
    updated = last_change(page)
    return {
        "page": page_object(page, plan, url, updated),
        "components": component_objects(page, page_id(page.organization), updated),
    }


def status_object(page: StatusPage) -> dict[str, str]:
    return {"indicator": page.indicator.value, "description": page.indicator.description}


def component_objects(page: StatusPage, pid: str, updated: datetime) -> list[dict[str, Any]]:
    """The page's components, in the plan's order."""
    return [_component(view, n, pid, updated) for n, view in enumerate(page.components)]


def _component(view: ComponentView, position: int, pid: str, updated: datetime) -> dict[str, Any]:
    return {
        "id": component_id(view.component.name),
        "name": view.component.name,
        "status": view.status.value,
        "created_at": _iso(updated),
        "updated_at": _iso(updated),
        "position": position + 1,
        "description": view.component.description or None,
        "showcase": True,
        "start_date": None,
        "group_id": None,
        "page_id": pid,
        "group": False,
        "only_show_if_degraded": False,
    }


def incident_object(
    incident: StatusPageIncident,
    plan: Plan,
    pid: str,
    incident_url: IncidentUrl,
    components: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    names = set(affected_components(plan, incident))
    touched = [c for c in components if c["name"] in names]
    monitoring = [u.posted_at for u in incident.updates if u.state.value == "monitoring"]
    promise = next_update_of(incident)
    return {
        "id": incident.id,
        "name": incident.title,
        "status": incident.state.value,
        "created_at": _iso(incident.opened_at),
        "updated_at": _iso(incident.updated_at),
        "monitoring_at": _iso(min(monitoring)) if monitoring else None,
        "resolved_at": _iso(incident.resolved_at) if incident.resolved_at else None,
        "impact": impact_of(incident).value,
        "shortlink": incident_url(incident.id),
        "started_at": _iso(incident.opened_at),
        "page_id": pid,
        "incident_updates": [
            {
                "id": update.id,
                "status": update.state.value,
                "body": update.body,
                "incident_id": incident.id,
                "created_at": _iso(update.posted_at),
                "updated_at": _iso(update.posted_at),
                "display_at": _iso(update.posted_at),
                "affected_components": None,
                "deliver_notifications": True,
                "custom_tweet": None,
                "tweet_id": None,
            }
            for update in incident.updates
        ],
        "components": touched,
        "next_update_at": _iso(promise) if promise else None,
        "postmortem_url": incident.postmortem_url,
    }
