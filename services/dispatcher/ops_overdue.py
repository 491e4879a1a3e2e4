"""The ops overview: open incidents, and the audiences whose last update is overdue. Pure.

An audience is overdue when more than ``GRACE`` has passed since its last update was
due: the last SENT delivery plus the severity's cadence (nothing sent yet: since the
incident opened). A severity without a cadence is never overdue while open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Final

from services.dispatcher.fanout import plan_deliveries
from services.dispatcher.ops_views import SEVERITY_TONES, Moment, incident_href, moment
from services.dispatcher.rendering.timefmt import format_duration
from shared.contracts import Incident, UpdateDue
from shared.plan import Plan

GRACE: Final = timedelta(minutes=2)
"""How late an audience's update may be before the overview calls it overdue."""


@dataclass(frozen=True)
class UpdateCadence:
    """Whether one audience of an open incident heard from us as often as promised."""

    audience: str
    last_sent_at: datetime | None
    due_at: datetime | None  # None: the severity has no scheduled updates
    overdue: bool
    late_by: timedelta | None  # how far past due_at (None: not overdue)


def audience_cadence(
    audience: str,
    *,
    opened_at: datetime,
    last_sent_at: datetime | None,
    cadence: timedelta | None,
    now: datetime,
    grace: timedelta = GRACE,
) -> UpdateCadence:
    """Overdue when ``now`` is more than ``grace`` past the last send plus ``cadence``
    (nothing sent yet: past the opening). No cadence: never overdue while open."""
    if cadence is None:
        return UpdateCadence(audience, last_sent_at, None, overdue=False, late_by=None)
    due = opened_at if last_sent_at is None else last_sent_at + cadence
    late = now - due
    overdue = late > grace
    return UpdateCadence(audience, last_sent_at, due, overdue, late if overdue else None)


def expected_audiences(incident: Incident, plan: Plan, now: datetime) -> tuple[str, ...]:
    """The audiences the plan sends ``incident``'s scheduled updates to (fan-out decides)."""
    probe = UpdateDue(
        event_id=f"{incident.id}:ops-overview",
        incident_id=incident.id,
        sequence=1,
        due_at=now,
        emitted_at=now,
        next_update_at=None,
    )
    audiences = (d.audience for d in plan_deliveries(probe, incident, plan))
    return tuple(dict.fromkeys(audiences))


@dataclass(frozen=True)
class AudienceRow:
    name: str
    last_sent: Moment | None
    due: Moment | None
    overdue: bool
    words: str
    tone: str


@dataclass(frozen=True)
class OpenIncident:
    id: str
    href: str
    title: str
    severity: str
    severity_words: str
    tone: str
    status: str
    opened: Moment
    cadence_words: str
    audiences: tuple[AudienceRow, ...]

    @property
    def overdue(self) -> int:
        return sum(1 for row in self.audiences if row.overdue)


@dataclass(frozen=True)
class Overview:
    incidents: tuple[OpenIncident, ...]
    overdue: int
    generated: Moment


def build_overview(
    incidents: Sequence[Incident],
    last_sent: Mapping[str, Mapping[str, datetime | None]],
    plan: Plan,
    now: datetime,
    grace: timedelta = GRACE,
) -> Overview:
    """The open ones of ``incidents``; ``last_sent[incident id][audience]`` is the last
    SENT record of each audience expected to hear (see :func:`expected_audiences`)."""
    zone = plan.zones[0]
    shown: list[OpenIncident] = []
    for incident in incidents:
        if not incident.is_open:
            continue
        cadence = plan.cadence(incident.severity)
        rows = tuple(
            _audience_row(
                audience_cadence(
                    audience,
                    opened_at=incident.opened_at,
                    last_sent_at=sent,
                    cadence=cadence,
                    now=now,
                    grace=grace,
                ),
                zone,
            )
            for audience, sent in last_sent.get(incident.id, {}).items()
        )
        shown.append(
            OpenIncident(
                id=incident.id,
                href=incident_href(incident.id),
                title=incident.title,
                severity=incident.severity.sev,
                severity_words=plan.policy(incident.severity).name,
                tone=SEVERITY_TONES[incident.severity],
                status=incident.status.value,
                opened=moment(incident.opened_at, zone),
                cadence_words=_every(cadence),
                audiences=rows,
            )
        )
    return Overview(tuple(shown), sum(i.overdue for i in shown), moment(now, zone))


def _audience_row(cadence: UpdateCadence, zone: tzinfo) -> AudienceRow:
    last = moment(cadence.last_sent_at, zone) if cadence.last_sent_at else None
    due = moment(cadence.due_at, zone) if cadence.due_at else None
    if cadence.due_at is None:
        words, tone = "No scheduled updates", "info"
    elif cadence.late_by is not None:
        words, tone = f"Overdue by {format_duration(cadence.late_by)}", "critical"
    else:
        words, tone = "On schedule", "ok"
    return AudienceRow(cadence.audience, last, due, cadence.overdue, words, tone)


def _every(cadence: timedelta | None) -> str:
    if cadence is None:
        return "no scheduled updates"
    return "every " + format_duration(cadence).removeprefix("about ")
