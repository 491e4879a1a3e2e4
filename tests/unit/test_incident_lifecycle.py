"""The incident lifecycle: monitoring hold, flapping, acknowledgement, operator updates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.correlation import MONITORING_STARTED, correlate
from services.ingest.incident_actions import (
    ACKNOWLEDGED,
    IncidentClosed,
    OperatorUpdate,
    acknowledge,
    end_hold,
    post_update,
    resolve,
)
from services.ingest.incident_change import Correlation
from shared.contracts import (
    Alert,
    AlertStatus,
    Incident,
    IncidentOpened,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentStatus,
    IncidentUpdated,
    Severity,
    UpdateAuthor,
)

T0 = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
HOLD = timedelta(minutes=5)
FIRING, RESOLVED = AlertStatus.FIRING, AlertStatus.RESOLVED


def alert(fp: str, status: AlertStatus = FIRING, severity: Severity = Severity.ERROR) -> Alert:
    return Alert(
        source="test",
        group_key="test:g",
        fingerprint=fp,
        status=status,
        severity=severity,
        summary=f"Checkout errors on {fp}",
        service="checkout",
    )


def step(current: Incident | None, alerts: list[Alert], minutes: float) -> Correlation:
    now = T0 + timedelta(minutes=minutes)
    return correlate(current, alerts, now, lambda: "inc-1", hold=HOLD)


def state(result: Correlation) -> Incident:
    assert result.incident is not None
    return result.incident


def opened() -> Incident:
    return state(step(None, [alert("a")], 0))


def monitoring() -> Incident:
    return state(step(opened(), [alert("a", RESOLVED)], 10))


def test_an_incident_opens_investigating_at_revision_one_with_a_timeline() -> None:
    incident = opened()
    assert incident.status is IncidentStatus.INVESTIGATING
    assert incident.revision == 1
    assert [e.message for e in incident.timeline] == [incident.impact]


def test_recovery_enters_monitoring_and_holds_instead_of_resolving() -> None:
    result = step(opened(), [alert("a", RESOLVED)], 10)

    incident = state(result)
    assert incident.status is IncidentStatus.MONITORING
    assert incident.monitoring_since == T0 + timedelta(minutes=10)
    assert incident.resolves_at == T0 + timedelta(minutes=15)
    assert incident.resolved_at is None
    [event] = result.events
    assert isinstance(event, IncidentUpdated)
    assert event.changes == (MONITORING_STARTED,)
    assert event.event_id == "inc-1:2:incident.updated"


def test_a_resent_recovery_during_the_hold_says_nothing() -> None:
    again = step(monitoring(), [alert("a", RESOLVED)], 11)
    assert again.events == []


def test_an_alert_firing_again_during_the_hold_keeps_the_same_incident() -> None:
    result = step(monitoring(), [alert("a")], 12)

    incident = state(result)
    assert incident.id == "inc-1"
    assert incident.status is IncidentStatus.INVESTIGATING
    assert incident.resolves_at is None
    assert incident.monitoring_since is None
    [event] = result.events
    assert isinstance(event, IncidentUpdated)
    assert "back" in event.changes[0]


def test_flapping_back_to_an_acknowledged_incident_is_identified() -> None:
    acked = state(acknowledge(opened(), T0 + timedelta(minutes=1), "alice"))
    holding = state(step(acked, [alert("a", RESOLVED)], 10))

    back = state(step(holding, [alert("a")], 12))

    assert back.status is IncidentStatus.IDENTIFIED


def test_the_end_of_the_hold_resolves_with_the_time_monitoring_began() -> None:
    holding = monitoring()
    assert holding.monitoring_since is not None

    result = end_hold(holding, holding.monitoring_since, T0 + timedelta(minutes=15))

    incident = state(result)
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_at == holding.monitoring_since
    assert [type(e) for e in result.events] == [IncidentResolved]


def test_the_end_of_a_hold_that_no_longer_stands_does_nothing() -> None:
    holding = monitoring()
    assert holding.monitoring_since is not None
    back = state(step(holding, [alert("a")], 12))

    assert end_hold(back, holding.monitoring_since, T0 + timedelta(minutes=15)).events == []
    assert end_hold(holding, T0, T0 + timedelta(minutes=15)).events == []


def test_without_a_hold_recovery_resolves_at_once() -> None:
    result = correlate(opened(), [alert("a", RESOLVED)], T0 + timedelta(minutes=3), lambda: "x")
    assert [type(e) for e in result.events] == [IncidentResolved]


def test_acknowledging_makes_it_identified_once() -> None:
    now = T0 + timedelta(minutes=2)
    result = acknowledge(opened(), now, "alice")

    incident = state(result)
    assert incident.status is IncidentStatus.IDENTIFIED
    assert incident.acknowledged_at == now
    assert incident.acknowledged_by == "alice"
    [event] = result.events
    assert isinstance(event, IncidentUpdated)
    assert event.author is UpdateAuthor.OPERATOR
    assert event.changes == (ACKNOWLEDGED,)
    assert acknowledge(incident, now + timedelta(minutes=1)).events == []


def test_an_operator_update_changes_what_customers_are_told_and_keeps_it() -> None:
    update = OperatorUpdate(
        message="A bad deploy; rolling back.",
        status=IncidentStatus.IDENTIFIED,
        title="Checkout is failing",
        impact="Customers cannot pay.",
        components=("checkout",),
        author="alice",
    )
    result = post_update(opened(), T0 + timedelta(minutes=5), update)

    incident = state(result)
    assert (incident.title, incident.impact) == ("Checkout is failing", "Customers cannot pay.")
    assert incident.components == ("checkout",)
    assert incident.status is IncidentStatus.IDENTIFIED
    [event] = result.events
    assert isinstance(event, IncidentUpdated)
    assert event.message == "A bad deploy; rolling back."
    assert incident.timeline[-1].message == "A bad deploy; rolling back."
    assert incident.timeline[-1].author is UpdateAuthor.OPERATOR

    # A new, more severe alert no longer rewrites the operator's words.
    later = step(incident, [alert("b", severity=Severity.CRITICAL)], 6)
    assert state(later).title == "Checkout is failing"
    assert [type(e) for e in later.events] == [IncidentUpdated, IncidentSeverityChanged]


def test_an_operator_update_with_the_status_resolved_resolves() -> None:
    result = post_update(
        opened(), T0 + timedelta(minutes=5), OperatorUpdate("Fixed.", IncidentStatus.RESOLVED)
    )
    assert [type(e) for e in result.events] == [IncidentResolved]
    assert state(result).resolved_at == T0 + timedelta(minutes=5)


def test_an_operator_resolves_whatever_the_alerts_say() -> None:
    result = resolve(opened(), T0 + timedelta(minutes=7), "Mitigated by failover.")

    incident = state(result)
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.timeline[-1].message == "Mitigated by failover."
    [event] = result.events
    assert isinstance(event, IncidentResolved)


def test_a_resolved_incident_takes_no_more_changes() -> None:
    closed = state(resolve(opened(), T0 + timedelta(minutes=7)))
    with pytest.raises(IncidentClosed):
        acknowledge(closed, T0 + timedelta(minutes=8))
    with pytest.raises(IncidentClosed):
        post_update(closed, T0 + timedelta(minutes=8), OperatorUpdate("late"))


def test_every_change_bumps_the_revision_and_names_its_events_after_it() -> None:
    first = step(None, [alert("a")], 0)
    second = step(state(first), [alert("b", severity=Severity.CRITICAL)], 1)

    assert isinstance(first.events[0], IncidentOpened)
    assert first.events[0].event_id == "inc-1:1:incident.opened"
    assert [e.event_id for e in second.events] == [
        "inc-1:2:incident.updated",
        "inc-1:2:incident.severity_changed",
    ]
    assert state(second).revision == 2
    assert state(second).timeline[-1].message.endswith("Severity raised from SEV2 to SEV1.")
