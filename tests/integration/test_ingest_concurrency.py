"""Many writers on one alert group, in one process: one incident, every alert in it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.clock import ManualClock
from shared.contracts import IncidentOpened
from shared.incidents import load_incident
from shared.settings import Settings
from tests.support.alert_bodies import alertmanager_body
from tests.support.asgi import running
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

WRITERS = 25


async def test_concurrent_posts_to_one_group_open_exactly_one_incident(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(), clock=ManualClock(datetime(2026, 11, 23, 14, 0, tzinfo=UTC)))
    async with running(app, "http://ingest.test") as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/alerts/alertmanager", json=alertmanager_body(i))
                for i in range(WRITERS)
            )
        )

    assert [r.status_code for r in responses] == [202] * WRITERS
    incident_ids = {r.json()["incident_id"] for r in responses}
    assert len(incident_ids) == 1
    incident = await load_incident(redis, incident_ids.pop())
    assert incident is not None
    assert {a.fingerprint for a in incident.firing_alerts} == {f"fp{i:04d}" for i in range(WRITERS)}
    events = await incident_events(redis)
    assert sum(isinstance(e, IncidentOpened) for e in events) == 1
    # Every accepted change is one revision, announced once.
    assert sorted({e.incident.revision for e in events}) == list(range(1, len(events) + 1))
