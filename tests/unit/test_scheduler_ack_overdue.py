"""Acknowledgement overdue, as pure rules: when the timer is armed, moved and cancelled."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.scheduler.ack_overdue import (
    AckTimer,
    ack_deadline,
    ack_overdue_event,
    is_escalation,
    latest,
    next_ack_timer,
)
from shared.contracts import (
    INCIDENT_EVENT,
    IncidentAckOverdue,
    IncidentPostmortemDue,
    IncidentStatus,
    Severity,
    ack_overdue_event_id,
)
from shared.plan import Plan, PlanError
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_severity_changed,
    make_incident_updated,
)
from tests.support.plans import make_plan, plan_data

WITHIN = {
    Severity.CRITICAL: timedelta(minutes=15),
    Severity.ERROR: timedelta(minutes=30),
    Severity.WARNING: timedelta(hours=2),
}


def plan_with_acks(**overrides: Any) -> Plan:
    """The test plan, with SEV1 15 min, SEV2 30 min, SEV3 2 h to acknowledge; SEV4 none."""
    data = plan_data()
    for severity, within in WITHIN.items():
        data["severities"][severity.sev]["acknowledge_within"] = f"{int(within.total_seconds())}s"
    return make_plan(severities=data["severities"], **overrides)


PLAN = plan_with_acks()
ACKED = make_incident(
    status=IncidentStatus.IDENTIFIED,
    acknowledged_at=T0 + timedelta(minutes=3),
    acknowledged_by="oncall-ann",
    revision=2,
)


def timer(severity: Severity = Severity.CRITICAL) -> AckTimer:
    return AckTimer(incident_id="inc-1", due_at=T0 + WITHIN[severity], severity=severity)


# What an incident needs as it stands


@pytest.mark.parametrize("severity", list(WITHIN))
def test_an_open_unacknowledged_incident_is_due_its_severitys_time_after_it_opened(
    severity: Severity,
) -> None:
    assert ack_deadline(make_incident(severity=severity), PLAN) == timer(severity)


def test_no_deadline_once_acknowledged_resolved_or_without_a_window() -> None:
    assert ack_deadline(ACKED, PLAN) is None
    assert ack_deadline(make_incident_resolved().incident, PLAN) is None
    assert ack_deadline(make_incident(severity=Severity.INFO), PLAN) is None
    assert ack_deadline(None, PLAN) is None
    assert ack_deadline(make_incident(), make_plan()) is None  # no acknowledge_within at all


# Arming, moving, cancelling


def test_opening_arms_the_timer_and_a_redelivered_opening_keeps_it() -> None:
    opened = make_incident_opened()

    armed = next_ack_timer(None, opened, opened.incident, PLAN)

    assert armed == timer()
    assert next_ack_timer(armed, opened, opened.incident, PLAN) == armed


def test_opening_with_a_severity_that_has_no_window_arms_nothing() -> None:
    opened = make_incident_opened(make_incident(severity=Severity.INFO))

    assert next_ack_timer(None, opened, opened.incident, PLAN) is None


def test_an_acknowledgement_cancels_it() -> None:
    acknowledged = make_incident_updated(ACKED)

    assert next_ack_timer(timer(), acknowledged, ACKED, PLAN) is None


def test_a_resolution_cancels_it() -> None:
    resolved = make_incident_resolved()

    assert next_ack_timer(timer(), resolved, resolved.incident, PLAN) is None


def test_an_update_keeps_a_pending_timer_but_never_arms_a_missing_one() -> None:
    updated = make_incident_updated(changes=("More hosts are affected.",))

    assert next_ack_timer(timer(), updated, updated.incident, PLAN) == timer()
    # The escalation already fired (the timer is gone): later updates do not fire it again.
    assert next_ack_timer(None, updated, updated.incident, PLAN) is None


def test_a_more_severe_severity_arms_it_on_the_new_severitys_clock() -> None:
    worse = make_incident_severity_changed(previous_severity=Severity.WARNING)  # now critical

    assert next_ack_timer(None, worse, worse.incident, PLAN) == timer(Severity.CRITICAL)
    assert next_ack_timer(timer(Severity.WARNING), worse, worse.incident, PLAN) == timer()


def test_a_less_severe_severity_moves_a_pending_timer_and_arms_no_missing_one() -> None:
    milder = make_incident_severity_changed(
        make_incident(severity=Severity.ERROR), previous_severity=Severity.CRITICAL
    )

    assert next_ack_timer(timer(), milder, milder.incident, PLAN) == timer(Severity.ERROR)
    assert next_ack_timer(None, milder, milder.incident, PLAN) is None


def test_a_severity_without_a_window_cancels_it() -> None:
    minor = make_incident_severity_changed(
        make_incident(severity=Severity.INFO), previous_severity=Severity.CRITICAL
    )

    assert next_ack_timer(timer(), minor, minor.incident, PLAN) is None


def test_the_stored_incident_wins_over_a_stale_event() -> None:
    opened = make_incident_opened()  # revision 1, not acknowledged

    assert latest(opened, ACKED) == ACKED
    # A reclaimed "opened" handled after the acknowledgement arms nothing.
    assert next_ack_timer(None, opened, latest(opened, ACKED), PLAN) is None
    assert latest(opened, None) == opened.incident
    older = make_incident(revision=1)
    newer_event = make_incident_updated(make_incident(revision=3))
    assert latest(newer_event, older) == newer_event.incident


def test_its_own_escalation_changes_nothing() -> None:
    fired = ack_overdue_event(timer(), make_incident(), T0 + timedelta(minutes=15))

    assert is_escalation(fired)
    assert next_ack_timer(None, fired, fired.incident, PLAN) is None
    assert next_ack_timer(timer(), fired, fired.incident, PLAN) == timer()
    assert not is_escalation(make_incident_opened())


# The escalation event


def test_the_escalation_has_the_same_id_however_often_it_fires() -> None:
    incident = make_incident()
    first = ack_overdue_event(timer(), incident, T0 + timedelta(minutes=15))
    again = ack_overdue_event(timer(), incident, T0 + timedelta(minutes=16))

    assert first.event_id == again.event_id == ack_overdue_event_id("inc-1", Severity.CRITICAL)
    assert first.event_id == "inc-1:ack-overdue:SEV1"
    assert first.occurred_at == T0 + timedelta(minutes=15)
    assert first.due_at == T0 + timedelta(minutes=15)
    assert first.next_update_at is None
    # A new severity is a new escalation.
    assert ack_overdue_event(timer(Severity.ERROR), incident, T0).event_id.endswith(":SEV2")


def test_the_new_events_round_trip_through_the_incident_event_union() -> None:
    fired = ack_overdue_event(timer(), make_incident(), T0 + timedelta(minutes=15))
    due = IncidentPostmortemDue(
        event_id="inc-1:postmortem-due:x",
        occurred_at=T0 + timedelta(days=2),
        incident=make_incident_resolved().incident,
        due_at=T0 + timedelta(days=2),
    )

    assert INCIDENT_EVENT.validate_json(fired.model_dump_json()) == fired
    assert isinstance(INCIDENT_EVENT.validate_json(fired.model_dump_json()), IncidentAckOverdue)
    assert INCIDENT_EVENT.validate_json(due.model_dump_json()) == due
    assert fired.type == "incident.ack_overdue"
    assert due.type == "incident.postmortem_due"


def test_acknowledge_within_below_one_second_is_refused() -> None:
    data = plan_data()
    data["severities"]["SEV1"]["acknowledge_within"] = "0s"

    with pytest.raises(PlanError, match="acknowledge_within must be at least 1 second"):
        make_plan(severities=data["severities"])
