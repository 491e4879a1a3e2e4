"""Two ingest processes taking one alert group at once never split or double its incident."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from shared.contracts import IncidentOpened
from shared.incidents import load_incident
from tests.support.alert_bodies import alertmanager_body
from tests.support.processes import ServiceProcess, free_port
from tests.support.streams import incident_events

pytestmark = pytest.mark.e2e

POSTS = 40


def ingest_instance(redis_url: str, log_dir: Path, name: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env = {
        **base,
        "CLARION_REDIS_URL": redis_url,
        "CLARION_INGEST_PORT": str(port),
        "CLARION_LOG_FORMAT": "json",
        "CLARION_INGEST_RATE_LIMIT": "1000/second",
        "PYTHONUNBUFFERED": "1",
    }
    process = ServiceProcess("ingest", env, log_dir / name, f"{url}/readyz")
    (log_dir / name).mkdir()
    return process, url


async def test_two_ingest_processes_keep_one_incident_per_group(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    instances = [ingest_instance(redis_url, tmp_path, f"ingest-{n}") for n in (1, 2)]
    for process, _ in instances:
        process.start()
    try:
        for process, _ in instances:
            process.wait_ready()
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{instances[i % 2][1]}/v1/alerts/alertmanager", json=alertmanager_body(i)
                    )
                    for i in range(POSTS)
                )
            )
    finally:
        for process, _ in instances:
            process.stop()

    assert [r.status_code for r in responses] == [202] * POSTS, [r.text for r in responses]
    incident_ids = {r.json()["incident_id"] for r in responses}
    assert len(incident_ids) == 1
    incident = await load_incident(redis, incident_ids.pop())
    assert incident is not None
    assert len(incident.firing_alerts) == POSTS
    events = await incident_events(redis)
    assert sum(isinstance(e, IncidentOpened) for e in events) == 1
    assert len({e.event_id for e in events}) == len(events)
