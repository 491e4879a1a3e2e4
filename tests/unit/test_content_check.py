"""The content checker: each element of good incident communication, and jargon."""

from __future__ import annotations

import pytest

from services.dispatcher.rendering.content_check import (
    ELEMENTS,
    Expectations,
    Finding,
    check_message,
    passed,
)
from services.dispatcher.rendering.limits import ChannelLimit, limit_for

STATUS_URL = "https://status.example.com/incidents/42"
IMPACT = "Card payments are failing for some customers"
TIMESTAMP = "14:30 UTC, Mon 23 Nov 2026"
NEXT_UPDATE = "15:00 UTC, Mon 23 Nov 2026"
JARGON = ("alertname", "instance", "job", "HighErrorRate")

OPENED = (
    "Subject: Card payments are failing\n\n"
    f"Since {TIMESTAMP}, card payments are failing for some customers.\n"
    "We are sorry for the trouble this causes. Our engineers are working on it now.\n"
    f"Next update by {NEXT_UPDATE}. Follow along at {STATUS_URL}."
)
UPDATED = (
    f"Update at {TIMESTAMP}: card payments are failing for some customers. "
    f"We have found the cause and are fixing it. Next update by {NEXT_UPDATE}. {STATUS_URL}"
)
RESOLVED = (
    f"Resolved at {TIMESTAMP}: card payments are failing for some customers no longer. "
    "We apologise for the disruption."
)


def _expect(event: str, **changes: object) -> Expectations:
    fields: dict[str, object] = {
        "event": event,
        "impact": IMPACT,
        "timestamp": TIMESTAMP,
        "next_update": NEXT_UPDATE,
        "status_url": STATUS_URL,
        "jargon": JARGON,
    }
    fields.update(changes)
    return Expectations(**fields)  # type: ignore[arg-type]


def _by_element(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.element: finding for finding in findings}


def _limit(channel: str) -> ChannelLimit:
    limit = limit_for(channel, max_sms_segments=1)
    assert limit is not None
    return limit


def test_good_opened_message_passes_every_element_in_order() -> None:
    findings = check_message(OPENED, _expect("opened"))
    assert [finding.element for finding in findings] == list(ELEMENTS)
    assert all(finding.ok for finding in findings), findings
    assert all(finding.reason for finding in findings)
    assert passed(findings)
    assert _by_element(findings)["length"].reason == "no limit"


def test_impact_is_matched_ignoring_case_and_spacing() -> None:
    text = OPENED.replace("card payments are failing", "CARD  payments\nare failing")
    assert _by_element(check_message(text, _expect("opened")))["impact"].ok


def test_missing_impact_fails() -> None:
    text = OPENED.replace("card payments are failing for some customers", "something broke")
    impact = _by_element(check_message(text, _expect("opened")))["impact"]
    assert not impact.ok
    assert IMPACT in impact.reason


def test_missing_apology_on_opened_fails_naming_the_element() -> None:
    text = OPENED.replace("We are sorry for the trouble this causes. ", "")
    findings = check_message(text, _expect("opened"))
    apology = _by_element(findings)["apology"]
    assert not apology.ok
    assert apology.reason.startswith("no apology: an opened message must apologise")
    assert not passed(findings)
    assert [f.element for f in findings if not f.ok] == ["apology"]


def test_update_without_apology_passes() -> None:
    findings = check_message(UPDATED, _expect("updated"))
    assert passed(findings), findings
    assert _by_element(findings)["apology"].reason == "not required"


@pytest.mark.parametrize("event", ["resolved", "postmortem_published"])
def test_closing_messages_need_no_next_update_or_link(event: str) -> None:
    findings = _by_element(check_message(RESOLVED, _expect(event)))
    assert findings["next update"].ok
    assert findings["where to follow"].ok
    assert findings["next update"].reason == f"not required for {event}"


def test_resolved_without_apology_fails() -> None:
    text = RESOLVED.replace(" We apologise for the disruption.", "")
    apology = _by_element(check_message(text, _expect("resolved")))["apology"]
    assert not apology.ok
    assert "a resolved message must apologise" in apology.reason


def test_missing_next_update_and_link_fail_while_open() -> None:
    text = f"Since {TIMESTAMP}, card payments are failing for some customers. Sorry."
    findings = _by_element(check_message(text, _expect("update_due")))
    assert not findings["next update"].ok
    assert NEXT_UPDATE in findings["next update"].reason
    assert not findings["where to follow"].ok
    assert STATUS_URL in findings["where to follow"].reason


def test_no_cadence_accepts_a_promise_to_update_when_resolved() -> None:
    text = UPDATED.replace(
        f"Next update by {NEXT_UPDATE}.", "We will post an update when it is resolved."
    )
    finding = _by_element(check_message(text, _expect("updated", next_update=None)))["next update"]
    assert finding.ok
    assert "We will post an update when it is resolved." in finding.reason


def test_no_cadence_without_the_promise_fails() -> None:
    text = UPDATED.replace(f"Next update by {NEXT_UPDATE}.", "It will be resolved soon. Updates!")
    finding = _by_element(check_message(text, _expect("updated", next_update=None)))["next update"]
    assert not finding.ok
    assert "promise an update when it is resolved" in finding.reason


def test_missing_timestamp_fails() -> None:
    text = OPENED.replace(f"Since {TIMESTAMP}, card", "Card")
    finding = _by_element(check_message(text, _expect("opened")))["timestamp"]
    assert not finding.ok
    assert TIMESTAMP in finding.reason


@pytest.mark.parametrize(
    ("leak", "reported"),
    [
        ('instance="db-1.prod.internal:9100"', 'instance="db-1.prod.internal:9100"'),
        ("http_requests_total", "http_requests_total"),
        ("node_exporter_build_info", "node_exporter_build_info"),
        ("alertname", "alertname"),
        ("10.0.3.7", "10.0.3.7"),
        ('{job=~"api|web"}', '{job=~"api|web"}'),
        ("severity=critical", "severity=critical"),
        ("localhost:8080", "localhost:8080"),
        ("payments.default.svc.cluster.local", "payments.default.svc.cluster.local"),
        ("db-1.corp", "db-1.corp"),
        ("HighErrorRate", "HighErrorRate"),
    ],
)
def test_jargon_is_flagged(leak: str, reported: str) -> None:
    finding = _by_element(check_message(f"{OPENED} Details: {leak}.", _expect("opened")))["jargon"]
    assert not finding.ok
    assert reported in finding.reason


def test_jargon_reason_lists_everything_found_once() -> None:
    text = f'{OPENED} instance="10.0.3.7:9100" http_requests_total alertname'
    reason = _by_element(check_message(text, _expect("opened")))["jargon"].reason
    assert reason == (
        'found jargon: label dump instance="10.0.3.7:9100"; '
        "metric name http_requests_total; term alertname"
    )


@pytest.mark.parametrize(
    "clean",
    [
        f"{STATUS_URL}/updates?since=14_30_total&job=api",
        "https://status.example.com/incidents/42#job=api",
        "e.g. at 14:30 or 09:05 and version 2.5",
        "status_page",
        "the Job was done",
    ],
)
def test_ordinary_text_and_status_links_are_not_flagged(clean: str) -> None:
    finding = _by_element(check_message(f"{OPENED} {clean}", _expect("opened")))["jargon"]
    assert finding.ok, finding.reason
    assert finding.reason == "none found"


def test_other_links_are_still_checked_for_jargon() -> None:
    text = f"{OPENED} https://grafana.example.com/d/x?var-instance=db-1.prod.internal:9100"
    finding = _by_element(check_message(text, _expect("opened")))["jargon"]
    assert not finding.ok
    assert "db-1.prod.internal:9100" in finding.reason


def test_length_within_limit_reports_the_figures() -> None:
    finding = _by_element(check_message(OPENED, _expect("opened"), _limit("mastodon")))["length"]
    assert finding.ok
    assert finding.reason == f"{len(OPENED) - len(STATUS_URL) + 23} of 500 characters"


def test_too_long_bluesky_text_fails_length_with_the_figures() -> None:
    text = OPENED + " We are still looking into it." * 10
    finding = _by_element(check_message(text, _expect("opened"), _limit("bluesky")))["length"]
    assert not finding.ok
    assert finding.reason == f"too long for bluesky: {len(text)} of 300 graphemes"


def test_shortened_message_missing_impact_blames_the_shortening() -> None:
    text = f"We are sorry, card payments… Next update by {NEXT_UPDATE}. {STATUS_URL} {TIMESTAMP}"
    findings = _by_element(check_message(text, _expect("opened"), shortened=True))
    assert not findings["impact"].ok
    assert "shortening the message to fit the channel cut" in findings["impact"].reason
    assert IMPACT in findings["impact"].reason
    unshortened = _by_element(check_message(text, _expect("opened")))["impact"]
    assert "shortening" not in unshortened.reason


def test_shortened_message_with_impact_passes_impact() -> None:
    assert _by_element(check_message(OPENED, _expect("opened"), shortened=True))["impact"].ok


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"event": "closed"}, "unknown event"),
        ({"impact": " "}, "impact"),
        ({"status_url": ""}, "status_url"),
    ],
)
def test_expectations_refuse_vacuous_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _expect(str(changes.pop("event", "opened")), **changes)
