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


def test_template_values_format_times_in_the_plans_zones() -> None:
    page = build_status_page([page_incident("o", timedelta(minutes=30))], "Example", NOW)

    values = template_values(page, (ZoneInfo("UTC"),))

    assert values["organization"] == "Example"
    assert values["generated"] == "14:30 UTC, Mon 23 Nov 2026"
    assert values["open"][0]["opened"] == "14:00 UTC, Mon 23 Nov 2026"
    assert values["open"][0]["updates"][0]["posted"] == "14:00 UTC, Mon 23 Nov 2026"
    assert values["open"][0]["updates"][0]["posted_iso"] == "2026-11-23T14:00:00+00:00"

    both = template_values(page, (ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")))

    assert both["generated"] == "15:30 CET, Mon 23 Nov 2026 (09:30 EST)"
    assert both["open"][0]["opened"] == "15:00 CET, Mon 23 Nov 2026 (09:00 EST)"


def test_update_bodies_are_rendered_from_markdown_without_raw_html() -> None:
    incident = page_incident("o", timedelta(minutes=30))
    body = (
        "We are **still** on it. <script>alert(1)</script>\n\n"
        "[Details](https://status.example.com/incidents/o)"
    )
    update = incident.updates[0].model_copy(update={"body": body})
    page = build_status_page([incident.model_copy(update={"updates": (update,)})], "Example", NOW)

    html = str(template_values(page, (ZoneInfo("UTC"),))["open"][0]["updates"][0]["body"])

    assert "<strong>still</strong>" in html
    assert '<a href="https://status.example.com/incidents/o">Details</a>' in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_a_resolved_incident_shows_when_it_was_resolved() -> None:
    resolved = page_incident("r", timedelta(hours=2), timedelta(hours=1))
    page = build_status_page([resolved], "Example", NOW)

    [shown] = template_values(page, (ZoneInfo("UTC"),))["resolved"]

    assert shown["state"] == "resolved"
    assert shown["resolved"] == "13:30 UTC, Mon 23 Nov 2026"


def test_incidents_resolved_over_a_week_ago_are_not_shown() -> None:
    page = build_status_page(
        [page_incident("old", timedelta(days=9), timedelta(days=8))], "Example", NOW
    )

    assert page.resolved == ()
    assert page.all_operational


def _incident(status: IncidentStatus, alert_status: AlertStatus) -> Incident:
    return make_incident(status=status, alerts=(make_alert_state(status=alert_status),))


def test_page_state_follows_the_incident() -> None:
    for status in IncidentStatus:
        assert state_for(_incident(status, AlertStatus.FIRING)) is status
