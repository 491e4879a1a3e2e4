"""The status page as readers see it: banner, components, timelines, history, JSON, feeds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import jsonschema
import pytest

from services.dispatcher.status_feeds import atom_feed, rss_feed
from services.dispatcher.status_page_store import (
    StatusPageIncident,
    StatusPageUpdate,
    state_for,
)
from services.dispatcher.status_presenter import incident_values, status_page_values
from services.dispatcher.status_summary import component_id, summary_document
from services.dispatcher.status_view import (
    ComponentStatus,
    Indicator,
    build_status_page,
)
from shared.contracts import AlertStatus, Incident, IncidentStatus, Severity
from shared.plan import Component, Plan
from tests.support.builders import make_alert_state, make_incident

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "services/dispatcher/status.schema.json").read_text()
)
PLAN = Plan(
    organization="Example",
    components=(
        Component(name="Checkout", description="Payments.", services=("checkout-api",)),
        Component(name="Website"),
        Component(name="API", services=("api",)),
    ),
)


def page_incident(
    incident_id: str,
    opened_ago: timedelta,
    resolved_ago: timedelta | None = None,
    *,
    severity: Severity = Severity.ERROR,
    service: str | None = None,
    components: tuple[str, ...] = (),
    next_update_in: timedelta | None = None,
    postmortem_url: str | None = None,
) -> StatusPageIncident:
    opened = NOW - opened_ago
    resolved = NOW - resolved_ago if resolved_ago is not None else None
    promise = NOW + next_update_in if next_update_in is not None else None
    return StatusPageIncident(
        id=incident_id,
        title=f"Problem {incident_id}",
        impact="Orders fail.",
        service=service,
        severity=severity,
        state=IncidentStatus.RESOLVED if resolved else IncidentStatus.INVESTIGATING,
        opened_at=opened,
        updated_at=resolved or opened,
        resolved_at=resolved,
        components=components,
        postmortem_url=postmortem_url,
        updates=(
            StatusPageUpdate(
                id=f"u-{incident_id}",
                posted_at=opened,
                state=IncidentStatus.INVESTIGATING,
                headline="Investigating",
                body="We are looking into it.",
                next_update_at=promise,
            ),
        ),
    )


def test_open_incidents_most_severe_first_then_newest() -> None:
    incidents = [
        page_incident("minor-new", timedelta(minutes=5), severity=Severity.WARNING),
        page_incident("major-old", timedelta(hours=3), severity=Severity.CRITICAL),
        page_incident("partial", timedelta(hours=1)),
        page_incident("major-new", timedelta(hours=1), severity=Severity.CRITICAL),
    ]

    page = build_status_page(incidents, PLAN, NOW)

    assert [i.id for i in page.open] == ["major-new", "major-old", "partial", "minor-new"]
    assert page.indicator is Indicator.CRITICAL
    assert page.indicator.description == "Major outage"


def test_nothing_open_is_all_operational_and_every_component_too() -> None:
    page = build_status_page(
        [page_incident("r", timedelta(hours=2), timedelta(hours=1))], PLAN, NOW
    )

    assert page.all_operational
    assert page.indicator is Indicator.NONE
    assert {v.status for v in page.components} == {ComponentStatus.OPERATIONAL}
    values = status_page_values(page, PLAN)
    assert values["headline"] == "All systems operational"
    assert values["tone"] == "ok"


def test_components_take_the_worst_open_incident_by_service_or_by_name() -> None:
    incidents = [
        page_incident("a", timedelta(hours=1), severity=Severity.WARNING, service="checkout-api"),
        page_incident(
            "b", timedelta(hours=1), severity=Severity.CRITICAL, components=("checkout",)
        ),
        page_incident("c", timedelta(hours=1), severity=Severity.ERROR, components=("Website",)),
        page_incident("d", timedelta(hours=2), timedelta(hours=1), service="api"),  # resolved
    ]

    page = build_status_page(incidents, PLAN, NOW)

    status = {v.component.name: v.status for v in page.components}
    assert status == {
        "Checkout": ComponentStatus.MAJOR_OUTAGE,
        "Website": ComponentStatus.PARTIAL_OUTAGE,
        "API": ComponentStatus.OPERATIONAL,
    }
    checkout = next(v for v in page.components if v.component.name == "Checkout")
    assert checkout.incident_ids == ("b", "a")
    words = {c["name"]: c["words"] for c in status_page_values(page, PLAN)["components"]}
    assert words["Checkout"] == "Major outage"  # words, never colour alone


def test_history_keeps_90_days_of_resolved_incidents_grouped_by_day() -> None:
    incidents = [
        page_incident("yesterday", timedelta(days=1, hours=2), timedelta(days=1)),
        page_incident("today", timedelta(hours=2), timedelta(hours=1)),
        page_incident("89-days", timedelta(days=89, hours=1), timedelta(days=89)),
        page_incident("91-days", timedelta(days=91, hours=1), timedelta(days=91)),
    ]

    page = build_status_page(incidents, PLAN, NOW)

    assert [i.id for i in page.history] == ["today", "yesterday", "89-days"]
    days = status_page_values(page, PLAN)["history_days"]
    assert [d["date"] for d in days] == ["Mon 23 Nov 2026", "Sun 22 Nov 2026", "Wed 26 Aug 2026"]


def test_next_update_is_the_soonest_promise_of_an_open_incident() -> None:
    incidents = [
        page_incident("a", timedelta(hours=1), next_update_in=timedelta(minutes=20)),
        page_incident("b", timedelta(hours=1), next_update_in=timedelta(minutes=5)),
        page_incident("r", timedelta(hours=3), timedelta(hours=2), next_update_in=timedelta(0)),
    ]

    page = build_status_page(incidents, PLAN, NOW)

    assert page.next_update_at == NOW + timedelta(minutes=5)
    assert status_page_values(page, PLAN)["next_update"]["text"] == "14:35 UTC, Mon 23 Nov 2026"


def test_an_overdue_promise_is_said_so() -> None:
    late = page_incident("late", timedelta(hours=1), next_update_in=-timedelta(minutes=3))

    values = incident_values(late, PLAN, NOW)

    assert values["next_update_overdue"] is True
    assert incident_values(late, PLAN, NOW - timedelta(hours=1))["next_update_overdue"] is False


def test_times_are_in_the_plans_zones_and_always_in_utc() -> None:
    plan = PLAN.model_copy(update={"timezones": ("Europe/Berlin",)})
    values = incident_values(page_incident("o", timedelta(minutes=30)), plan, NOW)

    assert values["started"]["text"] == "15:00 CET, Mon 23 Nov 2026 (14:00 UTC)"
    assert values["started"]["iso"] == "2026-11-23T14:00:00+00:00"
    assert values["path"] == "/status/incidents/o"


def test_update_bodies_are_rendered_from_markdown_without_raw_html() -> None:
    incident = page_incident("o", timedelta(minutes=30))
    body = "We are **still** on it. <script>alert(1)</script>\n\n[Details](https://example.com/x)"
    update = incident.updates[0].model_copy(update={"body": body})

    html = str(
        incident_values(incident.model_copy(update={"updates": (update,)}), PLAN, NOW)["updates"][
            0
        ]["body"]
    )

    assert "<strong>still</strong>" in html
    assert '<a href="https://example.com/x">Details</a>' in html
    assert "<script>" not in html


def _summary(incidents: list[StatusPageIncident]) -> dict[str, Any]:
    page = build_status_page(incidents, PLAN, NOW)
    return summary_document(
        page, PLAN, "https://status.example.com/status", lambda i: f"https://s.example/i/{i}"
    )


def test_summary_json_matches_its_schema_and_the_hosted_page_shape() -> None:
    incidents = [
        page_incident(
            "o", timedelta(hours=1), service="checkout-api", next_update_in=timedelta(minutes=9)
        ),
        page_incident("r", timedelta(hours=3), timedelta(hours=2), postmortem_url="https://pm"),
    ]

    document = _summary(incidents)

    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)
    assert document["status"] == {"indicator": "major", "description": "Partial outage"}
    assert [i["id"] for i in document["incidents"]] == ["o"]  # unresolved only
    [incident] = document["incidents"]
    assert incident["shortlink"] == "https://s.example/i/o"
    assert incident["impact"] == "major"
    assert incident["next_update_at"] == "2026-11-23T14:39:00Z"
    assert [c["name"] for c in incident["components"]] == ["Checkout"]
    checkout = next(c for c in document["components"] if c["name"] == "Checkout")
    assert checkout["status"] == "partial_outage"
    assert checkout["id"] == component_id("checkout")


def test_the_schema_refuses_what_widgets_could_not_read() -> None:
    document = _summary([page_incident("o", timedelta(hours=1))])
    document["status"]["indicator"] = "red"

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def _feeds(incidents: list[StatusPageIncident]) -> tuple[Any, Any]:
    page = build_status_page(incidents, PLAN, NOW)
    base = "http://127.0.0.1:8001/status"

    def incident_url(incident_id: str) -> str:
        return f"{base}/incidents/{incident_id}"

    atom = atom_feed(page, page_url=base, self_url=f"{base}/feed.atom", incident_url=incident_url)
    rss = rss_feed(page, page_url=base, self_url=f"{base}/feed.rss", incident_url=incident_url)
    return feedparser.parse(atom), feedparser.parse(rss)


def test_feeds_are_well_formed_atom_and_rss_newest_change_first() -> None:
    incidents = [
        page_incident("older", timedelta(hours=5), timedelta(hours=4)),
        page_incident("open", timedelta(hours=1)),
    ]

    atom, rss = _feeds(incidents)

    assert atom.bozo == 0, atom.get("bozo_exception")
    assert atom.version == "atom10"
    assert rss.bozo == 0, rss.get("bozo_exception")
    assert rss.version == "rss20"
    for feed in (atom, rss):
        assert [e.link for e in feed.entries] == [
            "http://127.0.0.1:8001/status/incidents/open",
            "http://127.0.0.1:8001/status/incidents/older",
        ]
        assert feed.entries[0].title == "Investigating: Problem open"
        assert "We are looking into it." in feed.entries[0].summary
    assert atom.entries[0].id == "http://127.0.0.1:8001/status/incidents/open"
    assert atom.feed.title == "Example status"


def _incident(status: IncidentStatus, alert_status: AlertStatus) -> Incident:
    return make_incident(status=status, alerts=(make_alert_state(status=alert_status),))


def test_page_state_follows_the_incident() -> None:
    for status in IncidentStatus:
        assert state_for(_incident(status, AlertStatus.FIRING)) is status
