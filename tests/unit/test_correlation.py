from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.correlation import Correlation, correlate, derived_impact
from services.ingest.sources.alertmanager import AlertmanagerWebhook, parse
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
)
from tests.conftest import load_fixture

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
GROUP = "test:group"

FIRING, RESOLVED = AlertStatus.FIRING, AlertStatus.RESOLVED


def alert(
    fingerprint: str,
    status: AlertStatus = FIRING,
    severity: Severity = Severity.CRITICAL,
    *,
    summary: str | None = None,
    description: str = "",
    service: str | None = "checkout-api",
    impact: str | None = None,
    ends_at: datetime | None = None,
) -> Alert:
    return Alert(
        source="test",
        group_key=GROUP,
        fingerprint=fingerprint,
        status=status,
        severity=severity,
        summary=summary or f"{severity.value} problem on {fingerprint}",
        description=description,
        service=service,
        impact=impact,
        ends_at=ends_at,
    )


def ids() -> itertools.count[int]:
    return itertools.count(1)


def run(
    current: Incident | None, alerts: list[Alert], now: datetime = T0, **kwargs: object
) -> Correlation:
    counter = ids()
    return correlate(current, alerts, now, lambda: f"inc-{next(counter)}", **kwargs)  # type: ignore[arg-type]


def opened(alerts: list[Alert]) -> Incident:
    incident = run(None, alerts).incident
    assert incident is not None
    return incident


def fixture_alerts(name: str) -> list[Alert]:
    return parse(AlertmanagerWebhook.model_validate(load_fixture(name)))


# -- opening -------------------------------------------------------------------


def test_firing_alerts_open_an_incident() -> None:
    alerts = fixture_alerts("alertmanager_webhook_v4_firing.json")

    result = run(None, alerts, truncated=3, external_url="http://am.example.org")

    incident = result.incident
    assert incident is not None
    assert [type(e) for e in result.events] == [IncidentOpened]
    assert result.events[0].incident == incident
    assert result.events[0].occurred_at == T0
    assert result.events[0].event_id == "inc-1:1:incident.opened"
    assert incident.id == "inc-1"
    assert incident.key == alerts[0].group_key
    assert incident.source == "alertmanager"
    assert incident.status is IncidentStatus.INVESTIGATING
    assert incident.severity is Severity.CRITICAL
    assert incident.title == "High 5xx error rate on checkout-api"
    assert incident.service == "checkout-api"
    assert incident.impact == "Some customers of checkout-api may see errors or slow responses."
    assert incident.opened_at == incident.updated_at == T0
    assert incident.resolved_at is None
    assert [a.fingerprint for a in incident.alerts] == [a.fingerprint for a in alerts]
    assert incident.truncated_alerts == 3
    assert incident.external_url == "http://am.example.org"


def test_only_resolved_alerts_and_no_open_incident_do_nothing() -> None:
    def no_id() -> str:
        raise AssertionError("no incident should be created")

    result = correlate(None, [alert("a", RESOLVED)], T0, no_id)

    assert result.incident is None
    assert result.events == []


def test_empty_batch_does_nothing() -> None:
    assert run(opened([alert("a")]), []) == Correlation(None, [])


def test_a_batch_must_hold_one_group() -> None:
    other = alert("b").model_copy(update={"group_key": "test:other"})

    with pytest.raises(ValueError, match="one alert group"):
        run(None, [alert("a"), other])


def test_title_and_impact_come_from_the_most_severe_firing_alert() -> None:
    alerts = [
        alert("w", severity=Severity.WARNING, impact="Search is slow."),
        alert("c", severity=Severity.CRITICAL, summary="Checkout is down", service="checkout"),
        alert("r", RESOLVED, severity=Severity.CRITICAL, summary="Old news"),
    ]

    incident = opened(alerts)

    assert incident.title == "Checkout is down"
    assert incident.severity is Severity.CRITICAL
    assert incident.service == "checkout"
    # The lead alert gives no impact: the words of another firing alert beat jargon-free filler.
    assert incident.impact == "Search is slow."


def test_explicit_impact_of_the_lead_alert_wins() -> None:
    incident = opened([alert("a", impact="Payments are failing for all customers.")])

    assert incident.impact == "Payments are failing for all customers."


def test_derived_impact_without_service_is_still_plain_words() -> None:
    assert derived_impact(None) == "Some customers may see errors or slow responses."
    assert opened([alert("a", service=None)]).impact == derived_impact(None)


# -- repeats ---------------------------------------------------------------------


def test_a_pure_repeat_changes_nothing() -> None:
    alerts = fixture_alerts("alertmanager_webhook_v4_firing.json")
    incident = opened(alerts)

    result = run(incident, alerts, now=T0 + timedelta(minutes=5))

    assert result.incident is None
    assert result.events == []


def test_a_changed_summary_under_the_same_fingerprint_retitles_quietly() -> None:
    incident = opened([alert("a", summary="Checkout is slow"), alert("b", summary="Other")])

    result = run(incident, [alert("a", severity=Severity.ERROR), alert("b", summary="Other")])

    assert result.events == []
    assert result.incident is not None
    assert result.incident.title == "Other"
    assert result.incident.updated_at == T0


def test_changed_details_are_kept_quietly_without_bumping_updated_at() -> None:
    incident = opened([alert("a", description="5xx at 12%")])

    result = run(incident, [alert("a", description="5xx at 14%")], now=T0 + timedelta(minutes=5))

    assert result.events == []
    assert result.incident is not None
    assert result.incident.alerts[0].description == "5xx at 14%"
    assert result.incident.updated_at == T0


# -- updates -------------------------------------------------------------------------


def test_some_instances_recovering_is_an_update_in_plain_words() -> None:
    incident = opened([alert("a"), alert("b"), alert("c")])
    later = T0 + timedelta(minutes=3)

    result = run(incident, [alert("a", RESOLVED), alert("b", RESOLVED), alert("c")], now=later)

    assert [type(e) for e in result.events] == [IncidentUpdated]
    event = result.events[0]
    assert isinstance(event, IncidentUpdated)
    assert event.changes == ("2 of 3 affected instances recovered; 1 still affected.",)
    assert result.incident is not None
    assert result.incident.status is IncidentStatus.INVESTIGATING
    assert result.incident.updated_at == later
    assert result.incident.opened_at == T0
    assert [a.fingerprint for a in result.incident.firing_alerts] == ["c"]


def test_new_instances_joining_is_an_update() -> None:
    incident = opened([alert("a"), alert("b")])

    result = run(incident, [alert("a"), alert("b"), alert("c")])

    assert [type(e) for e in result.events] == [IncidentUpdated]
    event = result.events[0]
    assert isinstance(event, IncidentUpdated)
    assert event.changes == ("1 more affected instance reported; 3 affected in total.",)


def test_joining_and_recovering_at_once_are_both_described() -> None:
    incident = opened([alert("a"), alert("b")])

    result = run(incident, [alert("a", RESOLVED), alert("c"), alert("d")])

    event = result.events[0]
    assert isinstance(event, IncidentUpdated)
    assert event.changes == (
        "2 more affected instances reported; 3 affected in total.",
        "1 of 2 affected instances recovered; 3 still affected.",
    )


def test_alerts_missing_from_a_batch_keep_their_state() -> None:
    incident = opened([alert("a"), alert("b")])

    result = run(incident, [alert("a", RESOLVED)])

    assert result.incident is not None
    assert {a.fingerprint for a in result.incident.firing_alerts} == {"b"}


def test_a_higher_severity_joining_changes_severity_and_title() -> None:
    incident = opened([alert("w", severity=Severity.WARNING, summary="Search is slow")])
    assert incident.severity is Severity.WARNING

    result = run(
        incident,
        [
            alert("w", severity=Severity.WARNING, summary="Search is slow"),
            alert("c", severity=Severity.CRITICAL, summary="Search is down", impact="No search."),
        ],
    )

    assert [e.type for e in result.events] == ["incident.updated", "incident.severity_changed"]
    change = result.events[1]
    assert isinstance(change, IncidentSeverityChanged)
    assert change.previous_severity is Severity.WARNING
    assert change.incident.severity is Severity.CRITICAL
    assert result.incident is not None
    assert result.incident.title == "Search is down"
    assert result.incident.impact == "No search."
    assert all(e.incident == result.incident for e in result.events)


def test_the_most_severe_alert_recovering_lowers_severity() -> None:
    incident = opened([alert("c"), alert("w", severity=Severity.WARNING)])

    result = run(incident, [alert("c", RESOLVED), alert("w", severity=Severity.WARNING)])

    assert [e.type for e in result.events] == ["incident.updated", "incident.severity_changed"]
    assert result.incident is not None
    assert result.incident.severity is Severity.WARNING
    assert result.incident.title == alert("w", severity=Severity.WARNING).summary


def test_title_stays_while_its_alert_still_leads() -> None:
    incident = opened([alert("a", summary="Checkout is failing"), alert("b", summary="Other")])

    result = run(incident, [alert("b", summary="Other"), alert("a", RESOLVED)])
    assert result.incident is not None
    assert result.incident.title == "Other"

    steady = run(incident, [alert("a", summary="Checkout is failing"), alert("c")])
    assert steady.incident is not None
    assert steady.incident.title == "Checkout is failing"


# -- resolution ---------------------------------------------------------------------


def test_all_alerts_resolved_resolves_the_incident_at_their_end_time() -> None:
    incident = opened(fixture_alerts("alertmanager_webhook_v4_firing.json"))
    later = datetime(2026, 11, 23, 14, 35, tzinfo=UTC)

    result = run(incident, fixture_alerts("alertmanager_webhook_v4_resolved.json"), now=later)

    assert [type(e) for e in result.events] == [IncidentResolved]
    resolved = result.incident
    assert resolved is not None
    assert resolved.status is IncidentStatus.RESOLVED
    assert resolved.resolved_at == datetime(2026, 11, 23, 14, 32, 39, tzinfo=UTC)
    assert resolved.updated_at == later
    assert resolved.id == incident.id
    assert resolved.firing_alerts == ()


def test_resolution_without_plausible_end_time_uses_now() -> None:
    incident = opened([alert("a")])
    later = T0 + timedelta(minutes=2)

    unknown_end = run(incident, [alert("a", RESOLVED)], now=later)
    future_end = run(incident, [alert("a", RESOLVED, ends_at=later + timedelta(hours=1))], later)

    assert unknown_end.incident is not None
    assert unknown_end.incident.resolved_at == later
    assert future_end.incident is not None
    assert future_end.incident.resolved_at == later


def test_a_resolved_incident_firing_again_opens_a_new_one() -> None:
    first = opened([alert("a")])
    resolved = run(first, [alert("a", RESOLVED)]).incident
    assert resolved is not None

    counter = itertools.count(7)
    again = correlate(resolved, [alert("a")], T0, lambda: f"inc-{next(counter)}")

    assert [type(e) for e in again.events] == [IncidentOpened]
    assert again.incident is not None
    assert again.incident.id == "inc-7"


# -- when it began and ended, as customers are told ----------------------------


def test_an_incident_heard_of_late_still_reports_when_the_trouble_began_and_ended() -> None:
    heard_at = datetime(2026, 11, 23, 15, 15, tzinfo=UTC)  # 45 minutes after the alert started
    opening = correlate(
        None, fixture_alerts("alertmanager_webhook_v4_firing.json"), heard_at, lambda: "i"
    )
    assert opening.incident is not None
    assert opening.incident.began_at == datetime(2026, 11, 23, 14, 30, 24, tzinfo=UTC)

    later = datetime(2026, 11, 23, 15, 20, tzinfo=UTC)
    resolved = correlate(
        opening.incident,
        fixture_alerts("alertmanager_webhook_v4_resolved.json"),
        later,
        lambda: "x",
    )
    assert resolved.incident is not None
    assert resolved.incident.resolved_at == datetime(2026, 11, 23, 14, 32, 39, tzinfo=UTC)


def test_an_end_time_from_the_future_is_not_believed() -> None:
    start = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
    opening = correlate(
        None, fixture_alerts("alertmanager_webhook_v4_firing.json"), start, lambda: "i"
    )
    assert opening.incident is not None
    now = datetime(2026, 11, 23, 14, 32, tzinfo=UTC)  # before the alerts' endsAt (14:32:39)
    resolved = correlate(
        opening.incident, fixture_alerts("alertmanager_webhook_v4_resolved.json"), now, lambda: "x"
    )
    assert resolved.incident is not None
    assert resolved.incident.resolved_at == now
