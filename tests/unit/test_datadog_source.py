from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.severity import configured
from services.ingest.sources.datadog import (
    SEVERITIES,
    DatadogWebhook,
    fingerprint_of,
    group_key_of,
    labels_of,
    parse,
    severity_of,
    status_of,
)
from shared.contracts import AlertStatus, Severity
from tests.conftest import load_fixture
from tests.support.strategies import json_values

TEMPLATE = "datadog_webhook_default_payload_template.json"
TRIGGERED_AT = datetime(2026, 11, 23, 14, 30, 24, tzinfo=UTC)
RECOVERED_AT = datetime(2026, 11, 23, 14, 42, 9, tzinfo=UTC)

# The fields Clarion's setup adds to Datadog's default payload, one per variable.
EXTRA_FIELDS = {
    "alert_id": "$ALERT_ID",
    "alert_title": "$ALERT_TITLE",
    "alert_transition": "$ALERT_TRANSITION",
    "alert_type": "$ALERT_TYPE",
    "alert_priority": "$ALERT_PRIORITY",
    "alert_status": "$ALERT_STATUS",
    "alert_scope": "$ALERT_SCOPE",
    "alert_metric": "$ALERT_METRIC",
    "alert_query": "$ALERT_QUERY",
    "alert_cycle_key": "$ALERT_CYCLE_KEY",
    "aggreg_key": "$AGGREG_KEY",
    "tags": "$TAGS",
    "hostname": "$HOSTNAME",
    "link": "$LINK",
    "snapshot": "$SNAPSHOT",
}

# What Datadog fills in for a CPU monitor on host web-1 (values as Datadog sends them: text).
TRIGGERED = {
    "$ID": "7412345678901234567",
    "$EVENT_TITLE": "[P2] [Triggered on {host:web-1}] High CPU on web",
    "$EVENT_MSG": "%%%\nCPU is above 90% on web-1.\n\n@webhook-clarion\n%%%",
    "$EVENT_TYPE": "query_alert_monitor",
    "$DATE": "1795444224000",
    "$LAST_UPDATED": "1795444224000",
    "$ORG_ID": "321987",
    "$ORG_NAME": "Acme",
    "$ALERT_ID": "98765",
    "$ALERT_TITLE": "[Triggered on {host:web-1}] High CPU on web",
    "$ALERT_TRANSITION": "Triggered",
    "$ALERT_TYPE": "error",
    "$ALERT_PRIORITY": "P2",
    "$ALERT_STATUS": "system.cpu.user over host:web-1 was > 90.0 on average during the last 5m.",
    "$ALERT_SCOPE": "host:web-1",
    "$ALERT_METRIC": "system.cpu.user",
    "$ALERT_QUERY": "avg(last_5m):avg:system.cpu.user{service:web} by {host} > 90",
    "$ALERT_CYCLE_KEY": "5f7c0c3c2a1b",
    "$AGGREG_KEY": "9bd4ac313a4d1e8fae2482df7b77628",
    "$TAGS": "env:prod,host:web-1,monitor,service:web,team:platform",
    "$HOSTNAME": "web-1",
    "$LINK": "https://app.datadoghq.com/event/event?id=7412345678901234567",
    "$SNAPSHOT": "https://p.datadoghq.com/snapshot/view/dd-snapshots-prod/org_321987/cpu.png",
}
RECOVERED = {
    **TRIGGERED,
    "$ID": "7412345678901299999",
    "$EVENT_TITLE": "[P2] [Recovered on {host:web-1}] High CPU on web",
    "$DATE": "1795444929000",
    "$LAST_UPDATED": "1795444929000",
    "$ALERT_TITLE": "[Recovered on {host:web-1}] High CPU on web",
    "$ALERT_TRANSITION": "Recovered",
    "$ALERT_TYPE": "success",
}


def substitute(template: Any, values: dict[str, str]) -> Any:
    """The template with each ``"$VARIABLE"`` string replaced, as Datadog does."""
    if isinstance(template, dict):
        return {key: substitute(item, values) for key, item in template.items()}
    if isinstance(template, str):
        return values.get(template, template)
    return template


def full_template() -> dict[str, Any]:
    return {**load_fixture(TEMPLATE), **EXTRA_FIELDS}


def body(values: dict[str, str] = TRIGGERED, /, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = substitute(full_template(), values)
    data.update(fields)
    return data


def model(data: Any) -> DatadogWebhook:
    return DatadogWebhook.model_validate(data)


def test_default_payload_gives_one_alert() -> None:
    data = substitute(load_fixture(TEMPLATE), TRIGGERED)

    (alert,) = parse(model(data))

    assert alert.source == "datadog"
    assert alert.status is AlertStatus.FIRING  # from the "[Triggered ...]" title
    assert alert.severity is Severity.ERROR  # from the "[P2]" title block
    assert alert.summary == "High CPU on web"
    assert alert.description == "CPU is above 90% on web-1."
    assert alert.starts_at == TRIGGERED_AT
    assert alert.ends_at is None
    assert alert.labels == {}
    assert alert.service is None
    assert alert.annotations == {
        "event_type": "query_alert_monitor",
        "event_id": "7412345678901234567",
        "org_name": "Acme",
    }
    title_key = hashlib.sha256(b"321987\x00title:High CPU on web").hexdigest()
    assert alert.group_key == f"datadog:{title_key}"


def test_default_payload_recovery_resolves_the_same_alert() -> None:
    triggered = parse(model(substitute(load_fixture(TEMPLATE), TRIGGERED)))[0]

    (recovered,) = parse(model(substitute(load_fixture(TEMPLATE), RECOVERED)))

    assert recovered.status is AlertStatus.RESOLVED
    assert recovered.ends_at == RECOVERED_AT
    assert recovered.starts_at is None
    assert (recovered.group_key, recovered.fingerprint) == (
        triggered.group_key,
        triggered.fingerprint,
    )


def test_full_payload_gives_labels_severity_links_and_details() -> None:
    (alert,) = parse(model(body()))

    assert alert.status is AlertStatus.FIRING
    assert alert.severity is Severity.ERROR
    assert alert.summary == "High CPU on web"
    assert alert.service == "web"
    assert alert.labels == {
        "env": "prod",
        "host": "web-1",
        "monitor": "",
        "service": "web",
        "team": "platform",
    }
    assert alert.generator_url == TRIGGERED["$LINK"]
    assert alert.annotations["snapshot_url"] == TRIGGERED["$SNAPSHOT"]
    assert alert.annotations["monitor_id"] == "98765"
    assert alert.annotations["alert_transition"] == "Triggered"
    assert alert.annotations["alert_metric"] == "system.cpu.user"
    assert alert.annotations["alert_query"] == TRIGGERED["$ALERT_QUERY"]
    assert alert.annotations["alert_status"] == TRIGGERED["$ALERT_STATUS"]
    assert alert.starts_at == TRIGGERED_AT
    aggreg = hashlib.sha256(b"321987\x00aggreg_key:9bd4ac313a4d1e8fae2482df7b77628")
    assert alert.group_key == f"datadog:{aggreg.hexdigest()}"
    assert re.fullmatch(r"[0-9a-f]{16}", alert.fingerprint)


def test_keys_are_stable_across_renotify_and_recovery() -> None:
    renotified = {**TRIGGERED, "$ID": "7412345678901255555", "$ALERT_TRANSITION": "Renotify"}
    alerts = [parse(model(body(values)))[0] for values in (TRIGGERED, renotified, RECOVERED)]

    assert [a.status for a in alerts] == [AlertStatus.FIRING] * 2 + [AlertStatus.RESOLVED]
    assert len({a.group_key for a in alerts}) == 1
    assert len({a.fingerprint for a in alerts}) == 1
    assert alerts[2].ends_at == RECOVERED_AT
    assert [a.starts_at for a in alerts] == [TRIGGERED_AT, None, None]  # a resend's date


def test_another_scope_is_another_alert_of_the_same_group() -> None:
    web2 = {**TRIGGERED, "$ALERT_SCOPE": "host:web-2", "$HOSTNAME": "web-2"}

    one, two = parse(model(body())), parse(model(body(web2)))

    assert one[0].group_key == two[0].group_key
    assert one[0].fingerprint != two[0].fingerprint


def test_scope_order_does_not_change_the_fingerprint() -> None:
    first = model(body(alert_scope="host:web-1, availability-zone:us-east-1a"))
    second = model(body(alert_scope="availability-zone:us-east-1a,host:web-1"))

    assert fingerprint_of(first) == fingerprint_of(second)


def test_default_payload_tells_groups_of_a_multi_alert_monitor_apart_by_title() -> None:
    web2 = {**TRIGGERED, "$EVENT_TITLE": "[P2] [Triggered on {host:web-2}] High CPU on web"}

    one = parse(model(substitute(load_fixture(TEMPLATE), TRIGGERED)))[0]
    two = parse(model(substitute(load_fixture(TEMPLATE), web2)))[0]

    assert one.group_key == two.group_key
    assert one.fingerprint != two.fingerprint


def test_description_drops_markers_and_mentions() -> None:
    message = (
        "%%%\n@webhook-clarion\nDisk is full @slack-ops, mail ops@example.org\n\n\n\n"
        "See the runbook @jane@example.org.\n%%%"
    )

    (alert,) = parse(model(body(body=message)))

    assert alert.description == "Disk is full, mail ops@example.org\n\nSee the runbook."


def test_monitor_id_groups_when_there_is_no_aggregation_key() -> None:
    data = body()
    del data["aggreg_key"]

    expected = hashlib.sha256(b"321987\x00alert_id:98765").hexdigest()
    assert group_key_of(model(data)) == f"datadog:{expected}"


def test_the_unsubstituted_template_is_rejected_naming_title() -> None:
    with pytest.raises(ValidationError) as info:
        model(load_fixture(TEMPLATE))

    assert [e["loc"] for e in info.value.errors()] == [("title",)]


def test_unsubstituted_variables_count_as_absent() -> None:
    values = {k: v for k, v in TRIGGERED.items() if k not in ("$ALERT_PRIORITY", "$TAGS")}
    data = substitute(full_template(), values)
    data["org"]["id"] = "$ORG_ID"
    data["tags"] = "$TAGS[team]"

    payload = model(data)

    assert payload.alert_priority is None
    assert payload.tags is None
    assert payload.org is not None
    assert payload.org.id is None
    assert parse(payload)[0].severity is Severity.ERROR  # title "[P2]"


def test_alert_title_stands_in_for_a_missing_title() -> None:
    data = body()
    del data["title"]

    assert parse(model(data))[0].summary == "High CPU on web"


def test_unquoted_numbers_are_read_as_text() -> None:
    payload = model(body(alert_id=98765, date=1795444224000, org={"id": 321987}))

    assert payload.alert_id == "98765"
    assert payload.date == TRIGGERED_AT
    assert payload.org is not None
    assert payload.org.id == "321987"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("date", "yesterday"),
        ("date", "9" * 30),
        ("last_updated", [1]),
        ("org", "Acme"),
        ("tags", {"env": "prod"}),
    ],
)
def test_bad_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        model(body(**{field: value}))

    assert {e["loc"][0] for e in info.value.errors()} == {field}


@pytest.mark.parametrize("data", [{"title": ""}, {"title": None}, {"body": "x"}])
def test_a_body_without_any_title_is_rejected_naming_title(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        model(data)

    assert [e["loc"] for e in info.value.errors()] == [("title",)]


def test_unknown_fields_are_ignored() -> None:
    data = body(custom={"x": [1, 2]}, incident_uuid="abc", security_signal_id="s1")

    assert len(parse(model(data))) == 1


@pytest.mark.parametrize(
    ("transition", "alert_type", "expected"),
    [
        ("Triggered", "error", AlertStatus.FIRING),
        ("Re-Triggered", "error", AlertStatus.FIRING),
        ("Warn", "warning", AlertStatus.FIRING),
        ("Re-Warn", "warning", AlertStatus.FIRING),
        ("No Data", "error", AlertStatus.FIRING),
        ("Re-No Data", "error", AlertStatus.FIRING),
        ("Renotify", "error", AlertStatus.FIRING),
        ("Recovered", "success", AlertStatus.RESOLVED),
        ("recovered", "$ALERT_TYPE", AlertStatus.RESOLVED),
        ("Null", "success", AlertStatus.RESOLVED),
        ("Null", "error", AlertStatus.FIRING),
        ("$ALERT_TRANSITION", "success", AlertStatus.RESOLVED),
    ],
)
def test_transitions_map_to_firing_or_resolved(
    transition: str, alert_type: str, expected: AlertStatus
) -> None:
    payload = model(body(alert_transition=transition, alert_type=alert_type))

    assert status_of(payload) is expected


def test_title_decides_when_nothing_else_does() -> None:
    data = substitute(load_fixture(TEMPLATE), RECOVERED)
    assert status_of(model(data)) is AlertStatus.RESOLVED
    data["title"] = "High CPU on web"
    assert status_of(model(data)) is AlertStatus.FIRING


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"alert_priority": "P1"}, Severity.CRITICAL),
        ({"alert_priority": "P2"}, Severity.ERROR),
        ({"alert_priority": "P3"}, Severity.WARNING),
        ({"alert_priority": "P4"}, Severity.INFO),
        ({"alert_priority": "P5"}, Severity.INFO),
        ({"alert_type": "error"}, Severity.ERROR),
        ({"alert_type": "warning"}, Severity.WARNING),
        ({"alert_type": "info"}, Severity.INFO),
        ({"alert_type": "success"}, Severity.INFO),
        ({"tags": "severity:critical"}, Severity.CRITICAL),
        ({"tags": "priority:high"}, Severity.ERROR),
        ({"alert_priority": "P4", "tags": "severity:critical"}, Severity.INFO),
        ({"tags": "severity:critical", "alert_type": "warning"}, Severity.CRITICAL),
        ({"alert_priority": "urgent", "alert_type": "warning"}, Severity.WARNING),
        ({"title": "[P1] [Triggered] Disk full"}, Severity.CRITICAL),
        ({}, Severity.WARNING),
    ],
)
def test_severity_from_priority_then_tags_then_alert_type(
    fields: dict[str, str], expected: Severity
) -> None:
    payload = model({"title": "Disk full", **fields})

    assert severity_of(payload, labels_of(payload)) is expected
    assert parse(payload)[0].severity is expected


def test_operator_overrides_apply() -> None:
    severities = configured("datadog", SEVERITIES, {"datadog": {"P3": Severity.ERROR}})

    assert parse(model(body(alert_priority="P3")), severities)[0].severity is Severity.ERROR


def test_tags_become_labels() -> None:
    payload = model(
        {
            "title": "x",
            "tags": " team:a, team:b ,team:a, url:https://x.example.org:8443/p,bare,:no-name",
            "alert_scope": "availability-zone:us-east-1a, team:c",
            "hostname": "web-9",
        }
    )

    assert labels_of(payload) == {
        "team": "a,b,c",
        "url": "https://x.example.org:8443/p",
        "bare": "",
        "availability-zone": "us-east-1a",
        "host": "web-9",
    }


@pytest.mark.parametrize("name", ["impact", "customer_impact"])
def test_impact_comes_from_the_operators_own_field(name: str) -> None:
    (alert,) = parse(model(body(**{name: " Pages load slowly. "})))

    assert alert.impact == "Pages load slowly."


def test_summary_falls_back_when_the_title_is_only_brackets() -> None:
    assert parse(model({"title": "[Triggered]"}))[0].summary == "Datadog alert"


@given(json_values)
def test_any_json_body_is_rejected_or_parsed(value: Any) -> None:
    try:
        payload = model(value)
    except ValidationError:
        return
    assert len(parse(payload)) == 1


@given(st.sampled_from(sorted(body())), json_values)
def test_any_field_of_a_real_body_may_hold_any_json(field: str, value: Any) -> None:
    data = body()
    data[field] = value
    try:
        payload = model(data)
    except ValidationError:
        return
    assert len(parse(payload)) == 1
