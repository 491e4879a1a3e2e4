"""The dispatcher app: consumers wired to the broker, status page and ops API over HTTP."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.scheduler.retry_due import retry_firer, retry_schedule
from shared.clock import ManualClock
from shared.contracts import IncidentOpened, Severity
from shared.plan import PlanError
from shared.settings import Settings
from shared.streams import DELIVERY_LOG, INCIDENT_EVENTS
from tests.support.asgi import running
from tests.support.builders import make_incident, make_incident_opened
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer
from tests.support.streams import wait_for_entries

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
TOKEN = "ops-secret-token"
ALICE = "alice@example.com"


INCIDENT = make_incident(id="inc-42", severity=Severity.ERROR, opened_at=NOW - timedelta(minutes=5))
CUSTOMER_TITLE = "A partial outage"  # the plan's words for SEV2: customers never read alert titles
PLAN = make_plan(
    emails=(ALICE,),
    organization="Example Shop",
    timezones=["UTC", "Europe/Berlin"],
    status_page_url="https://status.example.com",
)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], smtp_server: SmtpServer) -> Settings:
    return make_settings(
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        ops_token=TOKEN,
    )


@pytest.fixture
async def client(redis: Redis, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, ManualClock(NOW), plan=PLAN)
    async with running(app, "http://dispatcher") as http:
        yield http


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def publish_opened(redis_url: str) -> IncidentOpened:
    event = make_incident_opened(
        INCIDENT,
        event_id="ev-published",
        occurred_at=NOW,
        next_update_at=NOW + timedelta(hours=1),
    )
    async with RedisBroker(redis_url) as broker:
        await broker.publish(event, stream=INCIDENT_EVENTS)
    return event


async def test_published_event_is_consumed_emailed_logged_and_shown(
    client: httpx.AsyncClient, redis: Redis, redis_url: str, smtp_server: SmtpServer
) -> None:
    await publish_opened(redis_url)

    [message] = await asyncio.to_thread(
        smtp_server.mailbox.wait_for, lambda messages: len(messages) >= 1
    )
    assert message["Subject"] == f"Investigating: {CUSTOMER_TITLE}"
    assert message["Message-ID"]
    await wait_for_entries(redis, DELIVERY_LOG, 2, within=20.0)  # email, status page post

    page = await client.get("/status")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Example Shop status" in page.text  # the plan's organization
    assert CUSTOMER_TITLE in page.text
    assert "Checkout is failing" not in page.text
    assert "Customers cannot place orders." in page.text
    assert "Investigating" in page.text  # the status in words, not only a colour
    assert 'href="/status/incidents/inc-42"' in page.text  # its own page
    assert "14:30 UTC, Mon 23 Nov 2026 (15:30 CET)" in page.text  # the plan's zones
    # The update's Markdown body, as HTML.
    assert "<strong>Next update by 15:30 UTC, Mon 23 Nov 2026 (16:30 CET)" in page.text
    assert "<em>Posted 14:30 UTC" in page.text
    assert "**" not in page.text
    assert "All systems operational" not in page.text

    document = (await client.get("/status.json")).json()
    assert document["status"] == {"indicator": "major", "description": "Partial outage"}
    assert document["page"]["name"] == "Example Shop"
    assert [i["id"] for i in document["incidents"]] == ["inc-42"]
    assert document["incidents"][0]["name"] == CUSTOMER_TITLE
    assert document["incidents"][0]["shortlink"] == "http://dispatcher/status/incidents/inc-42"
    assert document["incidents"][0]["next_update_at"] == "2026-11-23T15:30:00Z"

    own_page = await client.get("/status/incidents/inc-42")
    assert own_page.status_code == 200
    assert CUSTOMER_TITLE in own_page.text
    assert "Customers cannot place orders." in own_page.text

    deliveries = await client.get("/v1/deliveries", headers=auth())
    assert deliveries.status_code == 200
    records = deliveries.json()["deliveries"]
    assert {(r["channel"], r["recipient"], r["status"], r["audience"]) for r in records} == {
        ("email", "a***@example.com", "sent", "customers"),
        ("status_page", "status-page", "sent", "customers"),
    }
    assert ALICE not in deliveries.text
    assert records[0]["recorded_at"] >= records[1]["recorded_at"]

    filtered = await client.get(
        "/v1/deliveries", params={"incident_id": "other", "limit": 5}, headers=auth()
    )
    assert filtered.json()["deliveries"] == []
    limited = await client.get("/v1/deliveries", params={"limit": 1}, headers=auth())
    assert len(limited.json()["deliveries"]) == 1


async def test_temporary_smtp_failure_is_retried_when_the_scheduler_says_it_is_due(
    client: httpx.AsyncClient, redis: Redis, redis_url: str, smtp_server: SmtpServer
) -> None:
    held, release = smtp_server.hold_next()  # the first DATA is held, then refused with 451
    await publish_opened(redis_url)
    assert await asyncio.to_thread(held.wait, 20.0)
    release.set()
    await wait_for_entries(redis, DELIVERY_LOG, 2, within=20.0)  # retrying + status page
    assert smtp_server.mailbox.messages == []  # nothing resent before it is due

    # The scheduler's retry timer, an hour later: the job goes back on the email stream.
    later = ManualClock(NOW + timedelta(hours=1))
    assert await retry_firer(retry_schedule(redis), redis, later, timedelta(seconds=30)).run_once()
    [message] = await asyncio.to_thread(
        smtp_server.mailbox.wait_for, lambda messages: len(messages) >= 1
    )
    await wait_for_entries(redis, DELIVERY_LOG, 3, within=20.0)

    assert message["Subject"] == f"Investigating: {CUSTOMER_TITLE}"
    response = await client.get("/v1/deliveries", params={"incident_id": "inc-42"}, headers=auth())
    records = response.json()["deliveries"]
    emails = [(r["status"], r["attempt"]) for r in records if r["channel"] == "email"]
    assert emails == [("sent", 2), ("retrying", 1)]
    retrying = next(r for r in records if r["status"] == "retrying")
    assert retrying["next_attempt_at"] > NOW.isoformat()


async def test_nothing_open_shows_all_systems_operational(client: httpx.AsyncClient) -> None:
    page = await client.get("/status")

    assert page.status_code == 200
    assert "All systems operational" in page.text
    assert (await client.get("/status.json")).json()["status"]["indicator"] == "none"
    missing = await client.get("/status/incidents/no-such-incident")
    assert missing.status_code == 404
    assert "no incident at this address" in missing.text


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
async def test_ops_endpoints_need_the_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for path in ("/v1/deliveries", "/v1/dead-letters", "/v1/approvals"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    approve = await client.post("/v1/approvals/ev-1/approve", headers=headers)
    assert approve.status_code == 401
    assert (await client.get("/status")).status_code == 200


@pytest.mark.parametrize("limit", ["0", "1001", "many"])
async def test_deliveries_limit_is_validated(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/v1/deliveries", params={"limit": limit}, headers=auth())

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_payload"
    assert [f["field"] for f in error["fields"]] == ["query.limit"]


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_without_ops_token_ops_endpoints_answer_loopback_clients(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(ops_token=None), ManualClock(NOW))  # the default plan
    async with running(app, "http://dispatcher") as http:
        response = await http.get("/v1/deliveries")
        approvals = await http.get("/v1/approvals")
    assert response.status_code == 200
    assert response.json()["deliveries"] == []
    assert approvals.status_code == 200
    assert approvals.json() == []


async def test_a_service_process_hands_what_start_up_built_to_the_frozen_generation(
    redis: Redis, settings: Settings
) -> None:
    frozen_before = gc.get_freeze_count()
    app = create_app(settings, ManualClock(NOW), plan=PLAN, freeze_after_start=True)
    try:
        async with running(app, "http://dispatcher") as http:
            assert (await http.get("/readyz")).status_code == 200
            assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()  # the test process collects as before


async def test_a_vanished_consumer_group_makes_the_dispatcher_ask_for_a_restart(
    redis: Redis, settings: Settings
) -> None:
    fatal = asyncio.Event()
    reasons: list[str] = []

    def on_fatal(reason: str) -> None:
        reasons.append(reason)
        fatal.set()

    app = create_app(settings, ManualClock(NOW), on_fatal=on_fatal, plan=PLAN)
    async with running(app, "http://dispatcher") as http:
        assert (await http.get("/readyz")).status_code == 200
        await redis.flushdb()  # as after a Redis restart without persistence

        await asyncio.wait_for(fatal.wait(), timeout=15)
        assert INCIDENT_EVENTS in reasons[0]
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        assert "not consuming" in not_ready.json()["error"]["message"]


def test_an_invalid_plan_fails_at_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nroutes:\n  - audiences: [nobody]\n", encoding="utf-8")

    with pytest.raises(PlanError, match="unknown audience 'nobody'"):
        create_app(make_settings(plan=plan), ManualClock(NOW))
