"""What people and timers do to an incident, as pure functions.

Alerts change incidents through :mod:`services.ingest.correlation`; everything
else does through here: an acknowledgement (PagerDuty's, or an operator's), an
operator's written update, an operator's resolution, and the end of the
"monitoring" hold. Each returns a :class:`Correlation` committed as one revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.ingest.incident_change import NOTHING, Announcement, Correlation, commit
from shared.contracts import (
    Incident,
    IncidentPostmortemPublished,
    IncidentStatus,
    UpdateAuthor,
    incident_event_id,
)
from shared.errors import ClarionError

ACKNOWLEDGED = "The team has acknowledged the problem and is working on it."
POSTMORTEM = "The post-mortem is published."


class IncidentClosed(ClarionError):
    """The incident is resolved: it takes no more changes (answered with a 409)."""


class IncidentOpen(ClarionError):
    """The incident is still open: it has no post-mortem yet (answered with a 409)."""


@dataclass(frozen=True)
class OperatorUpdate:
    """A human-written update, with optional changes to what customers are told."""

    message: str
    status: IncidentStatus | None = None
    title: str | None = None
    impact: str | None = None
    components: tuple[str, ...] | None = None
    author: str | None = None


def acknowledge(current: Incident, now: datetime, by: str | None = None) -> Correlation:
    """Someone is on it: "investigating" becomes "identified". Repeats change nothing."""
    _require_open(current)
    if current.acknowledged_at is not None:
        return NOTHING
    updates: dict[str, Any] = {"acknowledged_at": now, "acknowledged_by": by}
    if current.status is IncidentStatus.INVESTIGATING:
        updates["status"] = IncidentStatus.IDENTIFIED
    return commit(
        current, now, updates, announce=Announcement((ACKNOWLEDGED,), UpdateAuthor.OPERATOR)
    )


def post_update(current: Incident, now: datetime, update: OperatorUpdate) -> Correlation:
    """An operator's update. It always goes out, and the update cadence counts from it."""
    _require_open(current)
    if update.status is IncidentStatus.RESOLVED:
        return resolve(current, now, update.message, headline=update)
    updates = _headline_updates(update)
    if update.status is not None and update.status is not current.status:
        updates["status"] = update.status
        if update.status is IncidentStatus.IDENTIFIED and current.acknowledged_at is None:
            updates.update(acknowledged_at=now, acknowledged_by=update.author)
        if update.status is not IncidentStatus.MONITORING:
            updates.update(monitoring_since=None, resolves_at=None)
        elif current.monitoring_since is None:
            updates["monitoring_since"] = now
    announce = Announcement(author=UpdateAuthor.OPERATOR, message=update.message)
    return commit(current, now, updates, announce=announce)


def resolve(
    current: Incident,
    now: datetime,
    message: str | None = None,
    *,
    headline: OperatorUpdate | None = None,
) -> Correlation:
    """An operator declares the incident over, whatever the alerts say."""
    _require_open(current)
    updates = _headline_updates(headline) if headline else {}
    updates.update(status=IncidentStatus.RESOLVED, resolved_at=now, resolves_at=None)
    announce = Announcement(author=UpdateAuthor.OPERATOR, message=message) if message else None
    return commit(current, now, updates, announce=announce, resolved=True)


def end_hold(current: Incident, monitoring_since: datetime, now: datetime) -> Correlation:
    """The "monitoring" hold that began at ``monitoring_since`` is over: resolve.

    Does nothing when that hold no longer stands: the problem came back, an
    operator changed the status, or the incident is already resolved.
    """
    if (
        not current.is_open
        or current.resolves_at is None
        or current.monitoring_since != monitoring_since
    ):
        return NOTHING
    updates = {
        "status": IncidentStatus.RESOLVED,
        "resolved_at": _recovered_at(current),
        "resolves_at": None,
    }
    return commit(current, now, updates, resolved=True)


def publish_postmortem(
    current: Incident, now: datetime, url: str, summary: str | None = None
) -> Correlation:
    """The post-mortem of a resolved incident is out. The same link again changes nothing."""
    if current.is_open:
        raise IncidentOpen(
            f"incident {current.id} is still open; resolve it before posting its post-mortem"
        )
    if current.postmortem_url == url and current.postmortem_summary == summary:
        return NOTHING
    updates = {"postmortem_url": url, "postmortem_summary": summary}
    draft = commit(current, now, updates, announce=Announcement((POSTMORTEM,)))
    assert draft.incident is not None
    event = IncidentPostmortemPublished(
        event_id=incident_event_id(
            current.id, draft.incident.revision, "incident.postmortem_published"
        ),
        occurred_at=now,
        incident=draft.incident,
    )
    return Correlation(draft.incident, [event])


def _headline_updates(update: OperatorUpdate) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    if update.title:
        updates["title"] = update.title
    if update.impact:
        updates["impact"] = update.impact
    if updates:
        updates["headline_by_operator"] = True
    if update.components is not None:
        updates["components"] = update.components
    return updates


def _recovered_at(incident: Incident) -> datetime:
    """When the last alert ended, if every alert says so plausibly; else when monitoring began."""
    fallback = incident.monitoring_since or incident.updated_at
    ends = [a.ends_at for a in incident.alerts]
    if not ends or any(end is None for end in ends):
        return fallback
    last = max(end for end in ends if end is not None)
    return last if incident.began_at <= last <= fallback else fallback


def _require_open(incident: Incident) -> None:
    if not incident.is_open:
        raise IncidentClosed(f"incident {incident.id} is resolved; it takes no more changes")
