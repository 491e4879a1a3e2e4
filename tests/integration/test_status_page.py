"""The public status page over HTTP: what the status page channel posted, as HTML, JSON and
feeds, from a real dispatcher app over a real Valkey."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import httpx
import jsonschema
import pytest
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.status_page_store import StatusPageStore, StatusPageUpdate
from shared.clock import ManualClock
from shared.contracts import Incident, IncidentStatus, Severity
from shared.settings import Settings
from tests.support.asgi import running
from tests.support.builders import make_incident
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "services/dispatcher/status.schema.json").read_text()
)
PLAN = make_plan(
    organization="Example Shop",
    components=[
        {"name": "Checkout", "description": "Payments and orders.", "services": ["checkout-api"]},
        {"name": "Website"},
    ],
)


@pytest.fixture
async def client(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(), ManualClock(NOW), plan=PLAN)
    async with running(app, "http://status.test") as http:
        yield http


async def post(redis: Redis, incident: Incident, body: str, at: datetime, **update: Any) -> None:
    await StatusPageStore(redis).post(
        incident,
        StatusPageUpdate(
            id=f"{incident.id}-{at.isoformat()}",
            posted_at=at,
            state=incident.status,
            headline=incident.status.value.capitalize(),
            body=body,
            **update,
        ),
        title=f"Trouble: {incident.id}",
    )


def checkout_incident(**overrides: object) -> Incident:
    values: dict[str, object] = {
        "id": "inc-open",
        "service": "checkout-api",
        "severity": Severity.CRITICAL,
        "opened_at": NOW - timedelta(minutes=40),
    }
    return make_incident(**(values | overrides))


async def test_the_page_shows_components_incidents_timeline_and_next_update(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    incident = checkout_incident()
    await post(redis, incident, "We are looking into it.", NOW - timedelta(minutes=40))
    identified = incident.model_copy(
        update={"status": IncidentStatus.IDENTIFIED, "updated_at": NOW - timedelta(minutes=10)}
    )
    await post(
        redis,
        identified,
        "We found the cause: a **bad deploy**.",
        NOW - timedelta(minutes=10),
        next_update_at=NOW + timedelta(minutes=20),
    )

    page = await client.get("/status")

    assert page.status_code == 200
    text = page.text
    assert "Major outage" in text  # the banner, in words
    assert "Checkout" in text
    assert "Payments and orders." in text
    assert text.index("We found the cause") < text.index("We are looking into it.")  # newest first
    assert "<strong>bad deploy</strong>" in text
    assert "Identified" in text
    assert "Investigating" in text
    assert "Next scheduled update" in text
    assert "14:50 UTC, Mon 23 Nov 2026" in text
    assert 'datetime="2026-11-23T14:20:00+00:00"' in text  # the reader's zone is added from it
    assert 'href="/status/incidents/inc-open"' in text
    assert 'href="/status/subscribe"' in text

    summary = (await client.get("/status.json")).json()
    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(summary)
    statuses = {c["name"]: c["status"] for c in summary["components"]}
    assert statuses == {"Checkout": "major_outage", "Website": "operational"}
    assert summary["incidents"][0]["status"] == "identified"
    assert [u["body"] for u in summary["incidents"][0]["incident_updates"]] == [
        "We found the cause: a **bad deploy**.",
        "We are looking into it.",
    ]
    assert (await client.get("/status/api/v2/summary.json")).json() == summary
    overall = (await client.get("/status/api/v2/status.json")).json()
    assert overall["status"]["indicator"] == "critical"
    components = (await client.get("/status/api/v2/components.json")).json()
    assert [c["name"] for c in components["components"]] == ["Checkout", "Website"]
    assert (await client.get("/status.schema.json")).json() == SCHEMA


async def test_resolved_incidents_stay_in_the_history_with_their_postmortem(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    resolved = checkout_incident(
        id="inc-old",
        status=IncidentStatus.RESOLVED,
        opened_at=NOW - timedelta(days=3, hours=2),
        updated_at=NOW - timedelta(days=2),
        resolved_at=NOW - timedelta(days=3),
        postmortem_url="https://blog.example.com/postmortem-42",
        postmortem_summary="A config change took checkout down.",
    )
    await post(redis, resolved, "It is fixed.", NOW - timedelta(days=3))
    ancient = checkout_incident(
        id="inc-ancient",
        status=IncidentStatus.RESOLVED,
        opened_at=NOW - timedelta(days=120),
        resolved_at=NOW - timedelta(days=119),
    )
    await post(redis, ancient, "Fixed long ago.", NOW - timedelta(days=119))

    page = (await client.get("/status")).text

    assert "All systems operational" in page
    assert "Past incidents (last 90 days)" in page
    assert "Trouble: inc-old" in page
    assert "Trouble: inc-ancient" not in page
    assert 'href="https://blog.example.com/postmortem-42"' in page
    own = (await client.get("/status/incidents/inc-old")).text
    assert "A config change took checkout down." in own
    assert "It is fixed." in own
    history = (await client.get("/status/api/v2/incidents.json")).json()
    assert [i["id"] for i in history["incidents"]] == ["inc-old"]
    assert history["incidents"][0]["postmortem_url"] == "https://blog.example.com/postmortem-42"


async def test_feeds_validate_and_link_each_incident_page(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    await post(redis, checkout_incident(), "We are looking into it.", NOW - timedelta(minutes=5))

    atom = await client.get("/status/feed.atom")
    rss = await client.get("/status/feed.rss")

    assert atom.headers["content-type"].startswith("application/atom+xml")
    assert rss.headers["content-type"].startswith("application/rss+xml")
    for response, version in ((atom, "atom10"), (rss, "rss20")):
        parsed = feedparser.parse(response.content)
        assert parsed.bozo == 0, parsed.get("bozo_exception")
        assert parsed.version == version
        [entry] = parsed.entries
        assert entry.link == "http://status.test/status/incidents/inc-open"
        assert "We are looking into it." in entry.summary
    assert b'rel="self"' in atom.content


async def test_hostile_words_are_text_on_the_page_and_in_the_feeds(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    incident = checkout_incident(impact='<img src=x onerror="alert(1)">')
    await post(redis, incident, "<script>alert(2)</script>", NOW - timedelta(minutes=5))

    page = (await client.get("/status")).text
    feed = (await client.get("/status/feed.atom")).text

    assert "<img src=x" not in page
    assert "<script>alert(2)" not in page
    assert "&lt;img src=x" in page
    parsed = feedparser.parse(feed)
    assert "<script>" not in parsed.entries[0].summary
