from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.ingest.severity import configured
from services.ingest.sources.alertmanager import (
    SEVERITIES,
    AlertmanagerWebhook,
    group_key_of,
    parse,
    severity_of,
)
from shared.contracts import AlertStatus, Severity
from tests.conftest import load_fixture


def webhook(name: str = "alertmanager_webhook_v4_firing.json") -> dict[str, Any]:
    return load_fixture(name)


def model(data: dict[str, Any]) -> AlertmanagerWebhook:
    return AlertmanagerWebhook.model_validate(data)


def test_firing_group_becomes_one_alert_per_instance() -> None:
    alerts = parse(model(webhook()))

    assert [a.fingerprint for a in alerts] == ["f5b1d9f3bf0ed0b8", "f08caaa0498986d5"]
    first = alerts[0]
    assert first.source == "alertmanager"
    assert first.status is AlertStatus.FIRING
    assert first.severity is Severity.CRITICAL
    assert first.summary == "High 5xx error rate on checkout-api"
    assert first.description == "5xx ratio is 12.3% over the last 5m on checkout-1:8080"
    assert first.service == "checkout-api"
    assert first.impact is None
    assert first.starts_at == datetime(2026, 11, 23, 14, 30, 24, tzinfo=UTC)
    assert first.ends_at is None  # Go's zero time means "not set"
    assert first.generator_url is not None
    assert first.generator_url.startswith("http://prometheus.example.org:9090/graph")
    assert first.labels["instance"] == "checkout-1:8080"
    assert first.annotations["runbook_url"].endswith("high-error-rate")


def test_resolved_group_carries_end_times() -> None:
    alerts = parse(model(webhook("alertmanager_webhook_v4_resolved.json")))

    assert {a.status for a in alerts} == {AlertStatus.RESOLVED}
    assert {a.ends_at for a in alerts} == {datetime(2026, 11, 23, 14, 32, 39, tzinfo=UTC)}


def test_single_alert_fixture() -> None:
    alerts = parse(model(webhook("alertmanager_webhook_v4_firing_single.json")))

    assert len(alerts) == 1
    assert alerts[0].fingerprint == "f5b1d9f3bf0ed0b8"


def test_group_key_is_stable_across_firing_and_resolved_and_key_safe() -> None:
    fixtures = [
        "alertmanager_webhook_v4_firing.json",
        "alertmanager_webhook_v4_firing_single.json",
        "alertmanager_webhook_v4_resolved.json",
    ]
    keys = {a.group_key for name in fixtures for a in parse(model(webhook(name)))}

    assert len(keys) == 1
    (key,) = keys
    assert re.fullmatch(r"alertmanager:[0-9a-f]{64}", key)


def test_group_key_depends_on_the_receiver() -> None:
    other = webhook()
    other["receiver"] = "another-team"

    assert group_key_of(model(other)) != group_key_of(model(webhook()))


def test_unknown_newer_fields_are_ignored() -> None:
    data = webhook()
    data["notification_reason"] = "repeat_interval"
    data["routeLabels"] = {"team": "payments"}
    data["alerts"][0]["somethingNew"] = {"x": 1}

    assert len(parse(model(data))) == 2


@pytest.mark.parametrize("version", ["3", "5", 4, None])
def test_other_versions_are_rejected_naming_version(version: object) -> None:
    data = webhook()
    data["version"] = version

    with pytest.raises(ValidationError) as info:
        model(data)

    assert [e["loc"] for e in info.value.errors()] == [("version",)]


def test_bad_alert_status_names_the_field() -> None:
    data = webhook()
    data["alerts"][0]["status"] = "bogus"

    with pytest.raises(ValidationError) as info:
        model(data)

    assert [e["loc"] for e in info.value.errors()] == [("alerts", 0, "status")]


def test_empty_alert_list_is_rejected() -> None:
    data = webhook()
    data["alerts"] = []

    with pytest.raises(ValidationError) as info:
        model(data)

    assert info.value.errors()[0]["loc"] == ("alerts",)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("critical", Severity.CRITICAL),
        ("page", Severity.CRITICAL),
        ("CRITICAL", Severity.CRITICAL),
        ("high", Severity.ERROR),
        ("error", Severity.ERROR),
        ("major", Severity.ERROR),
        ("warning", Severity.WARNING),
        ("warn", Severity.WARNING),
        ("minor", Severity.WARNING),
        (" Info ", Severity.INFO),
        ("low", Severity.INFO),
        ("none", Severity.INFO),
        ("something-else", Severity.WARNING),
    ],
)
def test_severity_labels_map_to_clarion_severities(label: str, expected: Severity) -> None:
    assert severity_of({"severity": label}) is expected


def test_missing_severity_label_defaults_to_warning() -> None:
    assert severity_of({}) is Severity.WARNING


def test_priority_label_is_a_fallback_for_severity() -> None:
    assert severity_of({"priority": "p1"}) is Severity.CRITICAL


def test_severity_map_cannot_be_changed_at_runtime() -> None:
    with pytest.raises(TypeError):
        SEVERITIES.words["critical"] = Severity.INFO  # type: ignore[index]


def test_operator_overrides_win_for_their_source_and_for_all_sources() -> None:
    overrides = {"*": {"p3": Severity.ERROR}, "alertmanager": {"Warning": Severity.CRITICAL}}
    severities = configured("alertmanager", SEVERITIES, overrides)
    assert severity_of({"severity": "warning"}, severities) is Severity.CRITICAL
    assert severity_of({"severity": "p3"}, severities) is Severity.ERROR
    assert configured("grafana", SEVERITIES, overrides).of("warning") is Severity.WARNING


def test_summary_falls_back_to_alertname_and_service_to_job() -> None:
    data = webhook("alertmanager_webhook_v4_firing_single.json")
    alert = data["alerts"][0]
    del alert["annotations"]["summary"]
    del alert["labels"]["service"]

    (parsed,) = parse(model(data))

    assert parsed.summary == "HighErrorRate"
    assert parsed.service == "checkout"


@pytest.mark.parametrize("name", ["impact", "customer_impact"])
def test_impact_comes_from_annotations(name: str) -> None:
    data = webhook("alertmanager_webhook_v4_firing_single.json")
    data["alerts"][0]["annotations"][name] = "Checkout fails for some customers."

    (parsed,) = parse(model(data))

    assert parsed.impact == "Checkout fails for some customers."


def test_missing_fingerprint_is_derived_from_labels_deterministically() -> None:
    data = webhook()
    for alert in data["alerts"]:
        del alert["fingerprint"]
    again = copy.deepcopy(data)

    first, second = parse(model(data))
    repeat = parse(model(again))

    assert first.fingerprint != second.fingerprint
    assert [a.fingerprint for a in repeat] == [first.fingerprint, second.fingerprint]
