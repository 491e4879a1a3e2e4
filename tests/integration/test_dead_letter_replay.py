"""Dead letters through the real dispatcher app: retries run out, ops replay over HTTP.

The dispatcher app runs in process with its lifespan (consumers on real Valkey),
against a local server answering like Mastodon and a Slack incoming webhook.
The test plays the scheduler's part for retries (the retry timer, on a manual
clock), so a delivery that keeps getting 503 reaches dead letters without any
wait on time. Replaying must send again under the same idempotency key, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any, Final

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.fanout import delivery_id_for, idempotency_key
from services.scheduler.retry_due import retry_firer, retry_schedule
from shared.clock import ManualClock
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.plan import Plan
from shared.redis_values import as_text
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, delivery_state_key, delivery_stream
from tests.conftest import load_fixture
from tests.support.asgi import running
from tests.support.builders import T0, make_incident_opened
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TOKEN: Final = "ops-token-for-dead-letters"
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}
MASTODON_TOKEN: Final = "mastodon-token-5ecret"
STATUSES: Final = "/api/v1/statuses"
SLACK_HOOK: Final = "/services/T0001/B0001/hook-secret-path"
STATUS_ENTITY: Final = load_fixture("outbound/mastodon_status_entity_200.json")
OPENED = make_incident_opened(event_id="ev-dead", occurred_at=T0)


def plan_for(provider: FakeProvider) -> Plan:
    return make_plan(
        audiences={
            "customers": {
                "public": True,
                "mastodon": [{"instance": provider.url, "access_token_env": "MASTODON_TOKEN"}],
            },
            "team": {"slack": [{"name": "ops", "url_env": "SLACK_WEBHOOK_URL"}]},
        },
        routes=[{"name": "everyone", "audiences": ["customers", "team"]}],
    )


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """Mastodon and Slack, both down (503) until a test says they recovered."""
    with FakeProvider() as fake:
        fake.answer("POST", STATUSES, 503, json={"error": "Service Unavailable"})
        fake.answer("POST", SLACK_HOOK, 503, body="service_unavailable")
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def client(
    redis: Redis,
    make_settings: Callable[..., Settings],
    provider: FakeProvider,
    clock: ManualClock,
) -> AsyncIterator[httpx.AsyncClient]:
    """The dispatcher app, two attempts per delivery, ops API behind a token."""
    settings = make_settings(
        ops_token=TOKEN,
        delivery_max_attempts=2,
        rate_limits=(),
        consumer_name="dispatcher-dead-letters",
        polling_interval_ms=1000,  # see test_dispatcher_slow_provider.py
        idempotency_lease_ms=60_000,  # nothing here is reclaimed: every send returns
        reclaim_idle_ms=60_000,
    )
    environ = {"MASTODON_TOKEN": MASTODON_TOKEN, "SLACK_WEBHOOK_URL": provider.url + SLACK_HOOK}
    app = create_app(settings, clock, plan=plan_for(provider), environ=environ)
    async with running(app, "http://dispatcher") as http:
        yield http


def mastodon_id(provider: FakeProvider) -> str:
    return delivery_id_for(idempotency_key(OPENED.event_id, "mastodon", f"mastodon:{provider.url}"))


SLACK_ID: Final = delivery_id_for(idempotency_key(OPENED.event_id, "slack", "ops"))


async def log_of(redis: Redis) -> list[DeliveryRecorded]:
    return list(reversed(await DeliveryLog(redis).recent(limit=1000)))


async def wait_for_status(
    redis: Redis, delivery_ids: set[str], status: DeliveryStatus
) -> list[DeliveryRecorded]:
    """Wait until every one of ``delivery_ids`` has a ``status`` record; returns the log."""

    async def reached() -> list[DeliveryRecorded] | None:
        records = await log_of(redis)
        have = {r.delivery_id for r in records if r.status is status}
        return records if delivery_ids <= have else None

    return await eventually(reached, within=20.0, what=f"{status.value} for {delivery_ids}")


async def state_of(redis: Redis, delivery_id: str) -> str:
    value = await redis.hget(delivery_state_key(delivery_id), "state")
    return "" if value is None else as_text(value)


async def run_to_dead_letters(
    redis: Redis, redis_url: str, clock: ManualClock, delivery_ids: set[str]
) -> list[DeliveryRecorded]:
    """Publish the event; attempt 1 fails, the retry timer fires, attempt 2 fails: dead."""
    async with RedisBroker(redis_url) as broker:
        await broker.publish(OPENED, stream=INCIDENT_EVENTS)
    await wait_for_status(redis, delivery_ids, DeliveryStatus.RETRYING)
    clock.advance(timedelta(minutes=1))  # past the first backoff (5 s at most)
    firer = retry_firer(retry_schedule(redis), redis, clock, timedelta(seconds=30))
    assert await firer.run_once() == len(delivery_ids)
    return await wait_for_status(redis, delivery_ids, DeliveryStatus.DEAD)


def history(records: list[DeliveryRecorded], delivery_id: str) -> list[tuple[str, int]]:
    return [(r.status.value, r.attempt) for r in records if r.delivery_id == delivery_id]


async def dead_letters(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/dead-letters", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    letters: list[dict[str, Any]] = response.json()
    return letters


async def test_a_dead_delivery_is_replayed_once_under_the_same_idempotency_key(
    client: httpx.AsyncClient,
    redis: Redis,
    redis_url: str,
    provider: FakeProvider,
    clock: ManualClock,
) -> None:
    delivery_id = mastodon_id(provider)
    records = await run_to_dead_letters(redis, redis_url, clock, {delivery_id, SLACK_ID})

    assert history(records, delivery_id) == [("retrying", 1), ("dead", 2)]
    [dead] = [r for r in records if r.delivery_id == delivery_id and r.status.value == "dead"]
    assert "503" in (dead.error or "")
    assert "clarion dead-letters replay" in (dead.error or "")
    assert await state_of(redis, delivery_id) == "dead"
    assert len(provider.requests_to("POST", STATUSES)) == 2

    # The ops API is behind the token.
    refused = await client.get("/v1/dead-letters")
    assert refused.status_code == 401
    letters = await dead_letters(client, kind="delivery", channel="mastodon")
    [letter] = letters
    assert letter["kind"] == "delivery"
    assert letter["reason"] == "retries_exhausted"
    assert letter["delivery_id"] == delivery_id
    assert letter["incident_id"] == OPENED.incident_id
    assert letter["event_id"] == OPENED.event_id
    assert letter["attempt"] == 2
    assert letter["replayed_at"] is None
    assert "503" in letter["error"]
    assert MASTODON_TOKEN not in str(letters)

    not_allowed = await client.post(f"/v1/dead-letters/{letter['id']}/replay")
    assert not_allowed.status_code == 401
    assert await state_of(redis, delivery_id) == "dead"

    provider.answer("POST", STATUSES, 200, json=STATUS_ENTITY)  # Mastodon is back
    replayed = await client.post(
        f"/v1/dead-letters/{letter['id']}/replay", json={"by": "alice"}, headers=AUTH
    )
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["status"] == "replayed"
    assert "attempt 3" in replayed.json()["detail"]

    records = await wait_for_status(redis, {delivery_id}, DeliveryStatus.SENT)
    assert history(records, delivery_id) == [
        ("retrying", 1),
        ("dead", 2),
        ("queued", 3),
        ("sent", 3),
    ]
    [queued] = [r for r in records if r.delivery_id == delivery_id and r.status.value == "queued"]
    assert queued.note == "replayed from dead letters by alice"
    [sent] = [r for r in records if r.delivery_id == delivery_id and r.status.value == "sent"]
    assert sent.provider_message_id == STATUS_ENTITY["id"]
    posts = provider.requests_to("POST", STATUSES)
    assert len(posts) == 3
    assert {p.headers["idempotency-key"] for p in posts} == {delivery_id}
    assert posts[2].form() == posts[0].form()  # the same words, rendered once
    assert await state_of(redis, delivery_id) == "done"

    # The same dead letter again: refused, and nothing is queued or sent.
    jobs_before = await redis.xlen(delivery_stream("mastodon"))
    again = await client.post(f"/v1/dead-letters/{letter['id']}/replay", headers=AUTH)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_replayed"
    assert await redis.xlen(delivery_stream("mastodon")) == jobs_before
    assert len(provider.requests_to("POST", STATUSES)) == 3
    [listed] = await dead_letters(client, channel="mastodon")
    assert listed["replayed_at"] is not None
    # Slack's dead letter is untouched: still pending replay.
    assert [d["delivery_id"] for d in await dead_letters(client, include_replayed=False)] == [
        SLACK_ID
    ]
    assert (await client.post("/v1/dead-letters/0-1/replay", headers=AUTH)).status_code == 404


async def test_replay_all_and_a_double_click_send_each_dead_delivery_once(
    client: httpx.AsyncClient,
    redis: Redis,
    redis_url: str,
    provider: FakeProvider,
    clock: ManualClock,
) -> None:
    delivery_id = mastodon_id(provider)
    await run_to_dead_letters(redis, redis_url, clock, {delivery_id, SLACK_ID})
    provider.answer("POST", STATUSES, 200, json=STATUS_ENTITY)
    provider.answer("POST", SLACK_HOOK, 200, body="ok")
    [slack_letter] = await dead_letters(client, channel="slack")

    # Two operators replay the Slack dead letter at the same moment.
    answers = await asyncio.gather(
        client.post(f"/v1/dead-letters/{slack_letter['id']}/replay", headers=AUTH),
        client.post(f"/v1/dead-letters/{slack_letter['id']}/replay", headers=AUTH),
    )
    assert sorted(a.status_code for a in answers) == [202, 409]

    summary = await client.post("/v1/dead-letters/replay", json={"by": "bob"}, headers=AUTH)
    assert summary.status_code == 200, summary.text
    assert summary.json() == {
        "considered": 1,  # the Slack one was replayed just before
        "replayed": 1,
        "already_replayed": 0,
        "not_dead": 0,
    }

    records = await wait_for_status(redis, {delivery_id, SLACK_ID}, DeliveryStatus.SENT)
    assert history(records, SLACK_ID)[-2:] == [("queued", 3), ("sent", 3)]
    assert history(records, delivery_id)[-2:] == [("queued", 3), ("sent", 3)]
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 3
    assert len(provider.requests_to("POST", STATUSES)) == 3
    nothing_left = await client.post("/v1/dead-letters/replay", headers=AUTH)
    assert nothing_left.json()["considered"] == 0
    assert await dead_letters(client, include_replayed=False) == []
