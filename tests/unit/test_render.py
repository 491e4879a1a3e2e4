"""render(): every customer message carries the elements of good incident communication."""

from __future__ import annotations

import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.plan import STATUS_PAGE, DispatchEvent
from services.dispatcher.render import RenderContext, RenderedMessage, render
from shared.contracts import (
    AlertStatus,
    Incident,
    IncidentStatus,
    Severity,
    UpdateAuthor,
    UpdateDue,
)
from shared.settings import Settings
from tests.support.builders import (
    T0,
    make_alert_state,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_severity_changed,
    make_incident_updated,
    make_resolved_incident,
    make_update_due,
)

STATUS_URL = "https://status.example.com/"
IMPACT = "Customers cannot place orders on the website."
TIMESTAMP_WITH_ZONE = re.compile(
    r"\b\d{2}:\d{2} [A-Z]{3,5}, [A-Z][a-z]{2} \d{1,2} [A-Z][a-z]{2} \d{4}\b"
)
APOLOGY = re.compile(r"\bsorry\b", re.IGNORECASE)

CONTEXT = RenderContext(
    organization="Example Shop",
    status_page_url=STATUS_URL,
    timezone=ZoneInfo("UTC"),
    update_intervals={
        Severity.CRITICAL: timedelta(minutes=30),
        Severity.ERROR: timedelta(hours=1),
        Severity.WARNING: timedelta(hours=2),
        Severity.INFO: timedelta(hours=4),
    },
)


def checkout_incident(summary: str = "HTTP 5xx ratio above 5%") -> Incident:
    """The open incident every message here is about."""
    alert = make_alert_state(summary=summary)
    return make_incident(service="checkout", impact=IMPACT, alerts=(alert,))


def resolved_checkout_incident() -> Incident:
    """The same incident, resolved 65 minutes after it opened."""
    alert = make_alert_state(status=AlertStatus.RESOLVED)
    return make_resolved_incident(
        resolved_at=T0 + timedelta(minutes=65), service="checkout", impact=IMPACT, alerts=(alert,)
    )


def events(incident: Incident) -> dict[str, DispatchEvent]:
    return {
        "opened": make_incident_opened(incident, occurred_at=T0),
        "updated": make_incident_updated(
            incident,
            occurred_at=T0 + timedelta(minutes=10),
            changes=("Payments by card are affected too",),
        ),
        "severity_changed": make_incident_severity_changed(
            incident, previous_severity=Severity.WARNING, occurred_at=T0 + timedelta(minutes=10)
        ),
        "update_due": make_update_due(
            incident_id=incident.id,
            sequence=3,
            due_at=T0 + timedelta(minutes=90),
            next_update_at=T0 + timedelta(minutes=120),
        ),
        "resolved": make_incident_resolved(resolved_checkout_incident()),
    }


def rendered(kind: str, channel: str = "email") -> RenderedMessage:
    incident = checkout_incident()
    event = events(incident)[kind]
    subject_incident = event.incident if not isinstance(event, UpdateDue) else incident
    return render(event, subject_incident, CONTEXT, channel)


ALL_KINDS = ["opened", "updated", "severity_changed", "update_due", "resolved"]
OPEN_KINDS = ["opened", "updated", "severity_changed", "update_due"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_email_has_impact_link_timestamp_and_apology(kind: str) -> None:
    message = rendered(kind)
    assert message.html is not None
    for body in (message.text, message.html):
        assert IMPACT in body
        assert STATUS_URL in body
        assert TIMESTAMP_WITH_ZONE.search(body), body
        assert APOLOGY.search(body), body


@pytest.mark.parametrize(
    ("kind", "next_update"),
    [
        ("opened", "15:00 UTC, Mon 23 Nov 2026"),  # occurred_at + 30 min (critical)
        ("updated", "15:10 UTC, Mon 23 Nov 2026"),
        ("severity_changed", "15:10 UTC, Mon 23 Nov 2026"),
        ("update_due", "16:30 UTC, Mon 23 Nov 2026"),  # carried by UpdateDue
    ],
)
def test_open_incident_messages_promise_a_concrete_next_update(kind: str, next_update: str) -> None:
    message = rendered(kind)
    assert message.html is not None
    assert f"Next update: by {next_update}" in message.text
    assert next_update in message.html
    assert f"Next update by {next_update}" in rendered(kind, STATUS_PAGE).text


def test_resolution_apologises_says_how_long_and_promises_no_update() -> None:
    message = rendered("resolved")
    assert message.subject == "Resolved: Checkout is failing"
    assert "about 1 hour and 5 minutes" in message.text
    assert "from 14:30 UTC, Mon 23 Nov 2026 to 15:35 UTC, Mon 23 Nov 2026" in message.text
    assert "post-incident review" in message.text
    assert "Next update" not in message.text
    assert message.html is not None
    assert "Next update" not in message.html
    status = rendered("resolved", STATUS_PAGE)
    assert "sorry" in status.text
    assert "Next update" not in status.text


@pytest.mark.parametrize(
    ("kind", "subject"),
    [
        ("opened", "Investigating: Checkout is failing"),
        ("updated", "Update: Checkout is failing"),
        ("severity_changed", "Update: Checkout is failing"),
        ("update_due", "Update 3: Checkout is failing"),
        ("resolved", "Resolved: Checkout is failing"),
    ],
)
def test_subjects_are_short_and_plain(kind: str, subject: str) -> None:
    assert rendered(kind).subject == subject


def test_update_due_says_still_investigating_without_news() -> None:
    text = rendered("update_due").text
    assert "still investigating" in text
    assert "no new information" in text


def test_update_names_what_changed() -> None:
    assert "- Payments by card are affected too" in rendered("updated").text


def test_an_operator_update_carries_their_words_first() -> None:
    event = make_incident_updated(
        checkout_incident(),
        author=UpdateAuthor.OPERATOR,
        message="We rolled back the 14:02 deploy; errors are falling.",
    )
    for channel in ("email", STATUS_PAGE):
        text = render(event, event.incident, CONTEXT, channel).text
        assert "We rolled back the 14:02 deploy; errors are falling." in text
        assert "new information" not in text


def test_a_monitoring_update_does_not_claim_work_is_ongoing() -> None:
    holding = checkout_incident().model_copy(update={"status": IncidentStatus.MONITORING})
    event = make_incident_updated(holding, changes=("Every affected instance has recovered.",))

    text = render(event, holding, CONTEXT, "email").text

    assert "watching closely" in text
    assert "still working on it" not in text


def test_severity_change_says_which_way_in_plain_words() -> None:
    worse = rendered("severity_changed").text
    assert "more serious" in worse
    assert "a major outage" in worse
    assert "degraded performance" in worse
    incident = checkout_incident().model_copy(update={"severity": Severity.WARNING})
    better = make_incident_severity_changed(
        incident, previous_severity=Severity.CRITICAL, occurred_at=T0
    )
    assert "impact has lessened" in render(better, incident, CONTEXT).text


def test_technical_details_come_last_and_labelled() -> None:
    text = rendered("opened").text
    label = text.index("Technical details")
    assert text.index("HTTP 5xx ratio above 5%") > label
    assert text.index(STATUS_URL) < label


def test_html_escapes_alert_summaries() -> None:
    incident = checkout_incident(summary='<script>alert("x")</script>')
    message = render(make_incident_opened(incident), incident, CONTEXT)
    assert message.html is not None
    assert "<script>" not in message.html
    assert "&lt;script&gt;" in message.html
    assert '<script>alert("x")</script>' in message.text  # plain text is not HTML


def test_html_escapes_title_and_impact() -> None:
    incident = checkout_incident().model_copy(
        update={"title": "<b>Checkout</b>", "impact": "Orders & <i>payments</i> fail"}
    )
    message = render(make_incident_opened(incident), incident, CONTEXT)
    assert message.html is not None
    assert "<b>Checkout</b>" not in message.html
    assert "Orders &amp; &lt;i&gt;payments&lt;/i&gt; fail" in message.html
    assert message.subject == "Investigating: <b>Checkout</b>"


def test_subject_never_carries_a_line_break() -> None:
    incident = checkout_incident().model_copy(update={"title": "Checkout\r\nBcc: x@example.com"})
    message = render(make_incident_opened(incident), incident, CONTEXT)
    assert "\n" not in message.subject
    assert "\r" not in message.subject


def test_times_use_the_display_time_zone() -> None:
    settings = Settings(
        _env_file=None, display_timezone="Europe/Berlin", public_status_url=STATUS_URL
    )
    context = RenderContext.from_settings(settings)
    incident = checkout_incident()
    message = render(make_incident_opened(incident, occurred_at=T0), incident, context)
    assert "15:30 CET, Mon 23 Nov 2026" in message.text  # the timestamp
    assert "Next update: by 16:00 CET, Mon 23 Nov 2026" in message.text  # +30 min, critical
    assert STATUS_URL in message.text


@pytest.mark.parametrize("kind", OPEN_KINDS)
def test_status_page_text_is_short_and_has_no_html(kind: str) -> None:
    message = rendered(kind, STATUS_PAGE)
    assert message.html is None
    assert message.subject in {"Investigating", "Update"}
    assert len(message.text) < 400


def test_resolution_counts_from_when_the_first_alert_started() -> None:
    resolved = resolved_checkout_incident()
    early_alert = resolved.alerts[0].model_copy(update={"starts_at": T0 - timedelta(minutes=10)})
    incident = resolved.model_copy(update={"alerts": (early_alert,)})
    event = make_incident_resolved(incident, occurred_at=T0)
    text = render(event, incident, CONTEXT).text
    assert "from 14:20 UTC" in text
    assert "about 1 hour and 15 minutes" in text


def test_technical_details_list_each_affected_instance_once() -> None:
    base = checkout_incident()
    alerts = tuple(
        base.alerts[0].model_copy(
            update={"fingerprint": f"fp-{i}", "description": f"5xx ratio high on web-{i % 2}"}
        )
        for i in range(4)
    )
    incident = base.model_copy(update={"alerts": alerts})
    event = make_incident_opened(incident)
    text = render(event, incident, CONTEXT).text
    assert text.count("5xx ratio high on web-0") == 1
    assert text.count("5xx ratio high on web-1") == 1
