"""Renderer: one event, one audience, one channel, in that channel's shape and limits.

Customers read plain words (never alert labels, summaries, hosts or links); internal
audiences also get the technical detail. Every message says when the next update is.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from services.dispatcher.rendering.limits import limit_for, sms_info, x_length
from services.dispatcher.rendering.messages import SHORT_CHANNELS, RenderedMessage, Renderer
from services.dispatcher.rendering.values import DispatchEvent, RenderContext, customer_title
from shared.contracts import (
    AlertStatus,
    Incident,
    IncidentPostmortemPublished,
    IncidentStatus,
    Severity,
    UpdateAuthor,
)
from shared.plan import ChannelName, EventKind, Plan
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
from tests.support.plans import make_plan

PUBLIC: Final = "customers"
INTERNAL: Final = "engineering"
STATUS_URL: Final = "https://status.example.com"
IMPACT: Final = "Customers cannot place orders on the website."
SUMMARY: Final = "HTTP 5xx ratio above 5%"
DESCRIPTION: Final = "5xx ratio high on web-1.prod.internal"
LABELS: Final = {
    "alertname": "CheckoutHighErrorRate",
    "instance": "db-1.prod.internal:9100",
    "job": "node-exporter",
}
RUNBOOK: Final = "https://runbooks.example.com/checkout-errors"
GENERATOR: Final = "https://prometheus.example.com/graph?g0.expr=rate"
EXTERNAL: Final = "https://alertmanager.example.com/#/alerts?receiver=clarion"
POSTMORTEM_URL: Final = "https://status.example.com/postmortems/checkout"
NEXT_UPDATE: Final = "15:00 UTC, Mon 23 Nov 2026 (10:00 EST)"
"""T0 + 30 minutes in the plan's zones (UTC first, New York alongside)."""

TECHNICAL: Final = (
    SUMMARY,
    DESCRIPTION,
    "alertname",
    "CheckoutHighErrorRate",
    "db-1.prod.internal",
    "node-exporter",
    "web-1.prod.internal",
    "runbooks.example.com",
    "prometheus.example.com",
    "alertmanager.example.com",
    "Checkout is failing",  # the alerts' own title, not the customers' words
)
"""Words a customer must never read: the alert's labels, summary, hosts, links and title."""

TIMESTAMP_WITH_ZONE: Final = re.compile(
    r"\b\d{2}:\d{2} [A-Z]{3,5}, [A-Z][a-z]{2} \d{1,2} [A-Z][a-z]{2} \d{4}\b"
)
APOLOGY: Final = re.compile(r"\b(sorry|apologise)\b", re.IGNORECASE)


def audience(public: bool, tag: str) -> dict[str, Any]:
    """An audience with one recipient on every channel (the status page for the public one)."""
    return {
        "public": public,
        "email": [f"{tag}@example.com"],
        "sms": ["+14155550100" if public else "+14155550101"],
        "mastodon": [
            {"instance": f"https://{tag}.mastodon.example", "access_token_env": "MASTODON_TOKEN"}
        ],
        "bluesky": [{"handle": f"{tag}.example.com", "app_password_env": "BLUESKY_PASSWORD"}],
        "x": [{"account": tag, "access_token_env": "X_TOKEN"}],
        "slack": [{"name": f"#{tag}", "url_env": "SLACK_URL"}],
        "discord": [{"name": f"{tag}-discord", "url_env": "DISCORD_URL"}],
        "chat_webhook": [{"name": f"{tag}-chat", "url_env": "CHAT_URL"}],
        "webhook": [{"name": f"{tag}-hook", "url": f"https://{tag}.example.com/hook"}],
        "status_page": public,
    }


def every_channel_plan(**overrides: Any) -> Plan:
    """Customers (public) and engineering (internal), each on every channel, hear everything."""
    values: dict[str, Any] = {
        "organization": "Example Shop",
        "status_page_url": STATUS_URL,
        "timezones": ["UTC", "America/New_York"],
        "audiences": {PUBLIC: audience(True, "customers"), INTERNAL: audience(False, "eng")},
        "routes": [{"name": "everyone", "audiences": [PUBLIC, INTERNAL]}],
    }
    return make_plan(**(values | overrides))


PLAN: Final = every_channel_plan()
SETTINGS: Final = Settings(_env_file=None)


def renderer(plan: Plan = PLAN) -> Renderer:
    return Renderer(RenderContext.of(plan, SETTINGS))


def checkout_incident(**overrides: Any) -> Incident:
    """The open, critical checkout incident every message here is about, with a technical alert."""
    alert = make_alert_state(
        summary=SUMMARY,
        description=DESCRIPTION,
        labels=LABELS,
        links={"runbook": RUNBOOK, "generator": GENERATOR},
    )
    values: dict[str, Any] = {
        "service": "checkout",
        "impact": IMPACT,
        "alerts": (alert,),
        "external_url": EXTERNAL,
        "acknowledged_by": "oncall-bob",
    }
    return make_incident(**(values | overrides))


def resolved_checkout_incident(**overrides: Any) -> Incident:
    """The same incident, resolved 65 minutes after it opened."""
    alert = checkout_incident().alerts[0].model_copy(update={"status": AlertStatus.RESOLVED})
    values: dict[str, Any] = {
        "service": "checkout",
        "impact": IMPACT,
        "alerts": (alert,),
        "external_url": EXTERNAL,
    }
    return make_resolved_incident(resolved_at=T0 + timedelta(minutes=65), **(values | overrides))


def sample(kind: EventKind) -> tuple[DispatchEvent, Incident]:
    """An event of ``kind`` and the incident as it stands when it is dispatched."""
    incident = checkout_incident()
    next_update = T0 + timedelta(minutes=30)
    event: DispatchEvent
    if kind is EventKind.OPENED:
        return make_incident_opened(incident, occurred_at=T0, next_update_at=next_update), incident
    if kind is EventKind.UPDATED:
        event = make_incident_updated(
            incident,
            occurred_at=T0 + timedelta(minutes=10),
            changes=("Payments by card are affected too.",),
            next_update_at=next_update,
        )
        return event, incident
    if kind is EventKind.SEVERITY_CHANGED:
        event = make_incident_severity_changed(
            incident,
            previous_severity=Severity.WARNING,
            occurred_at=T0 + timedelta(minutes=10),
            next_update_at=next_update,
        )
        return event, incident
    if kind is EventKind.UPDATE_DUE:
        event = make_update_due(
            sequence=3,
            due_at=T0 + timedelta(minutes=90),
            next_update_at=T0 + timedelta(minutes=120),
        )
        return event, incident
    resolved = resolved_checkout_incident()
    if kind is EventKind.RESOLVED:
        return make_incident_resolved(resolved, occurred_at=resolved.updated_at), resolved
    reviewed = resolved.model_copy(
        update={
            "postmortem_url": POSTMORTEM_URL,
            "postmortem_summary": "A configuration change overloaded the order database.",
        }
    )
    published = IncidentPostmortemPublished(
        event_id="ev-postmortem",
        occurred_at=T0 + timedelta(days=2),
        incident=reviewed,
    )
    return published, reviewed


def rendered(
    kind: EventKind,
    audience_name: str = PUBLIC,
    channel: ChannelName = ChannelName.EMAIL,
    plan: Plan = PLAN,
) -> RenderedMessage:
    event, incident = sample(kind)
    return renderer(plan).render(event, incident, audience_name, channel)


def everything(message: RenderedMessage) -> str:
    """Every word a reader could see: title, text, HTML and the JSON payload."""
    payload = json.dumps(message.payload) if message.payload is not None else ""
    return "\n".join((message.title, message.text, message.html or "", payload))


JSON_CHANNELS: Final = (
    ChannelName.SLACK,
    ChannelName.DISCORD,
    ChannelName.CHAT_WEBHOOK,
    ChannelName.WEBHOOK,
)
TEXT_WITH_DETAIL: Final = (ChannelName.EMAIL, ChannelName.CHAT_WEBHOOK, ChannelName.WEBHOOK)
"""Channels whose internal message carries the whole technical section (labels too)."""


# Every shipped template renders


@pytest.mark.parametrize("channel", list(ChannelName))
@pytest.mark.parametrize("kind", list(EventKind))
@pytest.mark.parametrize("audience_name", [PUBLIC, INTERNAL])
def test_every_shipped_template_renders(
    audience_name: str, kind: EventKind, channel: ChannelName
) -> None:
    message = rendered(kind, audience_name, channel)

    assert message.channel == channel
    assert message.title.strip()
    assert "\n" not in message.title
    assert message.text.strip()
    assert (message.html is not None) is (channel is ChannelName.EMAIL)
    assert (message.payload is not None) is (channel in JSON_CHANNELS)
    assert (message.status is not None) is (channel is ChannelName.STATUS_PAGE)
    if channel is not ChannelName.STATUS_PAGE:  # the page itself needs no link to itself
        assert STATUS_URL in message.text or POSTMORTEM_URL in message.text
    if channel in SHORT_CHANNELS:
        limit = limit_for(channel, max_sms_segments=PLAN.sms_max_segments)
        assert limit is not None
        assert limit.fits(message.text)
        assert "\n" not in message.text


@pytest.mark.parametrize("channel", list(ChannelName))
@pytest.mark.parametrize("kind", list(EventKind))
def test_customer_messages_never_carry_alert_details(kind: EventKind, channel: ChannelName) -> None:
    words = everything(rendered(kind, PUBLIC, channel))

    leaked = [word for word in TECHNICAL if word in words]
    assert leaked == [], words
    assert "oncall-bob" not in words


@pytest.mark.parametrize("channel", TEXT_WITH_DETAIL)
@pytest.mark.parametrize("kind", [EventKind.OPENED, EventKind.UPDATED, EventKind.RESOLVED])
def test_internal_messages_carry_labels_and_links(kind: EventKind, channel: ChannelName) -> None:
    message = rendered(kind, INTERNAL, channel)

    for body in (message.text, message.html or message.text):
        assert "alertname=CheckoutHighErrorRate" in body
        assert "instance=db-1.prod.internal:9100" in body
        assert RUNBOOK in body
        assert GENERATOR.replace("&", "&amp;") in body
        assert SUMMARY in body
        assert EXTERNAL in body
    assert "Checkout is failing" in message.title


@pytest.mark.parametrize("channel", [ChannelName.SLACK, ChannelName.DISCORD])
def test_internal_chat_messages_link_the_runbook_and_the_generator(channel: ChannelName) -> None:
    words = everything(rendered(EventKind.OPENED, INTERNAL, channel))

    assert SUMMARY in words
    assert RUNBOOK in words
    assert GENERATOR in words
    assert EXTERNAL in words


def test_internal_email_subject_names_the_severity() -> None:
    assert rendered(EventKind.OPENED, INTERNAL).title == "[SEV1] Investigating: Checkout is failing"
    assert rendered(EventKind.OPENED, PUBLIC).title == (
        "Investigating: A major outage affecting checkout"
    )


# The customer-facing title


def test_an_operator_title_beats_the_customer_summary_and_the_plan_words() -> None:
    incident = checkout_incident(
        title="Card payments are slow",
        customer_title="Checkout is degraded",
        headline_by_operator=True,
    )
    event = make_incident_opened(incident)

    assert customer_title(incident, PLAN) == "Card payments are slow"
    message = renderer().render(event, incident, PUBLIC, ChannelName.EMAIL)
    assert message.title == "Investigating: Card payments are slow"


def test_a_customer_summary_beats_the_plan_words() -> None:
    incident = checkout_incident(customer_title="Checkout is degraded")
    event = make_incident_opened(incident)

    assert customer_title(incident, PLAN) == "Checkout is degraded"
    assert renderer().render(event, incident, PUBLIC, ChannelName.STATUS_PAGE).title == (
        "Checkout is degraded"
    )
    # Internal readers see the alerts' own title.
    assert renderer().render(event, incident, INTERNAL, ChannelName.STATUS_PAGE).title == (
        "Checkout is failing"
    )


def test_without_either_customers_read_the_plan_words_for_the_severity() -> None:
    assert customer_title(checkout_incident(), PLAN) == "A major outage affecting checkout"
    assert customer_title(checkout_incident(service=None), PLAN) == "A major outage"
    partial = checkout_incident(severity=Severity.ERROR)
    assert customer_title(partial, PLAN) == "A partial outage affecting checkout"


# Next update, no news, time zones


@pytest.mark.parametrize("kind", [EventKind.OPENED, EventKind.UPDATED, EventKind.SEVERITY_CHANGED])
@pytest.mark.parametrize(
    "channel", [ChannelName.EMAIL, ChannelName.STATUS_PAGE, ChannelName.SMS, ChannelName.SLACK]
)
def test_the_next_update_is_the_events_promise(kind: EventKind, channel: ChannelName) -> None:
    message = rendered(kind, PUBLIC, channel)

    assert f"Next update by {NEXT_UPDATE}" in message.text
    if message.html is not None:
        assert f"Next update by {NEXT_UPDATE}" in message.html


def test_an_update_due_promises_its_own_next_update() -> None:
    message = rendered(EventKind.UPDATE_DUE)

    assert "Next update by 16:30 UTC, Mon 23 Nov 2026 (11:30 EST)" in message.text


@pytest.mark.parametrize("channel", [ChannelName.EMAIL, ChannelName.STATUS_PAGE, ChannelName.SMS])
def test_without_a_next_update_the_message_says_when_we_will_post(channel: ChannelName) -> None:
    incident = checkout_incident(severity=Severity.WARNING)
    event = make_incident_opened(incident, next_update_at=None)

    message = renderer().render(event, incident, PUBLIC, channel)

    assert "We will post an update when it is resolved" in message.text
    assert "Next update by" not in message.text


def test_an_update_due_without_a_next_update_says_when_we_will_post() -> None:
    due = make_update_due(next_update_at=None)

    message = renderer().render(due, checkout_incident(), PUBLIC, ChannelName.EMAIL)

    assert "We will post an update when it is resolved" in message.text


@pytest.mark.parametrize("kind", [EventKind.RESOLVED, EventKind.POSTMORTEM_PUBLISHED])
@pytest.mark.parametrize("channel", list(ChannelName))
def test_closing_messages_promise_no_update(kind: EventKind, channel: ChannelName) -> None:
    message = rendered(kind, PUBLIC, channel)

    assert "Next update" not in everything(message)
    assert "We will post an update" not in everything(message)


@pytest.mark.parametrize(
    "channel", [ChannelName.EMAIL, ChannelName.STATUS_PAGE, ChannelName.SMS, ChannelName.DISCORD]
)
def test_update_due_says_there_is_no_new_information(channel: ChannelName) -> None:
    message = rendered(EventKind.UPDATE_DUE, PUBLIC, channel)

    assert "no new information" in message.text


def test_update_due_subject_counts_the_updates() -> None:
    assert rendered(EventKind.UPDATE_DUE).title == "Update 3: A major outage affecting checkout"


def test_times_appear_in_every_zone_of_the_plan() -> None:
    plan = every_channel_plan(timezones=["Europe/Berlin", "America/New_York", "Asia/Tokyo"])
    incident = checkout_incident()
    evening = T0 + timedelta(hours=6)  # 20:30 UTC: already Tuesday in Tokyo
    event = make_incident_opened(
        incident, occurred_at=evening, next_update_at=evening + timedelta(minutes=30)
    )

    message = Renderer(RenderContext.of(plan, SETTINGS)).render(
        event, incident, PUBLIC, ChannelName.EMAIL
    )

    assert "21:30 CET, Mon 23 Nov 2026 (15:30 EST, 05:30 JST Tue)" in message.text
    assert "Next update by 22:00 CET, Mon 23 Nov 2026 (16:00 EST, 06:00 JST Tue)" in message.text


def test_without_a_plan_page_the_built_in_status_page_is_linked() -> None:
    plan = every_channel_plan(status_page_url=None)
    settings = Settings(_env_file=None, dispatcher_host="status.internal", dispatcher_port=8123)
    event, incident = sample(EventKind.OPENED)

    message = Renderer(RenderContext.of(plan, settings)).render(
        event, incident, PUBLIC, ChannelName.EMAIL
    )

    assert "http://status.internal:8123/status" in message.text


# The elements of a good customer message


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_customer_email_has_impact_link_timestamp_and_apology(kind: EventKind) -> None:
    message = rendered(kind)

    assert message.html is not None
    for body in (message.text, message.html):
        assert IMPACT in body
        assert STATUS_URL in body
        assert TIMESTAMP_WITH_ZONE.search(body), body
        assert APOLOGY.search(body), body


def test_resolution_says_how_long_from_when_to_when() -> None:
    message = rendered(EventKind.RESOLVED)

    assert message.title == "Resolved: A major outage affecting checkout"
    assert "about 1 hour and 5 minutes" in message.text
    assert "from 14:30 UTC, Mon 23 Nov 2026 (09:30 EST)" in message.text
    assert "to 15:35 UTC, Mon 23 Nov 2026 (10:35 EST)" in message.text


def test_resolution_counts_from_when_the_first_alert_started() -> None:
    resolved = resolved_checkout_incident()
    early = resolved.alerts[0].model_copy(update={"starts_at": T0 - timedelta(minutes=10)})
    incident = resolved.model_copy(update={"alerts": (early,)})
    event = make_incident_resolved(incident)

    text = renderer().render(event, incident, PUBLIC, ChannelName.EMAIL).text

    assert "from 14:20 UTC" in text
    assert "about 1 hour and 15 minutes" in text


def test_postmortem_links_the_review() -> None:
    message = rendered(EventKind.POSTMORTEM_PUBLISHED)

    assert message.title == "Post-mortem: A major outage affecting checkout"
    assert f"Read it: {POSTMORTEM_URL}" in message.text
    assert "A configuration change overloaded the order database." in message.text


def test_an_update_names_what_changed() -> None:
    assert "Payments by card are affected too." in rendered(EventKind.UPDATED).text


def test_an_operator_update_carries_their_words() -> None:
    incident = checkout_incident()
    event = make_incident_updated(
        incident,
        author=UpdateAuthor.OPERATOR,
        message="We rolled back the 14:02 deploy; errors are falling.",
    )
    for channel in (ChannelName.EMAIL, ChannelName.STATUS_PAGE, ChannelName.SMS):
        text = renderer().render(event, incident, PUBLIC, channel).text
        assert "We rolled back the 14:02 deploy; errors are falling." in text
        assert "new information" not in text


def test_a_monitoring_update_does_not_claim_work_is_ongoing() -> None:
    holding = checkout_incident(status=IncidentStatus.MONITORING)
    event = make_incident_updated(holding, changes=("Every affected instance has recovered.",))

    text = renderer().render(event, holding, PUBLIC, ChannelName.EMAIL).text

    assert "watching closely" in text
    assert "still working on it" not in text


def test_severity_change_says_which_way_in_plain_words() -> None:
    worse = rendered(EventKind.SEVERITY_CHANGED).text
    assert "more serious" in worse
    assert "a major outage" in worse
    assert "degraded performance" in worse

    incident = checkout_incident(severity=Severity.WARNING)
    better = make_incident_severity_changed(incident, previous_severity=Severity.CRITICAL)
    text = renderer().render(better, incident, PUBLIC, ChannelName.EMAIL).text
    assert "impact has lessened" in text


def test_technical_details_come_last_for_internal_readers() -> None:
    text = rendered(EventKind.OPENED, INTERNAL).text

    details = text.index("For engineering")
    assert text.index(SUMMARY) > details
    assert text.index(STATUS_URL) < details


def test_html_escapes_alert_words() -> None:
    alert = make_alert_state(summary='<script>alert("x")</script>', labels={"a": "<b>"})
    incident = checkout_incident(alerts=(alert,))

    message = renderer().render(
        make_incident_opened(incident), incident, INTERNAL, ChannelName.EMAIL
    )

    assert message.html is not None
    assert "<script>" not in message.html
    assert "&lt;script&gt;" in message.html
    assert "a=&lt;b&gt;" in message.html
    assert '<script>alert("x")</script>' in message.text  # plain text is not HTML


@pytest.mark.parametrize("name", [PUBLIC, INTERNAL])
def test_html_escapes_title_impact_and_an_operators_words(name: str) -> None:
    incident = checkout_incident(
        title="<b>Checkout</b>", impact="Orders & <i>payments</i> fail", headline_by_operator=True
    )
    updated = make_incident_updated(incident, message="<img src=x onerror=alert(1)>")

    opened = renderer().render(make_incident_opened(incident), incident, name, ChannelName.EMAIL)
    update = renderer().render(updated, incident, name, ChannelName.EMAIL)

    assert opened.html is not None
    assert update.html is not None
    assert "<b>Checkout</b>" not in opened.html
    assert "Investigating: &lt;b&gt;Checkout&lt;/b&gt;" in opened.html
    assert "Orders &amp; &lt;i&gt;payments&lt;/i&gt; fail" in opened.html
    assert "<img" not in update.html
    assert "Investigating: <b>Checkout</b>" in opened.title  # a subject is not HTML


def test_a_title_never_carries_a_line_break() -> None:
    incident = checkout_incident(title="Checkout\r\nBcc: x@example.com", headline_by_operator=True)
    event = make_incident_opened(incident)

    for channel in ChannelName:
        title = renderer().render(event, incident, PUBLIC, channel).title
        assert "\n" not in title
        assert "\r" not in title


# Short channels


def test_sms_is_shortened_but_keeps_the_next_update_and_the_link() -> None:
    plan = every_channel_plan(sms_max_segments=1)  # the whole message needs 2 segments
    event, incident = sample(EventKind.OPENED)

    message = Renderer(RenderContext.of(plan, SETTINGS)).render(
        event, incident, PUBLIC, ChannelName.SMS
    )

    assert message.shortened
    assert message.notes
    assert "shortened to" in message.notes[0]
    assert sms_info(message.text).segments <= 1
    assert f"Next update by {NEXT_UPDATE}" in message.text
    assert STATUS_URL in message.text
    assert message.text.startswith("Example Shop: Investigating")
    assert "..." in message.text  # GSM-7 text is cut with "...", not "…"


def test_x_posts_are_shortened_to_280_weighted_characters_keeping_what_matters() -> None:
    incident = checkout_incident(impact="Customers cannot place orders. " * 12)
    event = make_incident_opened(incident, next_update_at=T0 + timedelta(minutes=30))

    message = renderer().render(event, incident, PUBLIC, ChannelName.X)

    assert message.shortened
    assert x_length(message.text) <= 280
    assert message.text.endswith(f"{STATUS_URL} (14:30 UTC, Mon 23 Nov 2026 (09:30 EST))")
    assert f"Next update by {NEXT_UPDATE}" in message.text
    assert "…" in message.text


def test_a_short_message_that_fits_is_not_marked_shortened() -> None:
    message = rendered(EventKind.RESOLVED, PUBLIC, ChannelName.MASTODON)

    assert not message.shortened
    assert message.notes == ()
    assert "Fixed after about 1 hour and 5 minutes." in message.text


# JSON channels


def test_slack_payload_has_a_header_and_a_section() -> None:
    message = rendered(EventKind.OPENED, PUBLIC, ChannelName.SLACK)

    assert message.payload is not None
    blocks = message.payload["blocks"]
    assert [b["type"] for b in blocks][:2] == ["header", "section"]
    assert blocks[0]["text"] == {
        "type": "plain_text",
        "text": "Investigating: A major outage affecting checkout",
    }
    assert blocks[1]["text"]["type"] == "mrkdwn"
    assert IMPACT in blocks[1]["text"]["text"]
    assert f"<{STATUS_URL}|Status page>" in blocks[1]["text"]["text"]
    assert message.payload["text"].startswith("Investigating: A major outage affecting checkout")


def test_slack_header_is_clipped_to_its_limit_and_says_so() -> None:
    incident = checkout_incident(title="Checkout " * 40, headline_by_operator=True)
    event = make_incident_opened(incident)

    message = renderer().render(event, incident, PUBLIC, ChannelName.SLACK)

    assert message.payload is not None
    header = message.payload["blocks"][0]["text"]["text"]
    assert len(header) <= 150
    assert header.endswith("…")
    assert message.shortened


def test_discord_payload_is_an_embed_that_pings_nobody() -> None:
    alert = make_alert_state(summary="@everyone checkout is down")
    incident = checkout_incident(alerts=(alert,))
    event = make_incident_opened(incident, next_update_at=T0 + timedelta(minutes=30))

    message = renderer().render(event, incident, INTERNAL, ChannelName.DISCORD)

    assert message.payload is not None
    assert message.payload["allowed_mentions"] == {"parse": []}
    [embed] = message.payload["embeds"]
    assert embed["title"] == "Investigating: Checkout is failing"
    assert "@everyone checkout is down" in embed["description"]
    assert embed["url"] == STATUS_URL
    assert embed["timestamp"] == T0.isoformat()
    assert "SEV1" in embed["footer"]["text"]


WEBHOOK_KEYS: Final = {
    "type",
    "event_id",
    "occurred_at",
    "incident",
    "message",
    "next_update_at",
    "status_url",
}
WEBHOOK_INCIDENT_KEYS: Final = {
    "id",
    "title",
    "impact",
    "severity",
    "status",
    "service",
    "components",
    "opened_at",
    "resolved_at",
    "postmortem_url",
}


def test_webhook_json_has_the_documented_keys_and_no_labels_for_customers() -> None:
    message = rendered(EventKind.OPENED, PUBLIC, ChannelName.WEBHOOK)

    payload = message.payload
    assert payload is not None
    assert set(payload) == WEBHOOK_KEYS
    assert set(payload["incident"]) == WEBHOOK_INCIDENT_KEYS
    assert payload["type"] == "incident.opened"
    assert payload["event_id"] == "ev-opened"
    assert payload["occurred_at"] == T0.isoformat()
    assert payload["next_update_at"] == (T0 + timedelta(minutes=30)).isoformat()
    assert payload["status_url"] == STATUS_URL
    assert payload["incident"]["title"] == "A major outage affecting checkout"
    assert payload["incident"]["severity"] == "SEV1"
    assert payload["message"]["title"] == message.title
    assert json.loads(json.dumps(payload)) == payload  # plain JSON, nothing exotic
    document = json.dumps(payload)
    assert [word for word in TECHNICAL if word in document] == []
    assert "labels" not in document


def test_webhook_json_for_a_resolution_promises_no_update() -> None:
    payload = rendered(EventKind.RESOLVED, PUBLIC, ChannelName.WEBHOOK).payload

    assert payload is not None
    assert payload["type"] == "incident.resolved"
    assert payload["next_update_at"] is None
    assert payload["incident"]["resolved_at"] == (T0 + timedelta(minutes=65)).isoformat()


def test_chat_webhook_json_names_the_incident() -> None:
    payload = rendered(EventKind.UPDATE_DUE, PUBLIC, ChannelName.CHAT_WEBHOOK).payload

    assert payload is not None
    assert payload["incident_id"] == "inc-1"
    assert payload["severity"] == "SEV1"
    assert payload["event"] == "update_due"
    assert payload["status_url"] == STATUS_URL
    assert "no new information" in payload["text"]


# A plan's own templates


def test_a_plan_template_for_one_audiences_email_changes_only_that_message(
    tmp_path: Path,
) -> None:
    override = tmp_path / PUBLIC / "email" / "message.txt.j2"
    override.parent.mkdir(parents=True)
    override.write_text("Custom words for {{ audience }}: {{ title }}. {{ status_url }}\n")
    custom = every_channel_plan(templates_dir=str(tmp_path))
    assert custom.templates_dir == str(tmp_path.resolve())

    ours = rendered(EventKind.OPENED, PUBLIC, ChannelName.EMAIL, plan=custom)
    assert ours.text == (
        f"Custom words for customers: A major outage affecting checkout. {STATUS_URL}\n"
    )
    shipped = rendered(EventKind.OPENED, PUBLIC, ChannelName.EMAIL)
    assert ours.html == shipped.html  # only the text part was overridden
    assert ours.title == shipped.title
    for name, channel in [
        (INTERNAL, ChannelName.EMAIL),
        (PUBLIC, ChannelName.SMS),
        (PUBLIC, ChannelName.WEBHOOK),
    ]:
        assert rendered(EventKind.OPENED, name, channel, plan=custom) == rendered(
            EventKind.OPENED, name, channel
        )


def test_a_plan_template_for_one_event_beats_the_audiences_channel_template(
    tmp_path: Path,
) -> None:
    folder = tmp_path / PUBLIC / "sms"
    folder.mkdir(parents=True)
    (folder / "message.txt.j2").write_text("{{ org }} says: {{ title }}\n")
    (folder / "resolved.txt.j2").write_text("{{ org }} fixed: {{ title }}\n")
    custom = every_channel_plan(templates_dir=str(tmp_path))

    opened = rendered(EventKind.OPENED, PUBLIC, ChannelName.SMS, plan=custom)
    resolved = rendered(EventKind.RESOLVED, PUBLIC, ChannelName.SMS, plan=custom)

    assert opened.text == "Example Shop says: A major outage affecting checkout"
    assert resolved.text == "Example Shop fixed: A major outage affecting checkout"


def test_slack_text_escapes_incident_words_so_nobody_is_pinged() -> None:
    incident = checkout_incident(
        title="<!here> Checkout",
        impact="<!channel> Orders & payments fail",
        headline_by_operator=True,
    )

    message = renderer().render(make_incident_opened(incident), incident, PUBLIC, ChannelName.SLACK)

    assert message.payload is not None
    section = message.payload["blocks"][1]["text"]["text"]
    for text in (section, message.payload["text"]):
        assert "<!channel>" not in text
        assert "<!here>" not in text
    assert "&lt;!channel&gt; Orders &amp; payments fail" in section
    assert f"<{STATUS_URL}|Status page>" in section  # Clarion's own link stays a link
