"""The dispatcher process killed between a provider's send and its own record.

The dispatcher runs as a real process (``python -m services.dispatcher``) with a
short lease and reclaim time. Both providers hold their answer to the first post
until the test has SIGKILLed the process: each provider got the post, the
dispatcher never learnt so. After a restart the reclaimed jobs are sent again:

* Mastodon drops a repeated ``Idempotency-Key`` (as the real one does, answering
  with the status it already made): exactly one post;
* a Slack incoming webhook takes no key: at most one extra post, and the delivery
  log says so (``possible_duplicate`` and a note).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.fanout import delivery_id_for, idempotency_key
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.redis_values import as_text
from shared.streams import DISPATCHER_GROUP, INCIDENT_EVENTS, delivery_state_key, delivery_stream
from tests.conftest import load_fixture
from tests.support.builders import T0, make_incident_opened
from tests.support.fake_provider import Answer, FakeProvider, Received
from tests.support.plans import write_plan
from tests.support.processes import ServiceProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

STATUSES: Final = "/api/v1/statuses"
SLACK_HOOK: Final = "/services/T0001/B0001/hook-secret-path"
MASTODON_TOKEN: Final = "mastodon-token-5ecret"
OPENED = make_incident_opened(event_id="ev-crash", occurred_at=T0)
SLACK_ID: Final = delivery_id_for(idempotency_key(OPENED.event_id, "slack", "ops"))


class MastodonStatuses:
    """``POST /api/v1/statuses`` as Mastodon answers it: a repeated Idempotency-Key
    gets the status made the first time, not a new one. The first post is held
    until ``release`` is set."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.statuses: dict[str, str] = {}  # idempotency key -> status id
        self._lock = threading.Lock()
        self._entity: dict[str, Any] = load_fixture("outbound/mastodon_status_entity_200.json")

    def respond(self, request: Received) -> Answer:
        with self._lock:
            key = request.headers.get("idempotency-key") or f"no-key-{len(self.statuses)}"
            first_post = not self.statuses
            status_id = self.statuses.setdefault(key, str(110_000 + len(self.statuses)))
        return Answer(
            200, json=self._entity | {"id": status_id}, hold=self.release if first_post else None
        )


@pytest.fixture
def releases() -> Iterator[tuple[threading.Event, threading.Event]]:
    mastodon, slack = threading.Event(), threading.Event()
    yield mastodon, slack
    mastodon.set()
    slack.set()


@pytest.fixture
def mastodon(releases: tuple[threading.Event, threading.Event]) -> MastodonStatuses:
    return MastodonStatuses(releases[0])


@pytest.fixture
def provider(
    mastodon: MastodonStatuses, releases: tuple[threading.Event, threading.Event]
) -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        fake.answer("POST", STATUSES, respond=mastodon.respond)
        fake.answer_next("POST", SLACK_HOOK, 200, body="ok", hold=releases[1])
        fake.answer("POST", SLACK_HOOK, 200, body="ok")
        yield fake


@pytest.fixture
def dispatcher(redis_url: str, provider: FakeProvider, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The dispatcher as its own process: Mastodon for customers, Slack for the team."""
    plan = write_plan(
        tmp_path,
        audiences={
            "customers": {
                "public": True,
                "mastodon": [{"instance": provider.url, "access_token_env": "MASTODON_TOKEN"}],
            },
            "team": {"slack": [{"name": "ops", "url_env": "SLACK_WEBHOOK_URL"}]},
        },
        routes=[{"name": "everyone", "audiences": ["customers", "team"]}],
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")} | {
        "CLARION_REDIS_URL": redis_url,
        "CLARION_PLAN": str(plan),
        "CLARION_DISPATCHER_PORT": str(port),
        # Short, so the restarted process takes the jobs over within seconds. The lease
        # outlives the reclaim time: for 2 s after claiming a job, the first process's
        # own reclaimer finds it busy and cannot send it again before the kill.
        "CLARION_IDEMPOTENCY_LEASE_MS": "2000",
        "CLARION_RECLAIM_IDLE_MS": "1000",
        "CLARION_POLLING_INTERVAL_MS": "100",
        # Only a limit on a channel not in play: Slack's default 1/second per recipient
        # could otherwise defer the resend to a scheduler this test does not run.
        "CLARION_RATE_LIMITS": "x=100/day",
        "CLARION_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        "MASTODON_TOKEN": MASTODON_TOKEN,
        "SLACK_WEBHOOK_URL": provider.url + SLACK_HOOK,
    }
    service = ServiceProcess(
        "dispatcher", env, tmp_path, ready_url=f"http://127.0.0.1:{port}/readyz"
    )
    try:
        yield service
    finally:
        service.stop()


async def log_of(redis: Redis) -> list[DeliveryRecorded]:
    return list(reversed(await DeliveryLog(redis).recent(limit=1000)))


async def state_of(redis: Redis, delivery_id: str) -> str:
    value = await redis.hget(delivery_state_key(delivery_id), "state")
    return "" if value is None else as_text(value)


def to(path: str) -> Callable[[Received], bool]:
    return lambda request: request.path == path


async def nothing_pending(redis: Redis, channel: str) -> bool:
    summary: dict[str, Any] = await redis.xpending(delivery_stream(channel), DISPATCHER_GROUP)
    return int(summary["pending"]) == 0


async def test_a_crash_after_the_send_never_posts_twice_to_mastodon_and_says_so_for_slack(
    redis: Redis,
    redis_url: str,
    provider: FakeProvider,
    mastodon: MastodonStatuses,
    releases: tuple[threading.Event, threading.Event],
    dispatcher: ServiceProcess,
) -> None:
    mastodon_id = delivery_id_for(
        idempotency_key(OPENED.event_id, "mastodon", f"mastodon:{provider.url}")
    )
    dispatcher.start()
    await asyncio.to_thread(dispatcher.wait_ready)

    async with RedisBroker(redis_url) as broker:
        await broker.publish(OPENED, stream=INCIDENT_EVENTS)
    # Both providers have the post in hand; neither has answered yet.
    for path in (STATUSES, SLACK_HOOK):
        await asyncio.to_thread(provider.wait_for_requests, 1, to(path), 30.0)

    dispatcher.kill()  # SIGKILL: between the send and its record
    for release in releases:
        release.set()
    assert [r for r in await log_of(redis) if r.status is DeliveryStatus.SENT] == []
    assert len(mastodon.statuses) == 1  # Mastodon made the status all the same

    dispatcher.start()
    await asyncio.to_thread(dispatcher.wait_ready)

    async def both_sent() -> list[DeliveryRecorded] | None:
        records = await log_of(redis)
        sent = {r.delivery_id for r in records if r.status is DeliveryStatus.SENT}
        return records if {mastodon_id, SLACK_ID} <= sent else None

    records = await eventually(both_sent, within=30.0, what="both deliveries sent after restart")

    # Mastodon: the resend carried the same key, and Mastodon made no second status.
    posts = provider.requests_to("POST", STATUSES)
    assert len(posts) == 2
    assert [p.headers["idempotency-key"] for p in posts] == [mastodon_id, mastodon_id]
    assert len(mastodon.statuses) == 1
    [toot] = [r for r in records if r.delivery_id == mastodon_id and r.status.value == "sent"]
    assert toot.provider_message_id == mastodon.statuses[mastodon_id]
    assert toot.possible_duplicate is False
    assert "drops repeats of our idempotency key" in (toot.note or "")

    # Slack: the post it got before the crash, and one more (never more), recorded
    # as a possible duplicate.
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    [slack] = [r for r in records if r.delivery_id == SLACK_ID and r.status.value == "sent"]
    assert slack.possible_duplicate is True
    assert "interrupted mid-send" in (slack.note or "")
    assert "may have received it twice" in (slack.note or "")

    # Every delivery is final, and no job is left pending on any consumer.
    for delivery_id in (mastodon_id, SLACK_ID):
        assert await state_of(redis, delivery_id) == "done"
        assert [r.status for r in records if r.delivery_id == delivery_id] == [DeliveryStatus.SENT]
    for channel in ("mastodon", "slack"):
        await eventually(partial(nothing_pending, redis, channel), what=f"{channel} jobs acked")
