"""Ingest reads the communication plan: the promised next update, customer words, links,
and the post-mortem that closes the loop. Against a real Valkey, through the HTTP API."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.clock import ManualClock
from shared.contracts import IncidentPostmortemPublished, Severity
from shared.incidents import load_incident
from shared.plan import Plan
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.support.asgi import running
from tests.support.ingest_requests import bearer
from tests.support.plans import CADENCE, make_plan
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

T0: Final = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
INGEST: Final = "http://ingest.test"
AUTH: Final = bearer("ops")
FIRING: Final = "alertmanager_webhook_v4_firing.json"  # critical: SEV1
POSTMORTEM: Final = {
    "url": "https://status.example.com/postmortems/2026-11-23",
    "summary": "A configuration change overloaded the payment database.",
}


def firing(**annotations: str) -> dict[str, Any]:
    body = copy.deepcopy(load_fixture(FIRING))
    for alert in body["alerts"]:
        alert["annotations"].update(annotations)
    return body


def resolved_body() -> dict[str, Any]:
    body = copy.deepcopy(load_fixture(FIRING))
    body["status"] = "resolved"
    for alert in body["alerts"]:
        alert["status"] = "resolved"
        alert["endsAt"] = "2026-11-23T14:40:00Z"
    return body


async def test_every_open_event_promises_the_plans_next_update_and_resolution_none(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    clock = ManualClock(T0)
    app = create_app(make_settings(ops_token="ops"), clock=clock, plan=make_plan())
    async with running(app, INGEST) as client:
        opened = await client.post("/v1/alerts/alertmanager", json=firing())
        clock.advance(timedelta(minutes=7))
        incident_id = opened.json()["incident_id"]
        update = {"message": "We are rolling back a bad deploy."}
        await client.post(f"/v1/incidents/{incident_id}/updates", json=update, headers=AUTH)
        clock.advance(timedelta(minutes=2))
        await client.post("/v1/alerts/alertmanager", json=resolved_body())

    promises = [(e.type, e.next_update_at) for e in await incident_events(redis)]
    every = CADENCE[Severity.CRITICAL]
    assert every is not None
    assert promises == [
        ("incident.opened", T0 + every),
        ("incident.updated", T0 + timedelta(minutes=7) + every),  # counts from the update
        ("incident.resolved", None),
    ]


async def test_a_severity_without_cadence_promises_no_scheduled_update(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    plan: Plan = make_plan(cadence={**CADENCE, Severity.CRITICAL: None})
    app = create_app(make_settings(), clock=ManualClock(T0), plan=plan)
    async with running(app, INGEST) as client:
        response = await client.post("/v1/alerts/alertmanager", json=firing())

    assert response.status_code == 202, response.text
    (opened,) = await incident_events(redis)
    assert opened.next_update_at is None


async def test_customer_words_and_links_are_kept_from_the_annotations(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    body = firing(
        customer_summary="Checkout is failing for some customers",
        dashboard_url="https://grafana.example.org/d/checkout",
        panel_url="javascript:alert(1)",  # not a web link: never offered to readers
    )
    app = create_app(make_settings(), clock=ManualClock(T0), plan=make_plan())
    async with running(app, INGEST) as client:
        response = await client.post("/v1/alerts/alertmanager", json=body)

    incident = await load_incident(redis, response.json()["incident_id"])
    assert incident is not None
    assert incident.customer_title == "Checkout is failing for some customers"
    assert incident.title == "High 5xx error rate on checkout-api"  # internal words stay
    links = incident.alerts[0].links
    assert links["runbook"] == "https://runbooks.example.org/checkout/high-error-rate"
    assert links["dashboard"] == "https://grafana.example.org/d/checkout"
    assert links["generator"].startswith("http://prometheus.example.org:9090/graph")
    assert "panel" not in links


async def test_a_postmortem_follows_resolution_once_and_is_refused_while_open(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    clock = ManualClock(T0)
    app = create_app(make_settings(ops_token="ops"), clock=clock, plan=make_plan())
    async with running(app, INGEST) as client:
        opened = await client.post("/v1/alerts/alertmanager", json=firing())
        base = f"/v1/incidents/{opened.json()['incident_id']}"
        too_early = await client.post(f"{base}/postmortem", json=POSTMORTEM, headers=AUTH)
        await client.post(f"{base}/resolve", headers=AUTH)
        clock.advance(timedelta(days=2))
        published = await client.post(f"{base}/postmortem", json=POSTMORTEM, headers=AUTH)
        again = await client.post(f"{base}/postmortem", json=POSTMORTEM, headers=AUTH)
        not_a_url = await client.post(f"{base}/postmortem", json={"url": "soon"}, headers=AUTH)
        no_token = await client.post(f"{base}/postmortem", json=POSTMORTEM)

    assert too_early.status_code == 409
    assert too_early.json()["error"]["code"] == "incident_open"
    assert published.status_code == 200, published.text
    assert published.json()["events"] == ["incident.postmortem_published"]
    assert again.status_code == 200
    assert again.json()["events"] == []  # the same link again announces nothing
    assert not_a_url.status_code == 422
    assert no_token.status_code == 401
    events = await incident_events(redis)
    assert [e.type for e in events] == [
        "incident.opened",
        "incident.resolved",
        "incident.postmortem_published",
    ]
    last = events[-1]
    assert isinstance(last, IncidentPostmortemPublished)
    assert last.occurred_at == T0 + timedelta(days=2)
    assert last.next_update_at is None
    assert last.incident.postmortem_url == POSTMORTEM["url"]
    assert last.incident.postmortem_summary == POSTMORTEM["summary"]
