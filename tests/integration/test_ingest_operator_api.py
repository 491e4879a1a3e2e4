"""The operator API of ingest (``/v1/incidents``), against a real Valkey.

Incidents are opened the way production opens them, through a webhook; the
operator then reads, updates, acknowledges and resolves them, and each change
must land in Redis with the incident event that announces it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import pytest
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.clock import ManualClock
from shared.contracts import IncidentStatus, IncidentUpdated, UpdateAuthor
from shared.incidents import load_incident
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.support.asgi import running
from tests.support.ingest_requests import REMOTE_CLIENT, basic, bearer, running_from
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

T0: Final = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
INGEST: Final = "http://ingest.test"
OPS: Final = "ops"
AUTH: Final = bearer(OPS)
ALERTMANAGER: Final = "alertmanager_webhook_v4_firing.json"
UNKNOWN_ID: Final = "0123456789abcdef0123456789abcdef"

UPDATE: Final[dict[str, Any]] = {
    "message": "We found a faulty configuration change and are rolling it back.",
    "status": "identified",
    "title": "Checkout errors after a configuration change",
    "impact": "Some customers cannot complete checkout.",
    "components": ["checkout", "payments"],
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def client(
    redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with ``CLARION_OPS_TOKEN=ops`` (webhooks stay loopback-only)."""
    async with running(create_app(make_settings(ops_token=OPS), clock=clock), INGEST) as http:
        yield http


async def open_incident(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/alerts/alertmanager", json=load_fixture(ALERTMANAGER))
    assert response.status_code == 202, response.text
    assert response.json()["events"] == ["incident.opened"]
    incident_id: str = response.json()["incident_id"]
    return incident_id


def fields_of(response: httpx.Response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["fields"]]


async def stored_status(redis: Redis, incident_id: str) -> IncidentStatus:
    incident = await load_incident(redis, incident_id)
    assert incident is not None
    return incident.status


# --- Who may call it ------------------------------------------------------------------


async def test_every_route_needs_the_ops_token(client: httpx.AsyncClient, redis: Redis) -> None:
    incident_id = await open_incident(client)
    calls = [
        ("GET", "/v1/incidents"),
        ("GET", f"/v1/incidents/{incident_id}"),
        ("POST", f"/v1/incidents/{incident_id}/updates"),
        ("POST", f"/v1/incidents/{incident_id}/acknowledge"),
        ("POST", f"/v1/incidents/{incident_id}/resolve"),
        ("GET", "/v1/rejections"),
    ]
    refused = [{}, bearer("not-ops"), basic("ops", "ops"), {"Authorization": OPS}]

    for method, path in calls:
        for headers in refused:
            body = {"message": "hello"} if path.endswith("/updates") else None
            response = await client.request(method, path, headers=headers, json=body)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"

    assert await stored_status(redis, incident_id) is IncidentStatus.INVESTIGATING
    assert len(await incident_events(redis)) == 1


async def test_without_an_ops_token_loopback_is_served_and_remote_refused(
    redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    settings = make_settings()
    async with running(create_app(settings, clock=clock), INGEST) as local:
        incident_id = await open_incident(local)
        assert (await local.get("/v1/incidents")).status_code == 200
        assert (await local.get("/v1/rejections")).status_code == 200

    async with running_from(create_app(settings, clock=clock), INGEST, REMOTE_CLIENT) as remote:
        answers = [
            await remote.get("/v1/incidents"),
            await remote.get(f"/v1/incidents/{incident_id}"),
            await remote.post(f"/v1/incidents/{incident_id}/acknowledge"),
            await remote.post(f"/v1/incidents/{incident_id}/resolve"),
            await remote.get("/v1/rejections"),
        ]

    assert [a.status_code for a in answers] == [403] * len(answers)
    assert {a.json()["error"]["code"] for a in answers} == {"forbidden"}
    assert await stored_status(redis, incident_id) is IncidentStatus.INVESTIGATING


# --- Reading --------------------------------------------------------------------------


async def test_list_and_detail_show_the_incident(client: httpx.AsyncClient) -> None:
    incident_id = await open_incident(client)

    listed = await client.get("/v1/incidents", headers=AUTH)
    detail = await client.get(f"/v1/incidents/{incident_id}", headers=AUTH)
    only_open = await client.get("/v1/incidents", params={"status": "open"}, headers=AUTH)
    only_resolved = await client.get("/v1/incidents", params={"status": "resolved"}, headers=AUTH)

    assert listed.status_code == 200
    assert [i["id"] for i in listed.json()["incidents"]] == [incident_id]
    assert [i["id"] for i in only_open.json()["incidents"]] == [incident_id]
    assert only_resolved.json()["incidents"] == []
    assert detail.status_code == 200
    incident = detail.json()
    assert incident["id"] == incident_id
    assert incident["status"] == "investigating"
    assert incident["severity"] == "critical"
    assert incident["sev"] == "SEV1"
    assert incident["title"] == "High 5xx error rate on checkout-api"
    assert len(incident["alerts"]) == 2
    assert [entry["status"] for entry in incident["timeline"]] == ["investigating"]
    assert listed.json()["incidents"][0] == incident


async def test_list_is_newest_first_and_limited(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    first = await open_incident(client)
    clock.advance(timedelta(minutes=1))
    other = load_fixture(ALERTMANAGER)
    other["groupKey"] = '{}:{alertname="DiskFull"}'
    second = (await client.post("/v1/alerts/alertmanager", json=other)).json()["incident_id"]

    everything = await client.get("/v1/incidents", headers=AUTH)
    newest = await client.get("/v1/incidents", params={"limit": 1}, headers=AUTH)

    assert [i["id"] for i in everything.json()["incidents"]] == [second, first]
    assert [i["id"] for i in newest.json()["incidents"]] == [second]


@pytest.mark.parametrize("method", ["GET", "POST-updates", "POST-acknowledge", "POST-resolve"])
async def test_unknown_incident_gets_404(client: httpx.AsyncClient, method: str) -> None:
    if method == "GET":
        response = await client.get(f"/v1/incidents/{UNKNOWN_ID}", headers=AUTH)
    else:
        action = method.removeprefix("POST-")
        body = {"message": "hello"} if action == "updates" else None
        response = await client.post(
            f"/v1/incidents/{UNKNOWN_ID}/{action}", json=body, headers=AUTH
        )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- Changing -------------------------------------------------------------------------


async def test_update_changes_the_incident_and_publishes_the_operators_words(
    client: httpx.AsyncClient, redis: Redis, clock: ManualClock
) -> None:
    incident_id = await open_incident(client)
    clock.advance(timedelta(minutes=3))

    response = await client.post(f"/v1/incidents/{incident_id}/updates", json=UPDATE, headers=AUTH)

    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["events"] == ["incident.updated"]
    view = answer["incident"]
    assert view["status"] == "identified"
    assert view["title"] == UPDATE["title"]
    assert view["impact"] == UPDATE["impact"]
    assert view["components"] == UPDATE["components"]
    assert view["sev"] == "SEV1"
    assert view["timeline"][-1]["message"] == UPDATE["message"]
    assert view["timeline"][-1]["author"] == "operator"

    stored = await load_incident(redis, incident_id)
    assert stored is not None
    assert stored.status is IncidentStatus.IDENTIFIED
    assert stored.title == UPDATE["title"]
    assert stored.components == ("checkout", "payments")
    assert stored.updated_at == T0 + timedelta(minutes=3)

    events = await incident_events(redis)
    assert [e.type for e in events] == ["incident.opened", "incident.updated"]
    update = events[-1]
    assert isinstance(update, IncidentUpdated)
    assert update.author is UpdateAuthor.OPERATOR
    assert update.message == UPDATE["message"]
    assert update.incident.title == UPDATE["title"]
    assert update.occurred_at == T0 + timedelta(minutes=3)


async def test_the_operators_headline_survives_alerts_that_arrive_later(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    incident_id = await open_incident(client)
    await client.post(f"/v1/incidents/{incident_id}/updates", json=UPDATE, headers=AUTH)
    later = load_fixture(ALERTMANAGER)
    later["alerts"][0].update(
        fingerprint="0a1b2c3d4e5f6a7b",
        labels={**later["alerts"][0]["labels"], "instance": "checkout-3:8080"},
        annotations={"summary": "Checkout-3 is down too", "impact": "Everything is on fire."},
    )

    response = await client.post("/v1/alerts/alertmanager", json=later)

    assert response.status_code == 202
    assert response.json()["incident_id"] == incident_id
    assert response.json()["events"] == ["incident.updated"]  # one more instance affected
    stored = await load_incident(redis, incident_id)
    assert stored is not None
    assert (stored.title, stored.impact) == (UPDATE["title"], UPDATE["impact"])
    assert stored.status is IncidentStatus.IDENTIFIED
    assert len(stored.firing_alerts) == 3


async def test_an_update_with_status_resolved_resolves(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    incident_id = await open_incident(client)

    response = await client.post(
        f"/v1/incidents/{incident_id}/updates",
        json={"message": "The fix is deployed.", "status": "resolved"},
        headers=AUTH,
    )

    assert response.status_code == 201
    assert response.json()["events"] == ["incident.resolved"]
    assert await stored_status(redis, incident_id) is IncidentStatus.RESOLVED


async def test_acknowledge_identifies_once_and_a_repeat_changes_nothing(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    incident_id = await open_incident(client)
    url = f"/v1/incidents/{incident_id}/acknowledge"

    first = await client.post(url, json={"by": "alice"}, headers=AUTH)
    repeat = await client.post(url, headers=AUTH)

    assert first.status_code == 200, first.text
    assert first.json()["events"] == ["incident.updated"]
    assert first.json()["incident"]["status"] == "identified"
    assert repeat.status_code == 200
    assert repeat.json()["events"] == []
    assert repeat.json()["incident"]["status"] == "identified"
    stored = await load_incident(redis, incident_id)
    assert stored is not None
    assert stored.status is IncidentStatus.IDENTIFIED
    assert stored.acknowledged_by == "alice"
    assert stored.acknowledged_at == T0
    events = await incident_events(redis)
    assert [e.type for e in events] == ["incident.opened", "incident.updated"]
    assert isinstance(events[-1], IncidentUpdated)
    assert events[-1].author is UpdateAuthor.OPERATOR


async def test_resolve_closes_the_incident_for_good(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    incident_id = await open_incident(client)
    base = f"/v1/incidents/{incident_id}"

    resolved = await client.post(
        f"{base}/resolve", json={"message": "Rolled back; errors are gone."}, headers=AUTH
    )
    afterwards = [
        await client.post(f"{base}/updates", json={"message": "One more thing"}, headers=AUTH),
        await client.post(f"{base}/acknowledge", headers=AUTH),
        await client.post(f"{base}/resolve", headers=AUTH),
    ]
    still_readable = await client.get(base, headers=AUTH)

    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["events"] == ["incident.resolved"]
    assert resolved.json()["incident"]["status"] == "resolved"
    assert resolved.json()["incident"]["resolved_at"] == "2026-11-23T14:31:00Z"
    assert [a.status_code for a in afterwards] == [409, 409, 409]
    assert {a.json()["error"]["code"] for a in afterwards} == {"incident_resolved"}
    assert still_readable.json()["status"] == "resolved"
    assert await stored_status(redis, incident_id) is IncidentStatus.RESOLVED
    assert [e.type for e in await incident_events(redis)] == [
        "incident.opened",
        "incident.resolved",
    ]


async def test_resolve_without_a_body_is_accepted(client: httpx.AsyncClient, redis: Redis) -> None:
    incident_id = await open_incident(client)

    response = await client.post(f"/v1/incidents/{incident_id}/resolve", headers=AUTH)

    assert response.status_code == 200, response.text
    assert response.json()["events"] == ["incident.resolved"]
    assert await stored_status(redis, incident_id) is IncidentStatus.RESOLVED


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"status": "identified"}, "message"),
        ({"message": "ok", "status": "fixed"}, "status"),
        ({"message": "ok", "severity": "SEV1"}, "severity"),
    ],
    ids=["empty-message", "no-message", "unknown-status", "unknown-field"],
)
async def test_invalid_update_gets_422_naming_the_field(
    client: httpx.AsyncClient, redis: Redis, body: dict[str, Any], field: str
) -> None:
    incident_id = await open_incident(client)

    response = await client.post(f"/v1/incidents/{incident_id}/updates", json=body, headers=AUTH)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_payload"
    assert field in fields_of(response)
    assert len(await incident_events(redis)) == 1
