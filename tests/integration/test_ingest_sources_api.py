"""The ingest HTTP API for every source, against a real Valkey.

Each test starts the app with its own settings (credentials, limits, grouping)
and checks what the sender is answered and what lands in Redis. SNS messages
are signed with a self-signed certificate that a real server on loopback serves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import pytest
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.clock import ManualClock
from shared.contracts import Incident, IncidentStatus, Severity
from shared.incidents import load_incident, recent_incidents
from shared.settings import Settings
from shared.streams import INCIDENTS_BY_TIME
from tests.conftest import load_fixture
from tests.support.asgi import running
from tests.support.ingest_requests import (
    JSON,
    REMOTE_CLIENT,
    LoopbackServer,
    basic,
    bearer,
    body_of,
    cloudwatch_alarm,
    epoch,
    grafana_headers,
    loopback_server,
    running_from,
    sns_time,
    standard_webhook_headers,
    whsec,
)
from tests.support.plans import make_plan
from tests.support.signing_certs import SigningIdentity, signing_identity
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

T0: Final = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
INGEST: Final = "http://ingest.test"
TOKEN: Final = "ingest-t0ken-7c1e9a"
GRAFANA_SECRET: Final = "gr4fana-hmac-s3cret"
WEBHOOK_SECRET: Final = whsec(b"clarion-test-standard-webhook-k")

URLS: Final = {
    "alertmanager": "/v1/alerts/alertmanager",
    "grafana": "/v1/alerts/grafana",
    "datadog": "/v1/alerts/datadog",
    "generic": "/v1/alerts/generic",
    "sns": "/v1/alerts/sns",
    "pagerduty": "/v2/enqueue",
}
ALERTMANAGER: Final = "alertmanager_webhook_v4_firing.json"
ALERTMANAGER_SINGLE: Final = "alertmanager_webhook_v4_firing_single.json"
GRAFANA: Final = "grafana_webhook_v1_firing.json"
GENERIC_FIRING: Final = "generic_alert_v1_firing.json"
GENERIC_RESOLVED: Final = "generic_alert_v1_resolved.json"
PD_TRIGGER: Final = "pagerduty_events_v2_trigger_devdocs.json"
PD_ACKNOWLEDGE: Final = "pagerduty_events_v2_acknowledge.json"
PD_RESOLVE: Final = "pagerduty_events_v2_resolve.json"
PD_KEY: Final = "samplekeyhere"  # the trigger fixture's routing_key and dedup_key
SNS_TOPIC: Final = "arn:aws:sns:us-west-2:123456789012:clarion-alarms"

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def millis(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


TRIGGERED_AT: Final = T0 - timedelta(minutes=5)
RECOVERED_AT: Final = T0 - timedelta(minutes=1)

# What Datadog sends once the template's variables are filled in (all values are text).
DATADOG_TRIGGERED: Final[dict[str, Any]] = {
    "id": "7309451258839265743",
    "title": "[P1] [Triggered on {service:checkout}] Checkout error rate above 5%",
    "body": "%%%\nThe 5xx ratio of checkout has been above 5% for 5 minutes.\n\n"
    "@webhook-clarion\n%%%",
    "last_updated": millis(TRIGGERED_AT),
    "event_type": "metric_alert_monitor",
    "date": millis(TRIGGERED_AT),
    "org": {"id": "123456", "name": "Example Inc"},
    "alert_id": "98765432",
    "alert_title": "Checkout error rate above 5%",
    "alert_transition": "Triggered",
    "alert_type": "error",
    "alert_priority": "P1",
    "alert_status": "Alert",
    "alert_scope": "service:checkout",
    "alert_metric": "trace.http.request.errors",
    "alert_cycle_key": "$ALERT_CYCLE_KEY",  # a variable this account leaves unsubstituted
    "aggreg_key": "b7c1a0f3e5d2",
    "tags": "env:prod,service:checkout,team:payments",
    "link": "https://app.datadoghq.com/event/event?id=7309451258839265743",
    "hostname": "checkout-7f9c",
}
DATADOG_RECOVERED: Final[dict[str, Any]] = {
    **DATADOG_TRIGGERED,
    "id": "7309451258839265999",
    "title": "[P1] [Recovered on {service:checkout}] Checkout error rate above 5%",
    "body": "%%%\nThe 5xx ratio of checkout is back under 5%.\n%%%",
    "last_updated": millis(RECOVERED_AT),
    "date": millis(RECOVERED_AT),
    "alert_transition": "Recovered",
    "alert_type": "success",
    "alert_status": "OK",
}

PAYLOADS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "alertmanager": lambda: load_fixture(ALERTMANAGER),
    "grafana": lambda: load_fixture(GRAFANA),
    "datadog": lambda: dict(DATADOG_TRIGGERED),
    "generic": lambda: load_fixture(GENERIC_FIRING),
    "pagerduty": lambda: load_fixture(PD_TRIGGER),
}
WEBHOOK_SOURCES: Final = ("alertmanager", "grafana", "datadog", "generic")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def serve(redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock) -> Serve:
    """``async with serve(**settings) as client``: the app running on a flushed Valkey.

    ``severity_map`` is the plan's ``source_severities``.

    ``client=(host, port)`` makes requests come from that address (default: loopback).
    """

    def start(
        client: tuple[str, int] | None = None,
        severity_map: dict[str, dict[str, str]] | None = None,
        **overrides: Any,
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        plan = make_plan(source_severities=severity_map or {})
        app = create_app(make_settings(**overrides), clock=clock, plan=plan)
        if client is None:
            return running(app, INGEST)
        return running_from(app, INGEST, client)

    return start


def fields_of(response: httpx.Response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["fields"]]


async def stored(redis: Redis, incident_id: str) -> Incident:
    incident = await load_incident(redis, incident_id)
    assert incident is not None, f"incident {incident_id} is not stored"
    return incident


async def assert_nothing_stored(redis: Redis) -> None:
    assert await incident_events(redis) == []
    assert await redis.zcard(INCIDENTS_BY_TIME) == 0


def assert_opened(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["events"] == ["incident.opened"]
    assert body["duplicate"] is False
    incident_id: str = body["incident_id"]
    return incident_id


# --- Grafana --------------------------------------------------------------------------


async def test_grafana_fixture_opens_one_incident_for_its_group(serve: Serve, redis: Redis) -> None:
    async with serve() as client:
        response = await client.post(URLS["grafana"], json=load_fixture(GRAFANA))

    incident_id = assert_opened(response)
    incident = await stored(redis, incident_id)
    assert incident.source == "grafana"
    assert incident.title == "This alert was triggered for zone us-1"
    assert incident.severity is Severity.WARNING  # no severity label: the default
    assert incident.status is IncidentStatus.INVESTIGATING
    assert {a.fingerprint for a in incident.alerts} == {"c6eadffa33fcdf37", "bc97ff14869b13e3"}
    assert incident.external_url == "https://play.grafana.org/"
    events = await incident_events(redis)
    assert [(e.type, e.incident_id) for e in events] == [("incident.opened", incident_id)]


@pytest.mark.parametrize("scheme", ["signature", "signature-with-timestamp", "ingest-token"])
async def test_grafana_accepts_any_one_valid_credential(
    serve: Serve, redis: Redis, scheme: str
) -> None:
    body = body_of(load_fixture(GRAFANA))
    headers = {
        "signature": grafana_headers(GRAFANA_SECRET, body),
        "signature-with-timestamp": grafana_headers(GRAFANA_SECRET, body, epoch(T0)),
        "ingest-token": {**JSON, **bearer(TOKEN)},
    }[scheme]

    async with serve(grafana_hmac_secret=GRAFANA_SECRET, ingest_token=TOKEN) as client:
        response = await client.post(URLS["grafana"], content=body, headers=headers)

    assert_opened(response)
    assert len(await incident_events(redis)) == 1


def _grafana_refusals(body: bytes) -> dict[str, dict[str, str]]:
    other_body = body.replace(b"us-1", b"us-2")
    stale = grafana_headers(GRAFANA_SECRET, body, epoch(T0 - timedelta(minutes=10)))
    restamped = {**stale, "X-Grafana-Alerting-Signature-Timestamp": str(epoch(T0))}
    return {
        "unsigned": dict(JSON),
        "wrong-secret": grafana_headers("another-secret", body),
        "signature-of-another-body": grafana_headers(GRAFANA_SECRET, other_body),
        "timestamp-10-minutes-old": stale,
        "timestamp-changed-after-signing": restamped,
        "wrong-token": {**JSON, **bearer("not-the-token")},
    }


@pytest.mark.parametrize("case", list(_grafana_refusals(b"")))
async def test_grafana_without_a_valid_credential_gets_401(
    serve: Serve, redis: Redis, case: str
) -> None:
    body = body_of(load_fixture(GRAFANA))
    headers = _grafana_refusals(body)[case]

    async with serve(grafana_hmac_secret=GRAFANA_SECRET, ingest_token=TOKEN) as client:
        response = await client.post(URLS["grafana"], content=body, headers=headers)

    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    if case == "timestamp-10-minutes-old":
        assert "timestamp" in response.json()["error"]["message"]
    await assert_nothing_stored(redis)


# --- Datadog --------------------------------------------------------------------------


async def test_datadog_trigger_opens_and_recovery_resolves(serve: Serve, redis: Redis) -> None:
    async with serve() as client:
        opened = await client.post(URLS["datadog"], json=DATADOG_TRIGGERED)
        recovered = await client.post(URLS["datadog"], json=DATADOG_RECOVERED)

    incident_id = assert_opened(opened)
    assert recovered.status_code == 202, recovered.text
    assert recovered.json()["incident_id"] == incident_id
    assert recovered.json()["events"] == ["incident.resolved"]
    incident = await stored(redis, incident_id)
    assert incident.title == "Checkout error rate above 5%"
    assert incident.severity is Severity.CRITICAL  # P1
    assert incident.service == "checkout"
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolved_at == RECOVERED_AT
    assert [e.type for e in await incident_events(redis)] == [
        "incident.opened",
        "incident.resolved",
    ]


async def test_datadog_unsubstituted_default_template_gets_422_naming_title(
    serve: Serve, redis: Redis
) -> None:
    template = load_fixture("datadog_webhook_default_payload_template.json")

    async with serve() as client:
        response = await client.post(URLS["datadog"], json=template)

    assert response.status_code == 422
    assert fields_of(response) == ["title"]
    await assert_nothing_stored(redis)


# --- Generic --------------------------------------------------------------------------


async def test_generic_fixtures_open_and_resolve(serve: Serve, redis: Redis) -> None:
    async with serve() as client:
        opened = await client.post(URLS["generic"], json=load_fixture(GENERIC_FIRING))
        resolved = await client.post(URLS["generic"], json=load_fixture(GENERIC_RESOLVED))

    incident_id = assert_opened(opened)
    assert resolved.status_code == 202
    assert resolved.json()["incident_id"] == incident_id
    assert resolved.json()["events"] == ["incident.resolved"]
    incident = await stored(redis, incident_id)
    assert incident.title == "Checkout page returns errors"
    assert incident.severity is Severity.ERROR  # SEV2
    assert incident.impact == "Some customers cannot complete a purchase."
    assert incident.service == "checkout"
    assert incident.status is IncidentStatus.RESOLVED


async def test_generic_signed_request_is_accepted_and_its_replay_later_refused(
    serve: Serve, redis: Redis, clock: ManualClock
) -> None:
    body = body_of(load_fixture(GENERIC_FIRING))
    headers = standard_webhook_headers(WEBHOOK_SECRET, body, epoch(T0))

    async with serve(generic_webhook_secret=WEBHOOK_SECRET) as client:
        first = await client.post(URLS["generic"], content=body, headers=headers)
        clock.advance(timedelta(minutes=10))
        replayed = await client.post(URLS["generic"], content=body, headers=headers)

    assert_opened(first)
    assert replayed.status_code == 401, replayed.text
    assert "timestamp" in replayed.json()["error"]["message"]
    assert len(await incident_events(redis)) == 1


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "another-body", "stale-timestamp"])
async def test_generic_without_a_valid_signature_gets_401(
    serve: Serve, redis: Redis, case: str
) -> None:
    body = body_of(load_fixture(GENERIC_FIRING))
    headers = {
        "unsigned": dict(JSON),
        "wrong-key": standard_webhook_headers(whsec(b"x" * 32), body, epoch(T0)),
        "another-body": standard_webhook_headers(WEBHOOK_SECRET, body + b" ", epoch(T0)),
        "stale-timestamp": standard_webhook_headers(
            WEBHOOK_SECRET, body, epoch(T0 - timedelta(minutes=10))
        ),
    }[case]

    async with serve(generic_webhook_secret=WEBHOOK_SECRET) as client:
        response = await client.post(URLS["generic"], content=body, headers=headers)

    assert response.status_code == 401, response.text
    await assert_nothing_stored(redis)


def _url(alert: dict[str, Any]) -> None:
    alert["url"] = "ftp://probes.example.org/checkout"


def _no_title(alert: dict[str, Any]) -> None:
    del alert["title"]


def _bad_start(alert: dict[str, Any]) -> None:
    alert["starts_at"] = "2026-11-23T14:30:00"  # no offset


@pytest.mark.parametrize(
    ("change", "field"),
    [(_url, "alerts.0.url"), (_no_title, "alerts.0"), (_bad_start, "alerts.0.starts_at")],
)
async def test_generic_schema_violation_gets_422_naming_the_field(
    serve: Serve, redis: Redis, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    payload = load_fixture(GENERIC_FIRING)
    change(payload["alerts"][0])

    async with serve() as client:
        response = await client.post(URLS["generic"], json=payload)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_payload"
    assert fields_of(response) == [field]
    await assert_nothing_stored(redis)


# --- PagerDuty Events API v2 ----------------------------------------------------------


def pd_event(fixture: str, **changes: Any) -> dict[str, Any]:
    """A fixture event about the trigger fixture's alert (same routing and dedup key)."""
    return {**load_fixture(fixture), "routing_key": PD_KEY, "dedup_key": PD_KEY, **changes}


PD_ACCEPTED: Final = {"status": "success", "message": "Event processed", "dedup_key": PD_KEY}


async def test_pagerduty_trigger_is_answered_as_pagerduty_does(serve: Serve, redis: Redis) -> None:
    async with serve(pagerduty_routing_keys=(PD_KEY,)) as client:
        response = await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))

    assert response.status_code == 202, response.text
    assert response.json() == PD_ACCEPTED
    events = await incident_events(redis)
    assert [e.type for e in events] == ["incident.opened"]
    incident = await stored(redis, events[0].incident_id)
    assert incident.source == "pagerduty"
    assert incident.title == "Example alert on host1.example.com"
    assert incident.severity is Severity.INFO
    assert incident.service == "postgres"


async def test_pagerduty_resent_trigger_is_deduplicated(serve: Serve, redis: Redis) -> None:
    async with serve(pagerduty_routing_keys=(PD_KEY,)) as client:
        await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))
        again = await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))

    assert again.status_code == 202
    assert again.json() == PD_ACCEPTED
    assert [e.type for e in await incident_events(redis)] == ["incident.opened"]
    assert await redis.zcard(INCIDENTS_BY_TIME) == 1


async def test_pagerduty_acknowledge_then_resolve(serve: Serve, redis: Redis) -> None:
    async with serve(pagerduty_routing_keys=(PD_KEY,)) as client:
        await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))
        incident_id = (await incident_events(redis))[0].incident_id

        acknowledged = await client.post(URLS["pagerduty"], json=pd_event(PD_ACKNOWLEDGE))
        after_ack = await stored(redis, incident_id)
        resolved = await client.post(URLS["pagerduty"], json=pd_event(PD_RESOLVE))

    assert acknowledged.status_code == 202
    assert acknowledged.json() == PD_ACCEPTED
    assert after_ack.status is IncidentStatus.IDENTIFIED
    assert after_ack.acknowledged_at == T0
    assert resolved.status_code == 202
    assert resolved.json() == PD_ACCEPTED
    assert (await stored(redis, incident_id)).status is IncidentStatus.RESOLVED
    assert [e.type for e in await incident_events(redis)] == [
        "incident.opened",
        "incident.updated",
        "incident.resolved",
    ]


async def test_pagerduty_unknown_routing_key_gets_400_and_nothing_is_stored(
    serve: Serve, redis: Redis
) -> None:
    async with serve(pagerduty_routing_keys=("R0UTINGKEY0123456789ABCDEFGHIJKL",)) as client:
        response = await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "invalid event"
    assert body["message"] == "Event object is invalid"
    assert body["errors"]
    assert all(isinstance(error, str) for error in body["errors"])
    await assert_nothing_stored(redis)


async def test_pagerduty_malformed_json_gets_unrecognized_object(
    serve: Serve, redis: Redis
) -> None:
    async with serve(pagerduty_routing_keys=(PD_KEY,)) as client:
        response = await client.post(
            URLS["pagerduty"], content=b'{"routing_key": "samplekeyhere",', headers=JSON
        )

    assert response.status_code == 400
    assert response.json() == {
        "status": "Unrecognized object",
        "message": "Event object format is unrecognized",
        "errors": ["JSON parse error"],
    }
    await assert_nothing_stored(redis)


async def test_pagerduty_missing_summary_is_an_invalid_event_naming_it(
    serve: Serve, redis: Redis
) -> None:
    event = load_fixture(PD_TRIGGER)
    del event["payload"]["summary"]

    async with serve(pagerduty_routing_keys=(PD_KEY,)) as client:
        response = await client.post(URLS["pagerduty"], json=event)

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "invalid event"
    assert "'payload.summary' is missing or blank" in body["errors"]
    await assert_nothing_stored(redis)


async def test_pagerduty_accepts_the_ingest_token_as_routing_key(
    serve: Serve, redis: Redis
) -> None:
    async with serve(ingest_token=TOKEN) as client:
        response = await client.post(
            URLS["pagerduty"], json={**load_fixture(PD_TRIGGER), "routing_key": TOKEN}
        )

    assert response.status_code == 202, response.text
    assert response.json() == PD_ACCEPTED
    assert [e.type for e in await incident_events(redis)] == ["incident.opened"]


async def test_pagerduty_trigger_without_dedup_key_gets_a_stable_derived_one(
    serve: Serve, redis: Redis
) -> None:
    event = load_fixture(PD_TRIGGER)
    del event["dedup_key"]

    async with serve(pagerduty_routing_keys=(PD_KEY,)) as client:
        first = await client.post(URLS["pagerduty"], json=event)
        again = await client.post(URLS["pagerduty"], json=event)
        dedup_key = first.json()["dedup_key"]
        resolved = await client.post(
            URLS["pagerduty"], json=pd_event(PD_RESOLVE, dedup_key=dedup_key)
        )

    assert (first.status_code, again.status_code, resolved.status_code) == (202, 202, 202)
    assert dedup_key
    assert again.json()["dedup_key"] == dedup_key
    assert [e.type for e in await incident_events(redis)] == [
        "incident.opened",
        "incident.resolved",
    ]


async def test_pagerduty_over_its_rate_limit_gets_a_throttle_answer(serve: Serve) -> None:
    async with serve(pagerduty_routing_keys=(PD_KEY,), ingest_rate_limit="1/minute") as client:
        first = await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))
        throttled = await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))

    assert first.status_code == 202
    assert throttled.status_code == 429
    assert throttled.json()["status"] == "throttle event"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60


async def test_pagerduty_requests_are_timed_like_every_other_source(serve: Serve) -> None:
    async with serve(ingest_token=TOKEN) as client:
        event = {**load_fixture(PD_TRIGGER), "routing_key": TOKEN}
        assert (await client.post(URLS["pagerduty"], json=event)).status_code == 202
        alerts = load_fixture(ALERTMANAGER)
        response = await client.post(URLS["alertmanager"], json=alerts, headers=bearer(TOKEN))
        assert response.status_code == 202
        metrics = (await client.get("/metrics")).text

    count = "clarion_ingest_request_duration_seconds_count"
    assert f'{count}{{source="alertmanager",status="202"}} 1.0' in metrics
    assert f'{count}{{source="pagerduty",status="202"}} 1.0' in metrics


# --- AWS SNS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return signing_identity(T0)


@pytest.fixture(scope="module")
def cert_server_module(identity: SigningIdentity) -> Iterator[LoopbackServer]:
    with loopback_server(identity.certificate_pem) as server:
        yield server


@pytest.fixture
def cert_server(cert_server_module: LoopbackServer) -> LoopbackServer:
    cert_server_module.requests.clear()
    return cert_server_module


def sns_notification(
    server: LoopbackServer, identity: SigningIdentity, message: str, message_id: str
) -> bytes:
    body = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": SNS_TOPIC,
        "Subject": 'ALARM: "checkout-5xx" in US West (Oregon)',
        "Message": message,
        "Timestamp": sns_time(T0 - timedelta(seconds=20)),
        "SigningCertURL": server.url("/cert.pem"),
        "UnsubscribeURL": server.url("/unsubscribe?SubscriptionArn=x"),
    }
    return body_of(identity.signed(body))


SNS_HEADERS: Final = {
    "Content-Type": "text/plain; charset=UTF-8",
    "x-amz-sns-message-type": "Notification",
    "x-amz-sns-topic-arn": SNS_TOPIC,
}


async def test_sns_cloudwatch_alarm_opens_and_ok_resolves(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    alarm = sns_notification(
        cert_server, identity, cloudwatch_alarm("ALARM", T0 - timedelta(minutes=1)), "m-alarm"
    )
    ok = sns_notification(cert_server, identity, cloudwatch_alarm("OK", T0), "m-ok")

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        opened = await client.post(URLS["sns"], content=alarm, headers=SNS_HEADERS)
        resolved = await client.post(URLS["sns"], content=ok, headers=SNS_HEADERS)

    incident_id = assert_opened(opened)
    assert resolved.status_code == 202, resolved.text
    assert resolved.json()["incident_id"] == incident_id
    assert resolved.json()["events"] == ["incident.resolved"]
    incident = await stored(redis, incident_id)
    assert incident.title == "checkout-5xx"
    assert incident.severity is Severity.CRITICAL  # "severity: SEV1" in the description
    assert incident.service == "checkout"
    assert incident.status is IncidentStatus.RESOLVED
    assert cert_server.seen("/cert.pem") == ["GET"]  # fetched once, then cached


async def test_sns_tampered_message_gets_401_and_nothing_is_stored(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    signed = sns_notification(cert_server, identity, cloudwatch_alarm("ALARM", T0), "m-1")
    tampered = signed.replace(b"checkout-5xx", b"payments-5xx")
    assert tampered != signed

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        response = await client.post(URLS["sns"], content=tampered, headers=SNS_HEADERS)

    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    await assert_nothing_stored(redis)


async def test_sns_aws_sample_is_refused_without_fetching_its_certificate(
    serve: Serve, redis: Redis, cert_server: LoopbackServer
) -> None:
    sample = body_of(load_fixture("aws_sns_http_notification.json"))

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        response = await client.post(URLS["sns"], content=sample, headers=SNS_HEADERS)

    assert response.status_code == 401
    assert "SigningCertURL" in response.json()["error"]["message"]
    assert cert_server.requests == []
    await assert_nothing_stored(redis)


async def test_sns_subscription_confirmation_visits_the_subscribe_url_once(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92"
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": token,
        "TopicArn": SNS_TOPIC,
        "Message": f"You have chosen to subscribe to the topic {SNS_TOPIC}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": cert_server.url(f"/confirm?Action=ConfirmSubscription&Token={token}"),
        "Timestamp": sns_time(T0 - timedelta(seconds=5)),
        "SigningCertURL": cert_server.url("/cert.pem"),
    }
    headers = {**SNS_HEADERS, "x-amz-sns-message-type": "SubscriptionConfirmation"}

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        response = await client.post(
            URLS["sns"], content=body_of(identity.signed(confirmation, "2")), headers=headers
        )

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "confirmed", "type": "SubscriptionConfirmation"}
    assert cert_server.seen("/confirm") == ["GET"]
    await assert_nothing_stored(redis)


async def test_sns_confirmation_is_timed_with_the_status_it_was_answered(
    serve: Serve, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb",
        "TopicArn": SNS_TOPIC,
        "Message": f"You have chosen to subscribe to the topic {SNS_TOPIC}.",
        "SubscribeURL": cert_server.url("/confirm?Action=ConfirmSubscription&Token=2336412f37fb"),
        "Timestamp": sns_time(T0),
        "SigningCertURL": cert_server.url("/cert.pem"),
    }

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        response = await client.post(
            URLS["sns"],
            content=body_of(identity.signed(confirmation)),
            headers={**SNS_HEADERS, "x-amz-sns-message-type": "SubscriptionConfirmation"},
        )
        metrics = (await client.get("/metrics")).text

    assert response.status_code == 200
    count = "clarion_ingest_request_duration_seconds_count"
    assert f'{count}{{source="sns",status="200"}} 1.0' in metrics


async def test_sns_insufficient_data_changes_nothing(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    silent = sns_notification(
        cert_server, identity, cloudwatch_alarm("INSUFFICIENT_DATA", T0), "m-silent"
    )

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        response = await client.post(URLS["sns"], content=silent, headers=SNS_HEADERS)

    assert response.status_code == 202, response.text
    assert response.json()["incident_id"] is None
    assert response.json()["events"] == []
    await assert_nothing_stored(redis)


async def test_sns_message_from_a_topic_not_configured_gets_401(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    alarm = sns_notification(cert_server, identity, cloudwatch_alarm("ALARM", T0), "m-1")

    async with serve(
        sns_cert_url_pattern=cert_server.url_pattern,
        sns_topic_arns=("arn:aws:sns:us-west-2:123456789012:other-topic",),
    ) as client:
        response = await client.post(URLS["sns"], content=alarm, headers=SNS_HEADERS)

    assert response.status_code == 401
    assert SNS_TOPIC in response.json()["error"]["message"]
    await assert_nothing_stored(redis)


async def test_sns_basic_auth_is_required_when_configured(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    alarm = sns_notification(cert_server, identity, cloudwatch_alarm("ALARM", T0), "m-1")

    async with serve(
        client=REMOTE_CLIENT,
        sns_cert_url_pattern=cert_server.url_pattern,
        sns_basic_auth="aws:sns-pw",
    ) as client:
        without = await client.post(URLS["sns"], content=alarm, headers=SNS_HEADERS)
        with_it = await client.post(
            URLS["sns"], content=alarm, headers={**SNS_HEADERS, **basic("aws", "sns-pw")}
        )

    assert without.status_code == 401
    assert_opened(with_it)


async def test_sns_unavailable_certificate_is_a_503_and_not_a_rejection(
    serve: Serve, redis: Redis, cert_server: LoopbackServer, identity: SigningIdentity
) -> None:
    body = {
        "Type": "Notification",
        "MessageId": "m-nocert",
        "TopicArn": SNS_TOPIC,
        "Message": cloudwatch_alarm("ALARM", T0),
        "Timestamp": sns_time(T0),
        "SigningCertURL": cert_server.url("/missing.pem"),
    }

    async with serve(sns_cert_url_pattern=cert_server.url_pattern) as client:
        response = await client.post(
            URLS["sns"], content=body_of(identity.signed(body)), headers=SNS_HEADERS
        )
        rejections = (await client.get("/v1/rejections")).json()["rejections"]

    assert response.status_code == 503  # SNS retries later
    assert response.headers["retry-after"]
    assert cert_server.seen("/missing.pem") == ["GET"]
    await assert_nothing_stored(redis)
    assert rejections == []


# --- Authentication across sources ----------------------------------------------------


@pytest.mark.parametrize("source", WEBHOOK_SOURCES)
async def test_ingest_token_is_required_by_every_webhook(
    serve: Serve, redis: Redis, source: str
) -> None:
    payload = PAYLOADS[source]()

    async with serve(ingest_token=TOKEN) as client:
        missing = await client.post(URLS[source], json=payload)
        wrong = await client.post(URLS[source], json=payload, headers=bearer(TOKEN + "x"))
        await assert_nothing_stored(redis)
        right = await client.post(URLS[source], json=payload, headers=bearer(TOKEN))

    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_opened(right)


@pytest.mark.parametrize("source", [*WEBHOOK_SOURCES, "pagerduty"])
async def test_with_nothing_configured_a_remote_client_gets_403(
    serve: Serve, redis: Redis, source: str
) -> None:
    async with serve(client=REMOTE_CLIENT) as client:
        response = await client.post(URLS[source], json=PAYLOADS[source]())

    assert response.status_code == 403, response.text
    if source == "pagerduty":
        assert response.json()["status"] == "forbidden"
    else:
        assert response.json()["error"]["code"] == "forbidden"
    await assert_nothing_stored(redis)


async def test_basic_auth_lets_a_remote_sender_in_and_only_for_its_source(
    serve: Serve, redis: Redis
) -> None:
    payload = load_fixture(ALERTMANAGER)

    async with serve(client=REMOTE_CLIENT, alertmanager_basic_auth="user:pw") as client:
        wrong = await client.post(URLS["alertmanager"], json=payload, headers=basic("user", "no"))
        other_source = await client.post(
            URLS["grafana"], json=load_fixture(GRAFANA), headers=basic("user", "pw")
        )
        right = await client.post(URLS["alertmanager"], json=payload, headers=basic("user", "pw"))

    assert wrong.status_code == 401
    assert other_source.status_code == 403  # grafana has no credentials of its own
    assert "grafana" in other_source.json()["error"]["message"]
    assert_opened(right)
    assert len(await incident_events(redis)) == 1


# --- Limits and the record of rejections ----------------------------------------------


async def test_body_over_max_body_bytes_gets_413(serve: Serve, redis: Redis) -> None:
    payload = load_fixture(ALERTMANAGER)
    payload["alerts"][0]["annotations"]["description"] = "x" * 4096

    async with serve(max_body_bytes=2048) as client:
        too_big = await client.post(URLS["alertmanager"], json=payload)
        small = await client.post(URLS["alertmanager"], json=load_fixture(ALERTMANAGER_SINGLE))

    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert small.status_code == 202  # the limit is on size, not on the source


def _two_generic_alerts() -> dict[str, Any]:
    payload = load_fixture(GENERIC_FIRING)
    payload["alerts"].append({"title": "Second alert", "fingerprint": "second"})
    return payload


TWO_ALERTS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "alertmanager": lambda: load_fixture(ALERTMANAGER),
    "grafana": lambda: load_fixture(GRAFANA),
    "generic": _two_generic_alerts,
}


@pytest.mark.parametrize("source", list(TWO_ALERTS))
async def test_more_alerts_than_allowed_gets_413(serve: Serve, redis: Redis, source: str) -> None:
    payload = TWO_ALERTS[source]()
    assert len(payload["alerts"]) == 2

    async with serve(max_alerts_per_request=1) as client:
        response = await client.post(URLS[source], json=payload)

    assert response.status_code == 413, response.text
    assert "CLARION_MAX_ALERTS_PER_REQUEST" in response.json()["error"]["message"]
    await assert_nothing_stored(redis)


async def test_rate_limit_answers_429_with_retry_after_per_source(serve: Serve) -> None:
    async with serve(ingest_rate_limit="2/minute") as client:
        statuses = [
            (await client.post(URLS["alertmanager"], json=load_fixture(ALERTMANAGER))).status_code
            for _ in range(2)
        ]
        limited = await client.post(URLS["alertmanager"], json=load_fixture(ALERTMANAGER))
        other_source = await client.post(URLS["grafana"], json=load_fixture(GRAFANA))

    assert statuses == [202, 202]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert other_source.status_code == 202


async def test_rejections_are_listed_newest_first_without_secrets(serve: Serve) -> None:
    # The token is the right one, and it also appears in the bodies: it must be scrubbed.
    leaky = load_fixture(ALERTMANAGER)
    leaky["alerts"][0]["annotations"]["note"] = f"sent with {TOKEN}"
    huge = load_fixture(ALERTMANAGER_SINGLE)
    huge["alerts"][0]["annotations"]["description"] = TOKEN + "x" * 4096
    auth = bearer(TOKEN)

    async with serve(
        ingest_token=TOKEN,
        max_body_bytes=2048,
        max_alerts_per_request=1,
        ingest_rate_limit="2/minute",
    ) as client:
        url = URLS["alertmanager"]
        answers = [
            await client.post(url, json=leaky, headers=bearer("wr0ng-token")),
            await client.post(url, json=huge, headers=auth),
            await client.post(url, json=leaky, headers=auth),  # 2 alerts: over the limit
            await client.post(url, content=f'{{"token": "{TOKEN}"'.encode(), headers=auth),
            await client.post(url, json=load_fixture(ALERTMANAGER_SINGLE), headers=auth),
        ]
        listed = await client.get("/v1/rejections")
        metrics = await client.get("/metrics")

    assert [a.status_code for a in answers] == [401, 413, 413, 400, 429]
    assert listed.status_code == 200
    rejections = listed.json()["rejections"]
    assert [(r["status"], r["reason"]) for r in rejections] == [
        (429, "rate_limited"),
        (400, "invalid_json"),
        (413, "payload_too_large"),
        (413, "payload_too_large"),
        (401, "unauthorized"),
    ]
    assert {r["source"] for r in rejections} == {"alertmanager"}
    assert {r["client"] for r in rejections} == {"127.0.0.1"}
    assert all(r["at"] == "2026-11-23T14:31:00Z" for r in rejections)
    assert "note" in rejections[2]["body_excerpt"]  # the excerpt is there, redacted
    assert TOKEN not in listed.text
    assert "wr0ng-token" not in listed.text  # nothing from the headers is kept
    assert metrics.status_code == 200
    samples = _samples(metrics.text, "clarion_ingest_rejected_total")
    assert samples == {
        ("alertmanager", "unauthorized"): 1.0,
        ("alertmanager", "payload_too_large"): 2.0,
        ("alertmanager", "invalid_json"): 1.0,
        ("alertmanager", "rate_limited"): 1.0,
    }


def _samples(exposition: str, name: str) -> dict[tuple[str, str], float]:
    """``{(source, reason): value}`` of one counter in a Prometheus text exposition."""
    pattern = re.compile(rf'^{name}\{{reason="([^"]*)",source="([^"]*)"\}} (\S+)$', re.MULTILINE)
    return {(m[2], m[1]): float(m[3]) for m in pattern.finditer(exposition)}


async def test_malformed_json_gets_400_on_every_webhook(serve: Serve, redis: Redis) -> None:
    async with serve() as client:
        answers = {
            source: await client.post(URLS[source], content=b"{not json", headers=JSON)
            for source in WEBHOOK_SOURCES
        }

    assert {s: a.status_code for s, a in answers.items()} == dict.fromkeys(WEBHOOK_SOURCES, 400)
    assert {a.json()["error"]["code"] for a in answers.values()} == {"invalid_json"}
    await assert_nothing_stored(redis)


# --- Grouping and severity ------------------------------------------------------------


async def test_group_by_service_joins_alerts_of_two_sources_in_one_incident(
    serve: Serve, redis: Redis
) -> None:
    generic = {
        "version": "1",
        "source": "synthetic-checks",
        "alerts": [
            {
                "title": "Checkout probe fails",
                "severity": "warning",
                "fingerprint": "checkout-probe",
                "labels": {"service": "checkout-api", "probe": "checkout"},
            }
        ],
    }

    async with serve(group_by=("service",)) as client:
        first = await client.post(URLS["alertmanager"], json=load_fixture(ALERTMANAGER_SINGLE))
        second = await client.post(URLS["generic"], json=generic)

    incident_id = assert_opened(first)
    assert second.status_code == 202
    assert second.json()["incident_id"] == incident_id
    assert second.json()["events"] == ["incident.updated"]
    incident = await stored(redis, incident_id)
    assert {a.fingerprint for a in incident.firing_alerts} == {"f5b1d9f3bf0ed0b8", "checkout-probe"}
    assert incident.severity is Severity.CRITICAL  # the alertmanager alert still leads
    assert len(await recent_incidents(redis)) == 1


async def test_group_by_still_lets_the_documented_generic_resolve_end_the_incident(
    serve: Serve, redis: Redis
) -> None:
    async with serve(group_by=("region",)) as client:
        opened = await client.post(URLS["generic"], json=load_fixture(GENERIC_FIRING))
        resolved = await client.post(URLS["generic"], json=load_fixture(GENERIC_RESOLVED))

    incident_id = assert_opened(opened)
    assert resolved.status_code == 202
    assert resolved.json()["incident_id"] == incident_id
    assert resolved.json()["events"] == ["incident.resolved"]
    assert (await stored(redis, incident_id)).status is IncidentStatus.RESOLVED


async def test_group_by_still_lets_pagerduty_acknowledge_and_resolve(
    serve: Serve, redis: Redis
) -> None:
    async with serve(pagerduty_routing_keys=(PD_KEY,), group_by=("component",)) as client:
        await client.post(URLS["pagerduty"], json=load_fixture(PD_TRIGGER))
        incident_id = (await incident_events(redis))[0].incident_id
        await client.post(URLS["pagerduty"], json=pd_event(PD_ACKNOWLEDGE))
        acknowledged = await stored(redis, incident_id)
        await client.post(URLS["pagerduty"], json=pd_event(PD_RESOLVE))

    assert acknowledged.status is IncidentStatus.IDENTIFIED
    assert (await stored(redis, incident_id)).status is IncidentStatus.RESOLVED


async def test_severity_map_for_every_source_makes_warning_critical(
    serve: Serve, redis: Redis
) -> None:
    payload = load_fixture(ALERTMANAGER_SINGLE)
    payload["alerts"][0]["labels"]["severity"] = "warning"

    async with serve(severity_map={"*": {"warning": "SEV1"}}) as client:
        response = await client.post(URLS["alertmanager"], json=payload)

    incident = await stored(redis, assert_opened(response))
    assert incident.severity is Severity.CRITICAL


async def test_severity_map_for_one_source_leaves_the_others_alone(
    serve: Serve, redis: Redis
) -> None:
    alertmanager = load_fixture(ALERTMANAGER_SINGLE)
    alertmanager["alerts"][0]["labels"]["severity"] = "warning"
    grafana = load_fixture(GRAFANA)
    for alert in grafana["alerts"]:
        alert["labels"]["severity"] = "warning"

    async with serve(severity_map={"grafana": {"warning": "SEV1"}}) as client:
        from_alertmanager = await client.post(URLS["alertmanager"], json=alertmanager)
        from_grafana = await client.post(URLS["grafana"], json=grafana)

    assert (await stored(redis, assert_opened(from_grafana))).severity is Severity.CRITICAL
    assert (await stored(redis, assert_opened(from_alertmanager))).severity is Severity.WARNING


async def test_severity_map_of_a_source_wins_over_the_one_for_every_source(
    serve: Serve, redis: Redis
) -> None:
    grafana = load_fixture(GRAFANA)
    for alert in grafana["alerts"]:
        alert["labels"]["severity"] = "warning"
    overrides = {"*": {"warning": "SEV1"}, "grafana": {"warning": "SEV4"}}

    async with serve(severity_map=overrides) as client:
        response = await client.post(URLS["grafana"], json=grafana)

    assert (await stored(redis, assert_opened(response))).severity is Severity.INFO


# --- /docs and /openapi.json ----------------------------------------------------------

OPERATOR_PATHS: Final = {
    "/v1/incidents": {"get"},
    "/v1/incidents/{incident_id}": {"get"},
    "/v1/incidents/{incident_id}/updates": {"post"},
    "/v1/incidents/{incident_id}/acknowledge": {"post"},
    "/v1/incidents/{incident_id}/resolve": {"post"},
}


async def test_openapi_lists_every_webhook_with_an_example_and_the_operator_api(
    serve: Serve,
) -> None:
    async with serve() as client:
        docs = await client.get("/docs")
        spec = (await client.get("/openapi.json")).json()

    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text
    paths = spec["paths"]
    for source, path in URLS.items():
        assert "post" in paths.get(path, {}), f"{path} ({source}) is not documented"
        content = paths[path]["post"]["requestBody"]["content"]["application/json"]
        examples = content.get("examples") or {}
        assert examples, f"{path} has no request example"
        assert all(isinstance(e.get("value"), dict) and e["value"] for e in examples.values())
        assert content["schema"].get("properties"), f"{path} has no body schema"
    for path, methods in OPERATOR_PATHS.items():
        assert methods <= set(paths.get(path, {})), f"{path} is not documented"
