from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.clock import ManualClock
from shared.contracts import IncidentStatus
from shared.incidents import load_incident
from shared.settings import Settings
from shared.streams import DISPATCHER_GROUP, INCIDENT_EVENTS, SCHEDULER_GROUP
from tests.conftest import load_fixture
from tests.support.asgi import running
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

URL = "/v1/alerts/alertmanager"
FIRING = "alertmanager_webhook_v4_firing.json"
RESOLVED = "alertmanager_webhook_v4_resolved.json"
T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
INGEST = "http://ingest.test"


@pytest.fixture
async def client(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings(), clock=ManualClock(T0)), INGEST) as client:
        yield client


def fields_of(response: httpx.Response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["fields"]]


async def test_firing_webhook_is_accepted_after_the_incident_is_stored(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    response = await client.post(URL, json=load_fixture(FIRING))

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    assert body["events"] == ["incident.opened"]
    assert body["duplicate"] is False
    incident = await load_incident(redis, body["incident_id"])
    assert incident is not None
    assert incident.status is IncidentStatus.INVESTIGATING
    assert incident.opened_at == T0
    assert [e.incident_id for e in await incident_events(redis)] == [body["incident_id"]]


async def test_consumer_groups_exist_before_anything_is_consumed(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    await client.post(URL, json=load_fixture(FIRING))

    groups = await redis.xinfo_groups(INCIDENT_EVENTS)

    by_name = {g["name"].decode(): g for g in groups}
    assert set(by_name) == {SCHEDULER_GROUP, DISPATCHER_GROUP}
    assert all(g["lag"] == 1 for g in by_name.values())  # the event waits for both services


async def test_duplicate_webhook_changes_nothing(client: httpx.AsyncClient, redis: Redis) -> None:
    first = (await client.post(URL, json=load_fixture(FIRING))).json()

    response = await client.post(URL, json=load_fixture(FIRING))

    assert response.status_code == 202
    assert response.json() == {
        "status": "accepted",
        "incident_id": first["incident_id"],
        "incident_ids": [first["incident_id"]],
        "events": [],
        "duplicate": True,
    }
    assert len(await incident_events(redis)) == 1


async def test_resolved_webhook_resolves_the_incident(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    opened = (await client.post(URL, json=load_fixture(FIRING))).json()

    response = await client.post(URL, json=load_fixture(RESOLVED))

    assert response.status_code == 202
    assert response.json()["events"] == ["incident.resolved"]
    assert response.json()["incident_id"] == opened["incident_id"]
    incident = await load_incident(redis, opened["incident_id"])
    assert incident is not None
    assert incident.status is IncidentStatus.RESOLVED
    assert [e.type for e in await incident_events(redis)] == [
        "incident.opened",
        "incident.resolved",
    ]


async def test_bad_field_gets_422_naming_it(client: httpx.AsyncClient, redis: Redis) -> None:
    payload = load_fixture(FIRING)
    payload["alerts"][0]["status"] = "bogus"

    response = await client.post(URL, json=payload)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_payload"
    assert fields_of(response) == ["alerts.0.status"]
    assert await incident_events(redis) == []


@pytest.mark.parametrize("version", ["3", None])
async def test_other_payload_versions_get_422_naming_version(
    client: httpx.AsyncClient, version: Any
) -> None:
    payload = load_fixture(FIRING)
    payload["version"] = version

    response = await client.post(URL, json=payload)

    assert response.status_code == 422
    assert fields_of(response) == ["version"]


async def test_missing_fields_are_named(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json={"version": "4"})

    assert response.status_code == 422
    assert set(fields_of(response)) >= {"groupKey", "status", "receiver", "alerts"}


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\x00garbage"])
async def test_malformed_json_gets_400_with_the_error_shape(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(URL, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"]


async def test_body_over_one_mebibyte_gets_413(client: httpx.AsyncClient, redis: Redis) -> None:
    payload = load_fixture(FIRING)
    payload["alerts"][0]["annotations"]["description"] = "x" * (1024 * 1024)

    response = await client.post(URL, content=json.dumps(payload).encode())

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await incident_events(redis) == []


async def test_body_over_the_limit_without_content_length_gets_413(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    response = await client.post(URL, content=chunks())

    assert response.status_code == 413


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}],
    ids=["missing", "wrong", "wrong-scheme"],
)
async def test_token_is_required_when_configured(
    redis: Redis, make_settings: Callable[..., Settings], headers: dict[str, str]
) -> None:
    app = create_app(make_settings(ingest_token="s3cret-token"))
    async with running(app, INGEST) as client:
        response = await client.post(URL, json=load_fixture(FIRING), headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert await incident_events(redis) == []


async def test_right_token_is_accepted(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(ingest_token="s3cret-token"))
    async with running(app, INGEST) as client:
        response = await client.post(
            URL, json=load_fixture(FIRING), headers={"Authorization": "Bearer s3cret-token"}
        )

    assert response.status_code == 202
    assert len(await incident_events(redis)) == 1


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok"}


async def test_unknown_route_gets_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_a_truncated_alertmanager_group_is_recorded_and_shown(
    client: httpx.AsyncClient,
) -> None:
    body = load_fixture(FIRING)
    body["truncatedAlerts"] = 3

    accepted = await client.post(URL, json=body)
    shown = await client.get(f"/v1/incidents/{accepted.json()['incident_id']}")

    assert accepted.status_code == 202
    assert shown.status_code == 200
    assert shown.json()["truncated_alerts"] == 3
