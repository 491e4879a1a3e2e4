"""A message planned while it was true is not sent once the incident moved on."""

from __future__ import annotations

from datetime import timedelta

from services.dispatcher.delivery_worker import stale_reason
from shared.contracts import IncidentAckOverdue, IncidentOpened, IncidentPostmortemDue, UpdateDue
from tests.support.builders import T0, make_incident, make_resolved_incident

UPDATE = UpdateDue.model_fields["type"].default
ACK_OVERDUE = IncidentAckOverdue.model_fields["type"].default
POSTMORTEM_DUE = IncidentPostmortemDue.model_fields["type"].default
OPENED = IncidentOpened.model_fields["type"].default


def test_a_scheduled_update_is_stale_once_resolved() -> None:
    assert stale_reason(UPDATE, make_incident()) is None
    assert stale_reason(UPDATE, make_resolved_incident()) == "incident resolved"


def test_an_acknowledgement_escalation_is_stale_once_acknowledged_or_resolved() -> None:
    assert stale_reason(ACK_OVERDUE, make_incident()) is None
    acknowledged = make_incident(acknowledged_at=T0 + timedelta(minutes=16))
    assert stale_reason(ACK_OVERDUE, acknowledged) is not None
    assert stale_reason(ACK_OVERDUE, make_resolved_incident()) is not None


def test_a_postmortem_reminder_is_stale_once_posted_or_reopened() -> None:
    resolved = make_resolved_incident()
    assert stale_reason(POSTMORTEM_DUE, resolved) is None
    posted = resolved.model_copy(update={"postmortem_url": "https://example.com/pm"})
    assert stale_reason(POSTMORTEM_DUE, posted) is not None
    assert stale_reason(POSTMORTEM_DUE, make_incident()) is not None  # open again


def test_other_events_are_never_stale() -> None:
    assert stale_reason(OPENED, make_resolved_incident()) is None
