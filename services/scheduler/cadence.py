"""The cadence rules, as pure functions: when the next update of an incident is due.

* An incident event carries the ``next_update_at`` it promised (stamped once by
  ingest from the plan's cadence). The pending item moves to exactly that time
  and keeps its sequence. With no promise (a severity updated only on open and
  resolve) the item stays, dormant (due :data:`NEVER`), so its sequence and basis
  survive: a later re-arm never reuses an update id, and a stale event can't
  re-arm it. An event older than the item's basis (a reclaimed, stale event)
  changes nothing: the basis never moves backwards.
* A resolved incident (``IncidentResolved``, a post-mortem) has no pending item.
* Firing update #n at ``fired_at``: the next one (#n+1) is due one interval after
  ``fired_at``. A late scheduler fires late; it never skips and never bursts.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.contracts import IncidentEvent, Severity, UpdateDue

IntervalFor = Callable[[Severity], timedelta | None]
"""How long between updates for a severity (``Plan.cadence``); None: no scheduled updates."""


class DueItem(BaseModel):
    """Something the scheduler must do at ``due_at`` for one incident."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    incident_id: str
    due_at: AwareDatetime


NEVER: Final = datetime(9999, 1, 1, tzinfo=UTC)
"""The due time of a dormant item: the incident is owed no scheduled update now."""


class ScheduleItem(DueItem):
    """The next update an open incident owes its audience."""

    sequence: int = Field(ge=1)
    severity: Severity
    basis_at: AwareDatetime

    @property
    def promised(self) -> bool:
        """False while dormant (its severity has no cadence)."""
        return self.due_at < NEVER


def update_event_id(incident_id: str, sequence: int) -> str:
    """The deterministic id of update #``sequence``: a repeated fire is a duplicate."""
    return f"{incident_id}:update:{sequence}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def floor_ms(moment: datetime) -> int:
    """``moment`` in whole milliseconds since the epoch, rounded down (for "now")."""
    return (moment - _EPOCH) // _MS


def ceil_ms(moment: datetime) -> int:
    """``moment`` in whole milliseconds since the epoch, rounded up (for due times).

    With due scores rounded up and "now" rounded down, an item is never claimed
    before its due time.
    """
    return -((_EPOCH - moment) // _MS)


def apply_event(item: ScheduleItem | None, event: IncidentEvent) -> ScheduleItem | None:
    """The item after ``event``; ``None`` when the incident should have no pending update.

    Returns ``item`` itself (equal, unchanged) when the event changes nothing.
    """
    if not event.incident.is_open:
        return None
    if item is not None and event.occurred_at < item.basis_at:
        return item
    return ScheduleItem(
        incident_id=event.incident_id,
        sequence=item.sequence if item is not None else 1,
        severity=event.incident.severity,
        basis_at=event.occurred_at,
        due_at=event.next_update_at or NEVER,
    )


def fire(
    item: ScheduleItem, fired_at: datetime, severity: Severity, interval_for: IntervalFor
) -> tuple[UpdateDue, ScheduleItem]:
    """Fire ``item`` at ``fired_at`` for an incident now at ``severity``.

    Returns the ``UpdateDue`` to publish and the item that replaces ``item``
    (dormant when the severity no longer has scheduled updates).
    """
    next_item = advance(item, item.sequence, fired_at, severity, interval_for)
    assert next_item is not None  # advancing an item never removes it
    due = UpdateDue(
        event_id=update_event_id(item.incident_id, item.sequence),
        incident_id=item.incident_id,
        sequence=item.sequence,
        due_at=item.due_at,
        emitted_at=fired_at,
        next_update_at=next_item.due_at if next_item.promised else None,
    )
    return due, next_item


def advance(
    current: ScheduleItem | None,
    fired_sequence: int,
    fired_at: datetime,
    severity: Severity,
    interval_for: IntervalFor,
) -> ScheduleItem | None:
    """``current`` after update #``fired_sequence`` went out at ``fired_at``.

    Unchanged when there is nothing to advance: the item is gone (resolved) or
    already past that sequence (another instance completed it). If an event
    moved the item to a basis later than ``fired_at`` meanwhile, that newer
    promise stands and only the sequence moves on. Dormant when ``severity``
    has no scheduled updates.
    """
    if current is None or current.sequence != fired_sequence:
        return current
    if current.basis_at > fired_at:
        return current.model_copy(update={"sequence": fired_sequence + 1})
    interval = interval_for(severity)
    return ScheduleItem(
        incident_id=current.incident_id,
        sequence=fired_sequence + 1,
        severity=severity,
        basis_at=fired_at,
        due_at=NEVER if interval is None else fired_at + interval,
    )
