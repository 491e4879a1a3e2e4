from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.severity import configured
from services.ingest.sources.pagerduty import (
    RESOLVED_SUMMARY,
    SEVERITIES,
    PagerDutyEvent,
    accepted_body,
    dedup_key_of,
    error_messages,
    group_key_of,
    invalid_event_body,
    is_acknowledge,
    parse,
    routing_key_errors,
    unrecognized_body,
)
from shared.contracts import AlertStatus, Severity
from tests.conftest import load_fixture
from tests.support.strategies import json_values, mutated

TRIGGER = "pagerduty_events_v2_trigger_devdocs.json"
RESOLVE = "pagerduty_events_v2_resolve.json"
ACKNOWLEDGE = "pagerduty_events_v2_acknowledge.json"


def event(name: str = TRIGGER, **changes: Any) -> dict[str, Any]:
    data = load_fixture(name)
    data.update(changes)
    return data


def model(data: dict[str, Any]) -> PagerDutyEvent:
    return PagerDutyEvent.model_validate(data)


def test_trigger_becomes_one_firing_alert() -> None:
    (alert,) = parse(model(event()))

    assert alert.source == "pagerduty"
    assert alert.status is AlertStatus.FIRING
    assert alert.severity is Severity.INFO
    assert alert.summary == "Example alert on host1.example.com"
    assert alert.fingerprint == "samplekeyhere"
    assert re.fullmatch(r"pagerduty:[0-9a-f]{64}", alert.group_key)
    assert alert.service == "postgres"
    assert alert.starts_at == datetime(2015, 7, 17, 8, 42, 58, 315000, tzinfo=UTC)
    assert alert.ends_at is None
    assert alert.generator_url == "https://monitoring.example.com"
    assert alert.labels == {
        "source": event()["payload"]["source"],
        "component": "postgres",
        "group": "prod-datapipe",
        "class": "deploy",
        "client": "Sample Monitoring Service",
    }
    assert alert.annotations == {"ping time": "1500ms", "load avg": "0.75"}


def test_the_routing_key_never_reaches_the_alert() -> None:
    (alert,) = parse(model(event(routing_key="R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12")))

    assert "R0UT1NGKEY" not in alert.model_dump_json()


def test_resolve_recovers_the_alert_the_trigger_opened() -> None:
    trigger = event(routing_key="routingkeyhere", dedup_key="dedupkeyhere")
    (opened,) = parse(model(trigger))
    (resolved,) = parse(model(event(RESOLVE)))

    assert resolved.status is AlertStatus.RESOLVED
    assert resolved.summary == RESOLVED_SUMMARY
    assert (resolved.group_key, resolved.fingerprint) == (opened.group_key, opened.fingerprint)


def test_resolve_with_a_payload_keeps_its_summary() -> None:
    data = event(RESOLVE, payload=event()["payload"])

    (resolved,) = parse(model(data))

    assert resolved.summary == "Example alert on host1.example.com"
    assert resolved.ends_at == datetime(2015, 7, 17, 8, 42, 58, 315000, tzinfo=UTC)
    assert resolved.starts_at is None


def test_acknowledge_carries_no_alert_but_names_the_incident() -> None:
    acknowledged = model(event(ACKNOWLEDGE))
    trigger = model(event(routing_key="routingkeyhere", dedup_key="dedupkeyhere"))

    assert is_acknowledge(acknowledged)
    assert not is_acknowledge(trigger)
    assert parse(acknowledged) == []
    assert group_key_of(acknowledged) == group_key_of(trigger)


def test_the_group_depends_on_the_routing_key() -> None:
    first = model(event(routing_key="team-a"))
    second = model(event(routing_key="team-b"))

    assert group_key_of(first) != group_key_of(second)


def test_a_trigger_without_dedup_key_gets_a_stable_derived_one() -> None:
    data = event()
    del data["dedup_key"]

    key = dedup_key_of(model(data))
    (alert,) = parse(model(data))

    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert dedup_key_of(model(dict(data))) == key  # a resend lands on the same alert
    assert alert.fingerprint == key
    changed = {**data, "payload": {**data["payload"], "summary": "Another problem"}}
    assert dedup_key_of(model(changed)) != key


def test_a_given_dedup_key_is_returned_unchanged() -> None:
    assert dedup_key_of(model(event(dedup_key="srv01/HTTP"))) == "srv01/HTTP"


def test_a_long_dedup_key_is_hashed_into_the_fingerprint() -> None:
    (alert,) = parse(model(event(dedup_key="k" * 255)))

    assert re.fullmatch(r"[0-9a-f]{32}", alert.fingerprint)


def test_responses_match_pagerduty() -> None:
    assert accepted_body("srv01/HTTP") == load_fixture("pagerduty_events_v2_response_202.json")
    assert unrecognized_body() == load_fixture("pagerduty_events_v2_response_error.json")
    assert invalid_event_body(
        ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    ) == load_fixture("pagerduty_events_v2_response_400.json")


def trigger_with(**payload_changes: Any) -> dict[str, Any]:
    data = event()
    data["payload"] = {**data["payload"], **payload_changes}
    return data


def without(data: dict[str, Any], *path: str) -> dict[str, Any]:
    target = data
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (without(event(), "payload", "summary"), "'payload.summary' is missing or blank"),
        (trigger_with(summary="   "), "'payload.summary' is missing or blank"),
        (trigger_with(summary=None), "'payload.summary' is missing or blank"),
        (trigger_with(source=""), "'payload.source' is missing or blank"),
        (
            trigger_with(summary="x" * 1025),
            "Length of 'payload.summary' is incorrect (should be at most 1024 characters)",
        ),
        (
            event(dedup_key="k" * 256),
            "Length of 'dedup_key' is incorrect (should be at most 255 characters)",
        ),
        (
            trigger_with(severity="fatal"),
            "'payload.severity' is invalid (must be one of critical, error, warning, info)",
        ),
        (
            event(event_action="explode"),
            "'event_action' is invalid (must be one of trigger, acknowledge, resolve)",
        ),
        (without(event(), "payload"), "'payload' is missing or blank"),
        (without(event(RESOLVE), "dedup_key"), "'dedup_key' is missing or blank"),
        (event(ACKNOWLEDGE, dedup_key=" "), "'dedup_key' is missing or blank"),
        (without(event(), "routing_key"), "'routing_key' is missing or blank"),
        (event(images=[{"alt": "no source"}]), "'image src' is missing or blank"),
        (event(links=[{"text": "no target"}]), "'link href' is missing or blank"),
    ],
)
def test_validation_errors_are_worded_as_pagerduty_words_them(
    data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model(data)

    assert error_messages(info.value) == [expected]


def test_a_body_that_is_not_an_object_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        PagerDutyEvent.model_validate(["not", "an", "event"])

    assert error_messages(info.value) == ["Event object must be a JSON object"]


def test_every_bad_field_is_reported() -> None:
    data = trigger_with(summary="", severity="loud")

    with pytest.raises(ValidationError) as info:
        model(data)

    assert len(error_messages(info.value)) == 2


def test_routing_keys_are_checked_against_the_configured_ones() -> None:
    configured_keys = ("samplekeyhere", "e93facc04764012d7bfb002500d5d1a6")

    assert routing_key_errors("samplekeyhere", configured_keys) == []
    assert routing_key_errors("anything", ()) == []  # none configured: open, as with tokens
    assert routing_key_errors("abc", configured_keys) == [
        "Length of 'routing_key' is incorrect (should be 32 characters)"
    ]
    assert routing_key_errors("0" * 32, configured_keys) == ["Invalid routing key"]
    assert routing_key_errors("e+23rschqsESqk9Q6_-g", configured_keys) == [
        "Length of 'routing_key' is incorrect (should be 32 characters)",
        "'routing_key' cannot contain non-alphanumeric characters.",
    ]


def test_service_prefers_custom_details_then_component_then_source() -> None:
    explicit = trigger_with(custom_details={"service": "checkout-api"})
    no_component = without(event(), "payload", "component")

    assert parse(model(explicit))[0].service == "checkout-api"
    assert parse(model(event()))[0].service == "postgres"
    assert parse(model(no_component))[0].service == event()["payload"]["source"]


def test_impact_and_description_come_from_custom_details_text() -> None:
    details = {"impact": " Checkout fails for some customers. ", "description": "5xx at 12%"}
    (alert,) = parse(model(trigger_with(custom_details=details)))
    (numeric,) = parse(model(trigger_with(custom_details={"impact": 3})))

    assert alert.impact == "Checkout fails for some customers."
    assert alert.description == "5xx at 12%"
    assert numeric.impact is None


def test_custom_details_that_are_not_an_object_are_accepted() -> None:
    (alert,) = parse(model(trigger_with(custom_details="free text from an old sender")))

    assert alert.annotations == {}


def test_an_unreadable_timestamp_is_left_out() -> None:
    (alert,) = parse(model(trigger_with(timestamp="yesterday-ish")))

    assert alert.starts_at is None


def test_unknown_newer_fields_are_ignored() -> None:
    data = event(somethingNew={"x": 1})
    data["payload"]["alsoNew"] = True

    assert len(parse(model(data))) == 1


def test_operators_can_remap_pagerduty_severities() -> None:
    severities = configured("pagerduty", SEVERITIES, {"pagerduty": {"error": Severity.CRITICAL}})

    (alert,) = parse(model(trigger_with(severity="error")), severities)

    assert alert.severity is Severity.CRITICAL


# Arbitrary JSON: rejected with a ValidationError, or parsed without any other exception.

_payloads = mutated(
    st.fixed_dictionaries(
        {
            "summary": st.text(max_size=1100).filter(str.strip),
            "source": st.text(max_size=10).filter(str.strip),
            "severity": st.sampled_from(["critical", "error", "warning", "info"]),
        },
        optional={
            "timestamp": st.text(max_size=30)
            | st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
            "component": st.text(max_size=10),
            "class": st.text(max_size=10),
            "custom_details": json_values,
        },
    ),
    ("summary", "source", "severity", "timestamp", "component", "custom_details"),
)
_events = mutated(
    st.fixed_dictionaries(
        {
            "routing_key": st.text(max_size=40).filter(str.strip),
            "event_action": st.sampled_from(["trigger", "acknowledge", "resolve"]),
            "payload": _payloads,
        },
        optional={
            "dedup_key": st.text(max_size=300).filter(str.strip),
            "images": st.lists(st.fixed_dictionaries({"src": st.text(max_size=10)})),
            "links": st.lists(st.fixed_dictionaries({"href": st.text(max_size=10)})),
            "client": st.text(max_size=10),
            "client_url": st.text(max_size=20),
        },
    ),
    ("routing_key", "event_action", "dedup_key", "payload", "images", "links", "client_url"),
)


@given(st.one_of(json_values, _events))
def test_any_json_is_rejected_cleanly_or_parsed(data: Any) -> None:
    try:
        payload = PagerDutyEvent.model_validate(data)
    except ValidationError as exc:
        messages = error_messages(exc)
        assert messages
        assert all(isinstance(message, str) and message for message in messages)
        return
    alerts = parse(payload)
    assert len(alerts) == (0 if is_acknowledge(payload) else 1)
    assert dedup_key_of(payload)
