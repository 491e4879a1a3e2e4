"""What ``clarion send-test-alert`` sends: each source's sample as a test alert with a key
and a severity, parsed back by the source's own adapter, signed as ingest checks it, and
who the plan says will hear of it.

Signatures are checked against :mod:`tests.support.ingest_requests`, which signs from
each scheme's published rules, not with the code the command uses.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
from pydantic import BaseModel

from services.ingest.credentials import credentials_for
from services.ingest.severity import SeverityMap, configured
from services.ingest.sources import alertmanager, datadog, generic, grafana, pagerduty
from services.test_alert_commands import (
    KEY_PATTERN,
    KeyStore,
    auth_headers,
    new_key,
    routing_key_for,
)
from services.test_alert_payloads import (
    SAMPLE_ROUTING_KEY,
    TITLE_PREFIX,
    Heard,
    Source,
    build_body,
    load_sample,
    reach,
    reach_line,
    severities_for,
)
from shared.contracts import Alert, AlertStatus, Severity
from shared.plan import ChannelName, Plan, load_plan
from shared.settings import Settings
from tests.support.ingest_requests import grafana_headers, standard_webhook_headers, whsec
from tests.support.plans import make_plan

NOW: Final = datetime(2026, 12, 4, 10, 30, 15, tzinfo=UTC)
KEY: Final = "clarion-test-0a1b2c3d4e5f"
OTHER_KEY: Final = "clarion-test-ffeeddccbbaa"
ROUTING_KEY: Final = "R0utingKey0123456789abcdefABCDEF"


@dataclass(frozen=True)
class RealIngest:
    """How ingest's route reads one source: its body model, parser and severity words."""

    model: type[BaseModel]
    parse: Callable[[Any, SeverityMap], list[Alert]]
    severities: SeverityMap


INGEST: Final[dict[Source, RealIngest]] = {
    Source.ALERTMANAGER: RealIngest(
        alertmanager.AlertmanagerWebhook, alertmanager.parse, alertmanager.SEVERITIES
    ),
    Source.GRAFANA: RealIngest(grafana.GrafanaWebhook, grafana.parse, grafana.SEVERITIES),
    Source.DATADOG: RealIngest(datadog.DatadogWebhook, datadog.parse, datadog.SEVERITIES),
    Source.GENERIC: RealIngest(generic.GenericWebhook, generic.parse, generic.SEVERITIES),
    Source.PAGERDUTY: RealIngest(pagerduty.PagerDutyEvent, pagerduty.parse, pagerduty.SEVERITIES),
}
SHIPPED_PLAN: Final = load_plan(None)


def ingested(source: Source, body: bytes, plan: Plan | None = None) -> list[Alert]:
    """What a running ingest (with ``plan``'s source_severities) makes of ``body``."""
    real = INGEST[source]
    severities = real.severities
    if plan is not None:
        severities = configured(source.value, severities, plan.source_severities)
    return real.parse(real.model.model_validate(json.loads(body)), severities)


def alerts(
    source: Source,
    key: str = KEY,
    *,
    resolve: bool = False,
    severity: Severity = Severity.INFO,
) -> list[Alert]:
    body = build_body(
        source,
        load_sample(source),
        key,
        NOW,
        severity=severity,
        resolve=resolve,
        routing_key=ROUTING_KEY,
    )
    return ingested(source, body)


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


NATIVE_WORDS: Final[dict[Source, tuple[str, str, str, str]]] = {
    Source.ALERTMANAGER: ("critical", "error", "warning", "info"),
    Source.GRAFANA: ("critical", "error", "warning", "info"),
    Source.PAGERDUTY: ("critical", "error", "warning", "info"),
    Source.DATADOG: ("P1", "P2", "P3", "P4"),
    Source.GENERIC: ("SEV1", "SEV2", "SEV3", "SEV4"),
}


def severity_words(source: Source, body: dict[str, Any]) -> set[str]:
    """What the body says in the field its source reads the severity from."""
    if source is Source.PAGERDUTY:
        return {body["payload"]["severity"]}
    if source is Source.DATADOG:
        return {body["alert_priority"]}
    if source is Source.GENERIC:
        return {alert["severity"] for alert in body["alerts"]}
    return {alert["labels"]["severity"] for alert in body["alerts"]}


@pytest.mark.parametrize("severity", list(Severity), ids=lambda s: s.sev)
@pytest.mark.parametrize("source", list(Source))
def test_the_test_alert_has_the_severity_asked_for_in_the_sources_own_words(
    source: Source, severity: Severity
) -> None:
    body = build_body(source, load_sample(source), KEY, NOW, severity=severity)

    assert severity_words(source, json.loads(body)) == {NATIVE_WORDS[source][severity.rank]}
    assert {alert.severity for alert in ingested(source, body)} == {severity}
    assert {alert.severity for alert in ingested(source, body, SHIPPED_PLAN)} == {severity}
    assert {a.severity for a in alerts(source, severity=severity, resolve=True)} == {severity}


@pytest.mark.parametrize("source", list(Source))
def test_by_default_a_test_alert_is_sev4_whatever_the_sample_says(source: Source) -> None:
    assert {alert.severity for alert in alerts(source)} == {Severity.INFO}


def test_a_word_the_plan_remaps_is_replaced_by_one_that_still_means_the_severity() -> None:
    plan = make_plan(
        source_severities={"generic": {"SEV3": "SEV2"}, "alertmanager": {"warning": "SEV1"}}
    )

    for source in (Source.GENERIC, Source.ALERTMANAGER):
        severities = severities_for(source, plan)
        body = build_body(
            source, load_sample(source), KEY, NOW, severity=Severity.WARNING, severities=severities
        )

        assert severity_words(source, json.loads(body)) != {NATIVE_WORDS[source][2]}
        assert {alert.severity for alert in ingested(source, body, plan)} == {Severity.WARNING}


@pytest.mark.parametrize(
    ("source", "remap"),
    [(Source.PAGERDUTY, {"warning": "SEV2"}), (Source.DATADOG, {"P3": "SEV2"})],
)
def test_a_plan_that_leaves_no_word_for_the_severity_is_said_so(
    source: Source, remap: dict[str, str]
) -> None:
    severities = severities_for(source, make_plan(source_severities={source.value: remap}))

    with pytest.raises(ValueError, match=f"no {source} severity word meaning SEV3"):
        build_body(
            source, load_sample(source), KEY, NOW, severity=Severity.WARNING, severities=severities
        )


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


# --- Who hears of it: the plan's deliveries for the test incident --------------------

ENGINEERING: Final = Heard("engineering", False, (ChannelName.EMAIL, ChannelName.SLACK))


@pytest.mark.parametrize("source", list(Source))
def test_in_the_shipped_plan_a_sev4_test_reaches_engineering_and_no_customer(
    source: Source,
) -> None:
    for resolve in (False, True):
        assert reach(SHIPPED_PLAN, source, KEY, Severity.INFO, NOW, resolve=resolve) == (
            ENGINEERING,
        )
    heard = reach(SHIPPED_PLAN, source, KEY, Severity.INFO, NOW, resolve=False)
    assert reach_line(SHIPPED_PLAN, Severity.INFO, heard, resolve=False) == (
        "SEV4 is internal only in your plan: engineering (email, slack) will hear it; "
        "no customer will."
    )


def test_in_the_shipped_plan_a_sev1_test_reaches_customers_everywhere() -> None:
    heard = reach(SHIPPED_PLAN, Source.GENERIC, KEY, Severity.CRITICAL, NOW, resolve=False)

    assert heard == (
        Heard(
            "customers",
            True,
            (
                ChannelName.STATUS_PAGE,
                ChannelName.EMAIL,
                ChannelName.SMS,
                ChannelName.MASTODON,
                ChannelName.BLUESKY,
                ChannelName.X,
            ),
        ),
        ENGINEERING,
        Heard("support", False, (ChannelName.EMAIL,)),
        Heard("executives", False, (ChannelName.EMAIL,)),
    )
    assert reach_line(SHIPPED_PLAN, Severity.CRITICAL, heard, resolve=False) == (
        "SEV1 reaches public audiences: customers (status_page, email, sms, mastodon, bluesky, "
        "x) will hear of this test; so will engineering (email, slack), support (email), "
        "executives (email)."
    )


def test_a_plan_that_tells_customers_of_every_severity_says_so_for_sev4() -> None:
    plan = make_plan()  # customers hear everything, on email and the status page
    heard = reach(plan, Source.ALERTMANAGER, KEY, Severity.INFO, NOW, resolve=False)

    assert heard == (Heard("customers", True, (ChannelName.EMAIL, ChannelName.STATUS_PAGE)),)
    assert reach_line(plan, Severity.INFO, heard, resolve=False) == (
        "SEV4 reaches public audiences: customers (email, status_page) will hear of this test."
    )


def test_a_severity_no_public_route_matches_reaches_no_customer() -> None:
    plan = make_plan(
        audiences={
            "customers": {"public": True, "status_page": True},
            "engineering": {"email": ["eng@example.com"]},
        },
        routes=[
            {"match": {"severities": ["SEV1"]}, "audiences": ["customers"]},
            {"audiences": ["engineering"]},
        ],
    )
    heard = reach(plan, Source.DATADOG, KEY, Severity.ERROR, NOW, resolve=False)

    assert heard == (Heard("engineering", False, (ChannelName.EMAIL,)),)
    assert reach_line(plan, Severity.ERROR, heard, resolve=False) == (
        "SEV2 reaches no public audience in your plan: engineering (email) will hear it; "
        "no customer will."
    )


def test_resolving_reaches_only_the_routes_that_hear_resolutions() -> None:
    plan = make_plan(routes=[{"audiences": ["customers"], "events": ["opened"]}])

    opened = reach(plan, Source.GENERIC, KEY, Severity.WARNING, NOW, resolve=False)
    resolved = reach(plan, Source.GENERIC, KEY, Severity.WARNING, NOW, resolve=True)

    assert [h.audience for h in opened] == ["customers"]
    assert resolved == ()
    assert reach_line(plan, Severity.WARNING, resolved, resolve=True) == (
        "SEV3 reaches no public audience in your plan: nobody will hear it is resolved."
    )
    assert reach_line(plan, None, None, resolve=True) == (
        "Resolving the test incident: whoever heard of it will hear it is resolved."
    )


def test_routes_see_the_service_each_sample_names() -> None:
    plan = make_plan(routes=[{"match": {"services": ["checkout-api"]}, "audiences": ["customers"]}])

    assert [
        h.audience for h in reach(plan, Source.ALERTMANAGER, KEY, Severity.INFO, NOW, resolve=False)
    ] == ["customers"]
    assert reach(plan, Source.GRAFANA, KEY, Severity.INFO, NOW, resolve=False) == ()


def test_status_page_subscribers_count_as_an_email_audience() -> None:
    plan = make_plan(
        emails=(),
        audiences={"customers": {"public": True, "status_page": True, "subscribers": True}},
    )

    assert reach(plan, Source.GENERIC, KEY, Severity.CRITICAL, NOW, resolve=False) == (
        Heard("customers", True, (ChannelName.EMAIL, ChannelName.STATUS_PAGE)),
    )


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
    store.remember(Source.GRAFANA, KEY, Severity.CRITICAL)
    store.remember(Source.DATADOG, OTHER_KEY, Severity.INFO)
    store.remember(Source.GRAFANA, OTHER_KEY, Severity.ERROR)

    assert store.last(Source.GRAFANA) == OTHER_KEY
    assert store.last(Source.DATADOG) == OTHER_KEY
    assert store.last(Source.GENERIC) is None
    assert KeyStore(tmp_path / "data").last(Source.GRAFANA) == OTHER_KEY


def test_the_severity_is_remembered_with_the_last_key_only(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.remember(Source.GRAFANA, KEY, Severity.CRITICAL)
    store.remember(Source.GRAFANA, OTHER_KEY, Severity.ERROR)

    assert store.severity(Source.GRAFANA, OTHER_KEY) is Severity.ERROR
    assert store.severity(Source.GRAFANA, KEY) is None  # no longer the last one
    assert store.severity(Source.GENERIC, OTHER_KEY) is None


def test_a_key_file_from_before_severities_still_gives_its_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.path.write_text(json.dumps({"grafana": KEY}), encoding="utf-8")

    assert store.last(Source.GRAFANA) == KEY
    assert store.severity(Source.GRAFANA, KEY) is None
    store.remember(Source.GENERIC, OTHER_KEY, Severity.INFO)
    assert store.last(Source.GRAFANA) == KEY


def test_a_damaged_or_unwritable_key_file_costs_only_the_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = KeyStore(tmp_path)
    damaged.path.write_text("{not json", encoding="utf-8")
    blocked = KeyStore(tmp_path / "test-alerts.json" / "below-a-file")

    blocked.remember(Source.GENERIC, KEY, Severity.INFO)

    assert damaged.last(Source.GENERIC) is None
    assert blocked.last(Source.GENERIC) is None
    assert "Could not keep the test key" in capsys.readouterr().err
