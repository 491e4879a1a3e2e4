from __future__ import annotations

import copy
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.body import validate
from services.ingest.severity import configured
from services.ingest.sources.grafana import (
    SEVERITIES,
    GrafanaWebhook,
    group_key_of,
    parse,
    severity_of,
)
from shared.contracts import AlertStatus, Severity
from tests.conftest import load_fixture
from tests.support.strategies import json_values

FIRING = "grafana_webhook_v1_firing.json"
CEST = timezone(timedelta(hours=2))
ENDED = "2021-10-12T10:12:03.157076+02:00"


def webhook() -> dict[str, Any]:
    return load_fixture(FIRING)


def resolved_webhook() -> dict[str, Any]:
    """The fixture's group once every alert recovered (the shape Grafana's code sends)."""
    data = webhook()
    data.update(status="resolved", state="ok", title="[RESOLVED]  (blue)")
    for alert in data["alerts"]:
        alert.update(status="resolved", endsAt=ENDED)
    return data


def model(data: dict[str, Any]) -> GrafanaWebhook:
    return GrafanaWebhook.model_validate(data)


def test_firing_fixture_gives_one_alert_per_rule_instance() -> None:
    alerts = parse(model(webhook()))

    assert [a.fingerprint for a in alerts] == ["c6eadffa33fcdf37", "bc97ff14869b13e3"]
    first = alerts[0]
    assert first.source == "grafana"
    assert first.status is AlertStatus.FIRING
    assert first.severity is Severity.WARNING  # no severity label: the default
    assert first.summary == "This alert was triggered for zone us-1"
    assert first.description == "The system has high memory usage"
    assert first.service is None
    assert first.impact is None
    assert first.labels == {"alertname": "High memory usage", "team": "blue", "zone": "us-1"}
    assert first.starts_at == datetime(2021, 10, 12, 9, 51, 3, 157076, tzinfo=CEST)
    assert first.ends_at is None  # Go's zero time means "not set"
    assert first.generator_url == "https://play.grafana.org/alerting/1afz29v7z/edit"
    assert first.annotations == {
        "description": "The system has high memory usage",
        "runbook_url": "https://myrunbook.com/runbook/1234",
        "summary": "This alert was triggered for zone us-1",
        "silence_url": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana"
        "&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1",
        "values": "B=44.23943737541908, C=1",
    }
    assert alerts[1].summary == "This alert was triggered for zone eu-1"
    assert alerts[1].labels["alertname"] == "High CPU usage"


def test_group_key_hashes_org_receiver_and_group_key() -> None:
    digest = hashlib.sha256(b"1\x00My Super Webhook\x00{}:{}").hexdigest()

    assert group_key_of(model(webhook())) == f"grafana:{digest}"
    assert {a.group_key for a in parse(model(webhook()))} == {f"grafana:{digest}"}


def test_resolved_group_keeps_key_and_fingerprints_and_carries_end_times() -> None:
    firing = parse(model(webhook()))
    resolved = parse(model(resolved_webhook()))

    assert {a.status for a in resolved} == {AlertStatus.RESOLVED}
    assert {a.ends_at for a in resolved} == {datetime(2021, 10, 12, 10, 12, 3, 157076, tzinfo=CEST)}
    assert [a.fingerprint for a in resolved] == [a.fingerprint for a in firing]
    assert {a.group_key for a in resolved + firing} == {firing[0].group_key}
    assert re.fullmatch(r"grafana:[0-9a-f]{64}", firing[0].group_key)


@pytest.mark.parametrize(("field", "value"), [("receiver", "other"), ("orgId", 2)])
def test_group_key_depends_on_receiver_and_org(field: str, value: object) -> None:
    other = webhook()
    other[field] = value

    assert group_key_of(model(other)) != group_key_of(model(webhook()))


def test_group_labels_stand_in_for_a_missing_group_key() -> None:
    data = webhook()
    del data["groupKey"]
    data["groupLabels"] = {"team": "blue"}
    again = copy.deepcopy(data)
    again["groupLabels"] = {"team": "red"}

    key = group_key_of(model(data))
    assert key == group_key_of(model(copy.deepcopy(data)))
    assert key != group_key_of(model(again))
    assert key != group_key_of(model(webhook()))


@pytest.mark.parametrize("state", ["alerting", "ok", "no_data", "pending", "something_new", None])
def test_any_group_state_is_accepted(state: object) -> None:
    data = webhook()
    data["state"] = state

    assert model(data).state == state
    assert len(parse(model(data))) == 2


def test_a_key_spelled_as_a_python_field_name_is_an_unknown_key() -> None:
    """Senders write ``valueString``; ``value_string`` is nobody's field on the wire, so
    it is ignored like any unknown key (the published schema allows extra keys)."""
    data = webhook()
    data["alerts"][0].pop("valueString", None)
    data["alerts"][0]["value_string"] = [{"not": "a string"}, 3]

    annotations = parse(validate(GrafanaWebhook, data))[0].annotations

    assert "value_string" not in annotations


def test_grafana_9_value_string_and_links_become_annotations() -> None:
    data = webhook()
    alert = data["alerts"][0]
    alert["values"] = None
    alert["valueString"] = "[ var='B' labels={zone=us-1} value=44.2 ]"
    alert["dashboardURL"] = "https://play.grafana.org/d/abc"
    alert["panelURL"] = "https://play.grafana.org/d/abc?viewPanel=2"
    alert["imageURL"] = "https://images.example.org/panel.png"

    annotations = parse(model(data))[0].annotations

    assert "values" not in annotations
    assert annotations["value_string"] == "[ var='B' labels={zone=us-1} value=44.2 ]"
    assert annotations["dashboard_url"] == "https://play.grafana.org/d/abc"
    assert annotations["panel_url"] == "https://play.grafana.org/d/abc?viewPanel=2"
    assert annotations["image_url"] == "https://images.example.org/panel.png"


def test_a_rule_annotation_wins_over_grafana_extras_of_the_same_name() -> None:
    data = webhook()
    data["alerts"][0]["annotations"]["silence_url"] = "https://runbooks.example.org/silence"

    assert parse(model(data))[0].annotations["silence_url"] == (
        "https://runbooks.example.org/silence"
    )


def test_null_maps_are_empty() -> None:
    data = webhook()
    data["groupLabels"] = data["commonAnnotations"] = None
    data["alerts"][0]["labels"] = data["alerts"][0]["annotations"] = None
    del data["alerts"][0]["fingerprint"]

    first = parse(model(data))[0]

    assert first.labels == {}
    assert first.summary == "Unnamed alert"
    assert re.fullmatch(r"[0-9a-f]{16}", first.fingerprint)


def test_unknown_newer_fields_are_ignored() -> None:
    data = webhook()
    data["appVersion"] = "11.3.0"
    data["alerts"][0]["ruleUID"] = "abc"
    data["alerts"][0]["enrichments"] = {"x": [1, 2]}

    assert len(parse(model(data))) == 2


@pytest.mark.parametrize("version", ["0", "4", 1, None])
def test_other_versions_are_rejected_naming_version(version: object) -> None:
    data = webhook()
    data["version"] = version

    with pytest.raises(ValidationError) as info:
        model(data)

    assert [e["loc"] for e in info.value.errors()] == [("version",)]


@pytest.mark.parametrize(
    ("path", "value", "loc"),
    [
        (("alerts", 0, "status"), "alerting", ("alerts", 0, "status")),
        (("alerts", 1, "startsAt"), "yesterday", ("alerts", 1, "startsAt")),
        (("alerts", 0, "values"), {"B": "high"}, ("alerts", 0, "values", "B")),
        (("truncatedAlerts",), -1, ("truncatedAlerts",)),
        (("alerts",), [], ("alerts",)),
        (("receiver",), None, ("receiver",)),
    ],
)
def test_bad_fields_are_named(
    path: tuple[str | int, ...], value: object, loc: tuple[object]
) -> None:
    data = webhook()
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value

    with pytest.raises(ValidationError) as info:
        model(data)

    assert [e["loc"] for e in info.value.errors()] == [loc]


def test_naive_start_times_are_rejected() -> None:
    data = webhook()
    data["alerts"][0]["startsAt"] = "2021-10-12T09:51:03"

    with pytest.raises(ValidationError) as info:
        model(data)

    assert info.value.errors()[0]["loc"] == ("alerts", 0, "startsAt")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"severity": "critical"}, Severity.CRITICAL),
        ({"severity": "High"}, Severity.ERROR),
        ({"severity": "warning"}, Severity.WARNING),
        ({"severity": " info "}, Severity.INFO),
        ({"priority": "P1"}, Severity.CRITICAL),
        ({"severity": "sev2", "priority": "p4"}, Severity.ERROR),
        ({"severity": "unheard-of"}, Severity.WARNING),
        ({}, Severity.WARNING),
    ],
)
def test_severity_labels_map_to_clarion_severities(
    labels: dict[str, str], expected: Severity
) -> None:
    assert severity_of(labels) is expected


def test_severity_reaches_the_alert_and_overrides_apply() -> None:
    data = webhook()
    data["alerts"][0]["labels"]["severity"] = "page"
    severities = configured("grafana", SEVERITIES, {"grafana": {"page": Severity.ERROR}})

    assert parse(model(data))[0].severity is Severity.CRITICAL
    assert parse(model(data), severities)[0].severity is Severity.ERROR


def test_summary_is_plain_words_and_falls_back_to_alertname() -> None:
    data = webhook()
    data["alerts"][0]["annotations"]["summary"] = "  Memory\n  is   high "
    del data["alerts"][1]["annotations"]["summary"]

    first, second = parse(model(data))

    assert first.summary == "Memory is high"
    assert second.summary == "High CPU usage"


@pytest.mark.parametrize("name", ["impact", "customer_impact"])
def test_impact_and_service_come_from_annotations_and_labels(name: str) -> None:
    data = webhook()
    data["alerts"][0]["annotations"][name] = "Dashboards load slowly."
    data["alerts"][0]["labels"]["service"] = "dashboards"

    first = parse(model(data))[0]

    assert first.impact == "Dashboards load slowly."
    assert first.service == "dashboards"


@given(json_values)
def test_any_json_body_is_rejected_or_parsed(value: Any) -> None:
    try:
        payload = model(value)
    except ValidationError:
        return
    parse(payload)


_ALERT_FIELDS = [*webhook()["alerts"][0], "valueString", "imageURL"]


@given(st.sampled_from([*webhook(), *_ALERT_FIELDS]), json_values)
def test_any_field_of_the_fixture_may_hold_any_json(field: str, value: Any) -> None:
    data = webhook()
    target = data["alerts"][0] if field in _ALERT_FIELDS else data
    target[field] = value
    try:
        payload = model(data)
    except ValidationError:
        return
    assert len(parse(payload)) == 2


def test_zero_start_time_means_unknown() -> None:
    data = webhook()
    data["alerts"][0]["startsAt"] = "0001-01-01T00:00:00Z"

    assert parse(model(data))[0].starts_at is None
    assert datetime(2021, 10, 12, 7, 56, 3, 157076, tzinfo=UTC) == parse(model(data))[1].starts_at
