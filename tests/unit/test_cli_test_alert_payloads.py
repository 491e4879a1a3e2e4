"""What ``clarion send-test-alert`` sends: each source's sample as a test alert with a key,
parsed back by the source's own adapter, and signed as ingest checks it.

Signatures are checked against :mod:`tests.support.ingest_requests`, which signs from
each scheme's published rules, not with the code the command uses.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
from pydantic import BaseModel

from services.ingest.credentials import credentials_for
from services.ingest.sources import alertmanager, datadog, generic, grafana, pagerduty
from services.test_alert_commands import (
    KEY_PATTERN,
    SAMPLE_ROUTING_KEY,
    TITLE_PREFIX,
    KeyStore,
    Source,
    auth_headers,
    build_body,
    load_sample,
    new_key,
    routing_key_for,
)
from shared.contracts import Alert, AlertStatus
from shared.settings import Settings
from tests.support.ingest_requests import grafana_headers, standard_webhook_headers, whsec

NOW: Final = datetime(2026, 12, 4, 10, 30, 15, tzinfo=UTC)
KEY: Final = "clarion-test-0a1b2c3d4e5f"
OTHER_KEY: Final = "clarion-test-ffeeddccbbaa"
ROUTING_KEY: Final = "R0utingKey0123456789abcdefABCDEF"


def _adapter(model: type[BaseModel], parse: Callable[[Any], list[Alert]]) -> Callable[..., Any]:
    return lambda data: parse(model.model_validate(data))


PARSERS: Final[dict[Source, Callable[[dict[str, Any]], list[Alert]]]] = {
    Source.ALERTMANAGER: _adapter(alertmanager.AlertmanagerWebhook, alertmanager.parse),
    Source.GRAFANA: _adapter(grafana.GrafanaWebhook, grafana.parse),
    Source.DATADOG: _adapter(datadog.DatadogWebhook, datadog.parse),
    Source.GENERIC: _adapter(generic.GenericWebhook, generic.parse),
    Source.PAGERDUTY: _adapter(pagerduty.PagerDutyEvent, pagerduty.parse),
}


def alerts(source: Source, key: str = KEY, *, resolve: bool = False) -> list[Alert]:
    body = build_body(
        source, load_sample(source), key, NOW, resolve=resolve, routing_key=ROUTING_KEY
    )
    return PARSERS[source](json.loads(body))


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in list(os.environ):
        if variable.startswith("CLARION_"):
            monkeypatch.delenv(variable)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize("source", list(Source))
def test_a_firing_test_alert_is_the_sample_firing_now_under_the_key(source: Source) -> None:
    firing = alerts(source)

    assert firing
    for alert in firing:
        assert alert.status is AlertStatus.FIRING
        assert alert.summary.startswith(TITLE_PREFIX)
        assert alert.starts_at == NOW
        assert alert.ends_at is None
    assert len({alert.group_key for alert in firing}) == 1
    assert len({alert.fingerprint for alert in firing}) == len(firing)


@pytest.mark.parametrize("source", list(Source))
def test_the_resolved_test_alert_recovers_the_same_alerts_now(source: Source) -> None:
    firing, resolved = alerts(source), alerts(source, resolve=True)

    assert [(a.group_key, a.fingerprint) for a in resolved] == [
        (a.group_key, a.fingerprint) for a in firing
    ]
    for alert in resolved:
        assert alert.status is AlertStatus.RESOLVED
        assert alert.ends_at == NOW


@pytest.mark.parametrize("source", list(Source))
def test_another_key_is_another_group_so_another_incident(source: Source) -> None:
    ours, theirs = alerts(source), alerts(source, OTHER_KEY)

    assert {a.group_key for a in ours}.isdisjoint(a.group_key for a in theirs)
    assert {a.fingerprint for a in ours}.isdisjoint(a.fingerprint for a in theirs)


@pytest.mark.parametrize("source", [s for s in Source if s is not Source.PAGERDUTY])
def test_every_labelled_test_alert_carries_its_key(source: Source) -> None:
    assert {alert.labels["clarion_test_key"] for alert in alerts(source)} == {KEY}


def test_pagerduty_sends_the_key_as_dedup_key_with_the_routing_key() -> None:
    body = json.loads(
        build_body(Source.PAGERDUTY, load_sample(Source.PAGERDUTY), KEY, NOW, resolve=True)
    )

    assert body["dedup_key"] == KEY
    assert body["event_action"] == "resolve"
    assert body["routing_key"] == SAMPLE_ROUTING_KEY
    assert alerts(Source.PAGERDUTY)[0].fingerprint == KEY


def test_the_shipped_samples_are_left_as_they_are() -> None:
    for source in Source:
        sample = load_sample(source)
        before = json.dumps(sample, sort_keys=True)
        build_body(source, sample, KEY, NOW)
        build_body(source, sample, KEY, NOW, resolve=True)
        assert json.dumps(sample, sort_keys=True) == before


def test_new_keys_are_valid_and_new() -> None:
    keys = {new_key() for _ in range(50)}

    assert len(keys) == 50
    assert all(KEY_PATTERN.fullmatch(key) for key in keys)


# --- Credentials: what the running ingest asks for ----------------------------------


def test_the_ingest_token_goes_as_a_bearer_token_and_routing_key() -> None:
    creds = credentials_for(settings(ingest_token="tok-1", datadog_token="dd-1"), "datadog")

    assert auth_headers(creds, b"{}", NOW) == {"Authorization": "Bearer tok-1"}
    pd = credentials_for(settings(ingest_token="tok-1"), "pagerduty")
    assert routing_key_for(pd) == "tok-1"


def test_a_sources_own_basic_auth() -> None:
    creds = credentials_for(settings(alertmanager_basic_auth="am:pw 1"), "alertmanager")

    expected = base64.b64encode(b"am:pw 1").decode()
    assert auth_headers(creds, b"{}", NOW) == {"Authorization": f"Basic {expected}"}


def test_grafana_is_signed_as_grafana_signs() -> None:
    creds = credentials_for(settings(grafana_hmac_secret="hmac-1"), "grafana")
    body = build_body(Source.GRAFANA, load_sample(Source.GRAFANA), KEY, NOW)

    headers = auth_headers(creds, body, NOW)

    expected = grafana_headers("hmac-1", body, int(NOW.timestamp()))
    assert {name.lower(): value for name, value in headers.items()} == {
        name.lower(): value for name, value in expected.items() if name != "Content-Type"
    }


def test_generic_is_signed_as_standard_webhooks_sign() -> None:
    secret = whsec(b"generic-webhook-key-0123456789abcdef")
    creds = credentials_for(settings(generic_webhook_secret=secret), "generic")
    body = build_body(Source.GENERIC, load_sample(Source.GENERIC), KEY, NOW)

    headers = auth_headers(creds, body, NOW)

    expected = standard_webhook_headers(
        secret, body, int(NOW.timestamp()), msg_id=headers["webhook-id"]
    )
    assert headers["webhook-signature"] == expected["webhook-signature"]
    assert headers["webhook-timestamp"] == expected["webhook-timestamp"]


def test_pagerduty_prefers_its_own_routing_keys() -> None:
    creds = credentials_for(
        settings(pagerduty_routing_keys=f"{ROUTING_KEY},other", ingest_token="tok-1"),
        "pagerduty",
    )

    assert routing_key_for(creds) == ROUTING_KEY


def test_with_no_credentials_anywhere_nothing_is_sent() -> None:
    creds = credentials_for(settings(), "grafana")

    assert creds.loopback_only
    assert auth_headers(creds, b"{}", NOW) == {}
    assert routing_key_for(credentials_for(settings(), "pagerduty")) == SAMPLE_ROUTING_KEY


# --- Keys remembered for --resolve --------------------------------------------------


def test_the_last_key_is_remembered_per_source(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "data")

    assert store.last(Source.GRAFANA) is None
    store.remember(Source.GRAFANA, KEY)
    store.remember(Source.DATADOG, OTHER_KEY)
    store.remember(Source.GRAFANA, OTHER_KEY)

    assert store.last(Source.GRAFANA) == OTHER_KEY
    assert store.last(Source.DATADOG) == OTHER_KEY
    assert store.last(Source.GENERIC) is None
    assert KeyStore(tmp_path / "data").last(Source.GRAFANA) == OTHER_KEY


def test_a_damaged_or_unwritable_key_file_costs_only_the_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = KeyStore(tmp_path)
    damaged.path.write_text("{not json", encoding="utf-8")
    blocked = KeyStore(tmp_path / "test-alerts.json" / "below-a-file")

    blocked.remember(Source.GENERIC, KEY)

    assert damaged.last(Source.GENERIC) is None
    assert blocked.last(Source.GENERIC) is None
    assert "Could not keep the test key" in capsys.readouterr().err
