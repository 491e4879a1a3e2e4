"""check_plan and preview: every message a plan can send, rendered and checked beforehand."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dispatcher.plan_check import (
    SAMPLE_LABELS,
    CheckRow,
    PlanReport,
    RowKind,
    check_plan,
    preview,
    sample,
)
from services.dispatcher.rendering.messages import SHIPPED_TEMPLATES
from shared.contracts import IncidentStatus, Severity, UpdateDue
from shared.plan import ChannelName, EventKind, Plan, load_plan, parse_plan
from shared.settings import Settings

SETTINGS = Settings(dispatcher_host="127.0.0.1", dispatcher_port=8001)

SMALL = """\
version: 1
organization: Acme
sms_max_segments: {segments}
timezones: {zones}
severities:
  SEV1: {{name: a major outage, update_every: 30m}}
  SEV2: {{name: a partial outage, update_every: 1h}}
  SEV3: {{name: degraded performance}}
  SEV4: {{name: a minor issue, internal_only: true}}
audiences:
  customers:
    public: true
    email: [customer@example.invalid]
    sms: ["+15555550100"]
  engineering:
    email: [eng@example.invalid]
    slack:
      - {{name: "#incidents", url_env: PLAN_CHECK_TEST_WEBHOOK}}
routes:
  - audiences: [customers]
  - audiences: [engineering]
"""

# The shipped short template, minus its apology.
NO_APOLOGY = (
    (SHIPPED_TEMPLATES / "short" / "message.txt.j2")
    .read_text()
    .replace("{{ say.short_apology() }} ", "")
)


def small_plan(
    tmp_path: Path,
    templates: dict[str, str] | None = None,
    *,
    segments: int = 3,
    zones: str = "[UTC]",
) -> Plan:
    """The small plan above; ``templates`` (path: source) become its templates_dir."""
    text = SMALL.format(segments=segments, zones=zones)
    if templates is not None:
        directory = tmp_path / "plan-templates"
        for name, source in templates.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(source, encoding="utf-8")
        text += "templates_dir: plan-templates\n"
    return parse_plan(text, tmp_path / "plan.yaml")


def key(row: CheckRow) -> tuple[str, str, str, str]:
    return (row.severity, row.event, row.audience, row.channel)


def failing(report: PlanReport) -> dict[tuple[str, str, str, str], list[str]]:
    return {key(row): row.reasons for row in report.failures}


@pytest.fixture(autouse=True)
def _no_webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLAN_CHECK_TEST_WEBHOOK", raising=False)


def test_the_shipped_default_plan_passes() -> None:
    report = check_plan(load_plan(), SETTINGS)

    assert failing(report) == {}
    assert report.passed
    assert len(report.messages) > 100


def test_the_default_plan_is_checked_on_every_route_it_has() -> None:
    rows = {key(row) for row in check_plan(load_plan(), SETTINGS).messages}

    customer_sev1 = {
        channel for sev, _, who, channel in rows if (sev, who) == ("SEV1", "customers")
    }
    assert customer_sev1 == {"status_page", "email", "sms", "mastodon", "bluesky", "x"}
    customer_sev3 = {event for sev, event, who, _ in rows if (sev, who) == ("SEV3", "customers")}
    assert customer_sev3 == {"opened", "resolved", "postmortem_published"}
    assert not any(sev == "SEV4" and who == "customers" for sev, _, who, _ in rows)
    executives = {(sev, event) for sev, event, who, _ in rows if who == "executives"}
    assert executives == {
        ("SEV1", event)
        for event in ("opened", "severity_changed", "resolved", "postmortem_published")
    }
    assert ("SEV4", "update_due", "engineering", "slack") in rows


def test_the_small_plan_passes_with_only_a_warning_for_the_unset_webhook(
    tmp_path: Path,
) -> None:
    report = check_plan(small_plan(tmp_path), SETTINGS)

    assert report.passed
    assert [(row.audience, row.channel, row.reasons) for row in report.warnings] == [
        (
            "engineering",
            "slack",
            ["PLAN_CHECK_TEST_WEBHOOK is not set: messages to #incidents go to the local outbox"],
        )
    ]
    assert all(row.ok for row in report.warnings)


def test_no_warning_once_the_secret_is_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAN_CHECK_TEST_WEBHOOK", "https://hooks.example.com/x")

    assert check_plan(small_plan(tmp_path), SETTINGS).warnings == []


def test_an_override_without_the_apology_fails_naming_the_apology(tmp_path: Path) -> None:
    plan = small_plan(tmp_path, {"short/message.txt.j2": NO_APOLOGY})

    report = check_plan(plan, SETTINGS)

    assert not report.passed
    sms_failures = {(sev, event) for sev, event, _, channel in failing(report) if channel == "sms"}
    assert sms_failures == {
        (sev, event) for sev in ("SEV1", "SEV2", "SEV3") for event in ("opened", "resolved")
    }
    assert failing(report)[("SEV1", "opened", "customers", "sms")] == [
        "no apology: an opened message must apologise (sorry/apologise/apologies)"
    ]
    assert not any(channel == "email" for _, _, _, channel in failing(report))


def test_an_undefined_variable_fails_naming_the_template(tmp_path: Path) -> None:
    plan = small_plan(tmp_path, {"email/subject.txt.j2": "{{ title }} {{ ticket_number }}\n"})

    report = check_plan(plan, SETTINGS)

    reasons = failing(report)
    # Internal audiences fail on render errors too.
    assert set(reasons) == {
        (severity.sev, event.value, audience, "email")
        for severity in Severity
        for event in EventKind
        for audience in ("customers", "engineering")
        if not (audience == "customers" and (severity is Severity.INFO or event.internal_only))
    }
    assert reasons[("SEV2", "updated", "engineering", "email")] == [
        "cannot render: plan-templates/email/subject.txt.j2 line 1: 'ticket_number' is undefined"
    ]


def test_a_syntax_error_is_a_failing_template_row(tmp_path: Path) -> None:
    plan = small_plan(tmp_path, {"unused/broken.txt.j2": "line one\n{% if %}\n"})

    report = check_plan(plan, SETTINGS)

    assert [(row.kind, row.ok) for row in report.failures] == [(RowKind.TEMPLATE, False)]
    [reason] = report.failures[0].reasons
    assert reason.startswith("plan-templates/unused/broken.txt.j2 line 2: syntax error")


def test_alert_labels_in_a_customer_subject_are_jargon(tmp_path: Path) -> None:
    alertname = SAMPLE_LABELS[0]["alertname"]
    plan = small_plan(tmp_path, {"email/subject.txt.j2": f"[{alertname}] {{{{ title }}}}\n"})

    reasons = failing(check_plan(plan, SETTINGS))

    assert reasons[("SEV1", "opened", "customers", "email")] == [
        f"subject: found jargon: term {alertname}"
    ]
    assert not any(who == "engineering" for _, _, who, _ in reasons)  # they may read it


def test_a_shortened_message_that_lost_the_impact_fails(tmp_path: Path) -> None:
    report = check_plan(small_plan(tmp_path, segments=1), SETTINGS)

    row = next(r for r in report.messages if key(r) == ("SEV1", "opened", "customers", "sms"))
    assert row.shortened
    assert row.reasons == [
        'no impact: shortening the message to fit the channel cut "Customers cannot complete '
        'checkout"',
        "no apology: an opened message must apologise (sorry/apologise/apologies)",
    ]


def test_a_kept_part_too_long_for_the_channel_fails_to_render(tmp_path: Path) -> None:
    zones = "[UTC, America/New_York, Asia/Tokyo, Australia/Sydney]"
    report = check_plan(small_plan(tmp_path, segments=1, zones=zones), SETTINGS)

    [reason] = failing(report)[("SEV1", "opened", "customers", "sms")]
    assert reason.startswith("cannot render: sms: the text that must be kept measures ")


def test_a_service_specific_route_is_checked_with_a_matching_incident(tmp_path: Path) -> None:
    text = SMALL.format(segments=3, zones="[UTC]").replace(
        "  - audiences: [customers]\n",
        "  - audiences: [customers]\n    match: {services: [payments]}\n    channels: [sms]\n",
    )
    plan = parse_plan(text, tmp_path / "plan.yaml")

    rows = {key(row) for row in check_plan(plan, SETTINGS).messages}

    assert ("SEV2", "opened", "customers", "sms") in rows


def test_samples_promise_the_plans_next_update() -> None:
    plan = load_plan()

    opened = sample(plan, Severity.CRITICAL, EventKind.OPENED)
    assert opened.event.next_update_at == plan.next_update_at(
        Severity.CRITICAL, opened.incident.opened_at
    )
    assert sample(plan, Severity.WARNING, EventKind.OPENED).event.next_update_at is None
    due = sample(plan, Severity.ERROR, EventKind.UPDATE_DUE).event
    assert isinstance(due, UpdateDue)
    assert due.next_update_at == plan.next_update_at(Severity.ERROR, due.due_at)


def test_closing_samples_are_about_a_resolved_incident() -> None:
    plan = load_plan()

    for kind in (EventKind.RESOLVED, EventKind.POSTMORTEM_PUBLISHED):
        closing = sample(plan, Severity.CRITICAL, kind)
        assert closing.incident.status is IncidentStatus.RESOLVED
        assert closing.incident.resolved_at is not None
        assert closing.event.next_update_at is None
    postmortem = sample(plan, Severity.CRITICAL, EventKind.POSTMORTEM_PUBLISHED).incident
    assert postmortem.postmortem_url is not None
    assert postmortem.postmortem_summary is not None
    opened = sample(plan, Severity.CRITICAL, EventKind.OPENED).incident
    assert opened.customer_title is None
    assert opened.status is IncidentStatus.INVESTIGATING
    assert opened.alerts[0].labels["instance"] == "db-1.prod.internal:9100"


def test_preview_gives_one_message_per_channel_of_the_route() -> None:
    messages = preview(load_plan(), SETTINGS, EventKind.OPENED, Severity.CRITICAL, "customers")

    assert [(who, channel) for who, channel, _ in messages] == [
        ("customers", channel)
        for channel in (
            ChannelName.STATUS_PAGE,
            ChannelName.EMAIL,
            ChannelName.SMS,
            ChannelName.MASTODON,
            ChannelName.BLUESKY,
            ChannelName.X,
        )
    ]
    email = next(message for _, channel, message in messages if channel is ChannelName.EMAIL)
    assert email.title == "Investigating: A major outage affecting checkout"
    assert "Next update by 15:00 UTC, Mon 23 Nov 2026" in email.text
    assert email.html is not None


def test_preview_of_every_audience_and_of_one_nobody_hears() -> None:
    plan = load_plan()

    everyone = preview(plan, SETTINGS, EventKind.OPENED, Severity.CRITICAL)
    assert {who for who, _, _ in everyone} == {"customers", "engineering", "support", "executives"}
    assert preview(plan, SETTINGS, EventKind.UPDATED, Severity.CRITICAL, "executives") == []
