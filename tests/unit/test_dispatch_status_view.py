"""The status page view: open incidents first, then recently resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.dispatcher.status_page_store import (
    StatusPageIncident,
    StatusPageUpdate,
    state_for,
)
from services.dispatcher.status_view import build_status_page, status_json, template_values
from shared.contracts import AlertStatus, Incident, IncidentStatus, Severity
from tests.support.builders import make_alert_state, make_incident

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def page_incident(
    incident_id: str, opened_ago: timedelta, resolved_ago: timedelta | None = None
) -> StatusPageIncident:
    opened = NOW - opened_ago
    resolved = NOW - resolved_ago if resolved_ago is not None else None
    return StatusPageIncident(
        id=incident_id,
        title=f"Problem {incident_id}",
        impact="Orders fail.",
        severity=Severity.ERROR,
        state=IncidentStatus.RESOLVED if resolved else IncidentStatus.INVESTIGATING,
        opened_at=opened,
        updated_at=resolved or opened,
        resolved_at=resolved,
        updates=(
            StatusPageUpdate(
                id=f"u-{incident_id}",
                posted_at=opened,
                state=IncidentStatus.INVESTIGATING,
                headline="Investigating",
                body="We are looking into it.",
            ),
        ),
    )


def test_open_first_newest_first_then_recently_resolved() -> None:
    incidents = [
        page_incident("old-resolved", timedelta(days=10), timedelta(days=9)),
        page_incident("resolved-1", timedelta(hours=5), timedelta(hours=4)),
        page_incident("open-old", timedelta(hours=3)),
        page_incident("resolved-2", timedelta(hours=2), timedelta(hours=1)),
        page_incident("open-new", timedelta(minutes=10)),
    ]

    page = build_status_page(incidents, "Example", NOW)

    assert [i.id for i in page.open] == ["open-new", "open-old"]
    assert [i.id for i in page.resolved] == ["resolved-2", "resolved-1"]
    assert not page.all_operational
    assert status_json(page)["status"] == "incident"


def test_nothing_open_is_all_operational() -> None:
    page = build_status_page([page_incident("r", timedelta(hours=2), timedelta(hours=1))], "E", NOW)

    assert page.all_operational
    document = status_json(page)
    assert document["status"] == "operational"
    assert [i["id"] for i in document["recently_resolved"]] == ["r"]


def test_template_values_format_times_in_the_display_zone() -> None:
    page = build_status_page([page_incident("o", timedelta(minutes=30))], "Example", NOW)

    values = template_values(page, ZoneInfo("UTC"))

    assert values["generated"] == "14:30 UTC, Mon 23 Nov 2026"
    assert values["open"][0]["opened"] == "14:00 UTC, Mon 23 Nov 2026"
    assert values["open"][0]["updates"][0]["posted"] == "14:00 UTC, Mon 23 Nov 2026"


def _incident(status: IncidentStatus, alert_status: AlertStatus) -> Incident:
    return make_incident(status=status, alerts=(make_alert_state(status=alert_status),))


def test_page_state_follows_the_incident() -> None:
    for status in IncidentStatus:
        assert state_for(_incident(status, AlertStatus.FIRING)) is status
