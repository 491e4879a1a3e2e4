"""How any change to an incident is committed: one revision, its timeline, its events.

Every change, whether alerts arriving, an operator's words or the end of a
"monitoring" hold, goes through :func:`commit`. It bumps the revision, stamps
``updated_at``, appends the timeline entry and names the events with
deterministic ids (:func:`shared.contracts.incident_event_id`), so the same
change always carries the same ids and a redelivery is a duplicate downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.contracts import (
    Incident,
    IncidentChange,
    IncidentOpened,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentUpdated,
    Severity,
    TimelineEntry,
    UpdateAuthor,
    incident_event_id,
)
from shared.plan import Plan

IncidentChangeEvent = IncidentChange


@dataclass(frozen=True)
class Correlation:
    """The outcome of one change: the state to store (None: store nothing) and its events."""

    incident: Incident | None
    events: list[IncidentChangeEvent] = field(default_factory=list)


NOTHING = Correlation(incident=None)


@dataclass(frozen=True)
class Announcement:
    """What a change tells people: plain sentences, and who said them."""

    changes: tuple[str, ...] = ()
    author: UpdateAuthor = UpdateAuthor.MONITORING
    message: str | None = None

    @property
    def text(self) -> str:
        return self.message or " ".join(self.changes)


def commit(
    current: Incident,
    now: datetime,
    updates: dict[str, Any],
    *,
    announce: Announcement | None = None,
    previous_severity: Severity | None = None,
    resolved: bool = False,
) -> Correlation:
    """``current`` with ``updates``, as the next revision, with the events that say so.

    ``announce`` gives an ``IncidentUpdated`` (unless ``resolved``, which gives an
    ``IncidentResolved``); ``previous_severity`` adds an ``IncidentSeverityChanged``.
    """
    draft = current.model_copy(update=updates)
    entry = _timeline_entry(draft, now, announce, previous_severity, resolved)
    timeline = (*current.timeline, entry) if entry else current.timeline
    incident = draft.model_copy(
        update={"revision": current.revision + 1, "updated_at": now, "timeline": timeline}
    )
    events: list[IncidentChangeEvent] = []
    if resolved:
        events.append(
            IncidentResolved(event_id=_id(incident, "resolved"), occurred_at=now, incident=incident)
        )
    elif announce is not None:
        events.append(
            IncidentUpdated(
                event_id=_id(incident, "updated"),
                occurred_at=now,
                incident=incident,
                changes=announce.changes,
                author=announce.author,
                message=announce.message,
            )
        )
    if previous_severity is not None and previous_severity is not incident.severity:
        events.append(
            IncidentSeverityChanged(
                event_id=_id(incident, "severity_changed"),
                occurred_at=now,
                incident=incident,
                previous_severity=previous_severity,
            )
        )
    return Correlation(incident, events)


def promised(event: IncidentChangeEvent, plan: Plan) -> IncidentChangeEvent:
    """``event`` with the next scheduled update it promises, by the plan's cadence.

    Stamped once, here, so the time a message promises is the time the scheduler fires.
    """
    incident = event.incident
    if not incident.is_open:
        return event
    at = plan.next_update_at(incident.severity, event.occurred_at)
    return event.model_copy(update={"next_update_at": at})


def opening(incident: Incident) -> Correlation:
    """A new incident at revision 1, with its ``IncidentOpened``."""
    entry = TimelineEntry(at=incident.opened_at, status=incident.status, message=incident.impact)
    first = incident.model_copy(update={"revision": 1, "timeline": (entry,)})
    event = IncidentOpened(
        event_id=_id(first, "opened"), occurred_at=first.opened_at, incident=first
    )
    return Correlation(first, [event])


def _id(incident: Incident, kind: str) -> str:
    return incident_event_id(incident.id, incident.revision, f"incident.{kind}")


def _timeline_entry(
    incident: Incident,
    now: datetime,
    announce: Announcement | None,
    previous_severity: Severity | None,
    resolved: bool,
) -> TimelineEntry | None:
    author = announce.author if announce else UpdateAuthor.MONITORING
    parts = [announce.text] if announce and announce.text else []
    if resolved and not parts:
        parts.append("This incident has been resolved.")
    if previous_severity is not None and previous_severity is not incident.severity:
        direction = "raised" if incident.severity.rank < previous_severity.rank else "lowered"
        parts.append(
            f"Severity {direction} from {previous_severity.sev} to {incident.severity.sev}."
        )
    if not parts:
        return None
    return TimelineEntry(at=now, status=incident.status, message=" ".join(parts), author=author)
