"""``clarion dead-letters``: against a live dispatcher on loopback, with its ops token.

Two deliveries (Mastodon and Slack, both answering 503) run out of attempts in the
real pipeline first; then the dispatcher app serves on a free port (its consumers
on the same Valkey) and the ``clarion`` command, run as its own process, lists and
replays them as an operator would. (A process of its own: the CLI's stdout is then
the CLI's alone, not mixed with the in-process dispatcher's log lines.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.fanout import delivery_id_for, idempotency_key
from shared.clock import ManualClock
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.plan import Plan
from shared.redis_values import as_text
from shared.settings import Settings
from shared.streams import delivery_state_key
from tests.conftest import load_fixture
from tests.support.asgi import serving_in_thread
from tests.support.builders import T0, make_incident_opened
from tests.support.dispatching import build_pipeline
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OPS: Final = "ops-secret-for-the-cli"
MASTODON_TOKEN: Final = "mastodon-token-5ecret"
STATUSES: Final = "/api/v1/statuses"
SLACK_HOOK: Final = "/services/T0001/B0001/hook-secret-path"
OPENED = make_incident_opened(event_id="ev-cli", occurred_at=T0)
SLACK_ID: Final = delivery_id_for(idempotency_key(OPENED.event_id, "slack", "ops"))


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


def mastodon_id(provider: FakeProvider) -> str:
    return delivery_id_for(idempotency_key(OPENED.event_id, "mastodon", f"mastodon:{provider.url}"))


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """Mastodon and Slack, both down (503) until a test says they recovered."""
    with FakeProvider() as fake:
        fake.answer("POST", STATUSES, 503, json={"error": "Service Unavailable"})
        fake.answer("POST", SLACK_HOOK, 503, body="service_unavailable")
        yield fake


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class Cli:
    """``clarion`` as an operator runs it: its own process, configured by CLARION_* only."""

    env: dict[str, str]
    cwd: Path
    url: str  # the dispatcher's, for a test's own look at its ops API

    async def __call__(self, *args: str) -> Result:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def with_env(self, **changes: str | None) -> Cli:
        env = dict(self.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return Cli(env, self.cwd, self.url)

    async def dead_letters(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.url) as http:
            response = await http.get(
                "/v1/dead-letters", headers={"Authorization": f"Bearer {OPS}"}
            )
        assert response.status_code == 200, response.text
        letters: list[dict[str, Any]] = response.json()
        return letters


@pytest.fixture
async def clarion(
    redis: Redis,
    make_settings: Callable[..., Settings],
    provider: FakeProvider,
    tmp_path: Path,
) -> AsyncIterator[Cli]:
    """Both deliveries dead (two attempts each), then the dispatcher serving; the CLI
    finds it through CLARION_DISPATCHER_HOST/PORT and CLARION_OPS_TOKEN."""
    settings = make_settings(
        ops_token=OPS,
        delivery_max_attempts=2,
        rate_limits=(),
        consumer_name="dispatcher-cli",
        polling_interval_ms=1000,  # see test_dispatcher_slow_provider.py
        idempotency_lease_ms=60_000,  # nothing here is reclaimed: every send returns
        reclaim_idle_ms=60_000,
    )
    plan = plan_for(provider)
    environ = {"MASTODON_TOKEN": MASTODON_TOKEN, "SLACK_WEBHOOK_URL": provider.url + SLACK_HOOK}
    clock = ManualClock(T0)
    async with httpx.AsyncClient(timeout=10.0) as http:
        pipeline = build_pipeline(redis, settings, plan, clock, environ=environ, http=http)
        await pipeline.handle(OPENED)
        await pipeline.fire_retries(timedelta(minutes=1))
    dead = {r.delivery_id for r in await pipeline.log() if r.status is DeliveryStatus.DEAD}
    assert dead == {mastodon_id(provider), SLACK_ID}

    app = create_app(settings, clock, plan=plan, environ=environ)
    with serving_in_thread(app, lifespan="on") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
        env |= {
            "CLARION_DISPATCHER_HOST": "127.0.0.1",
            "CLARION_DISPATCHER_PORT": str(urlsplit(url).port),
            "CLARION_OPS_TOKEN": OPS,
            "COLUMNS": "250",  # rich's table, unwrapped
        }
        yield Cli(env, tmp_path, url)


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


async def state_of(redis: Redis, delivery_id: str) -> str:
    value = await redis.hget(delivery_state_key(delivery_id), "state")
    return "" if value is None else as_text(value)


async def wait_until_sent(redis: Redis, delivery_ids: set[str]) -> list[DeliveryRecorded]:
    async def probe() -> list[DeliveryRecorded] | None:
        records = list(reversed(await DeliveryLog(redis).recent(limit=1000)))
        sent = {r.delivery_id for r in records if r.status is DeliveryStatus.SENT}
        return records if delivery_ids <= sent else None

    return await eventually(probe, within=20.0, what=f"sent: {delivery_ids}")


def recover(provider: FakeProvider) -> None:
    provider.answer(
        "POST", STATUSES, 200, json=load_fixture("outbound/mastodon_status_entity_200.json")
    )
    provider.answer("POST", SLACK_HOOK, 200, body="ok")


async def test_list_shows_dead_deliveries_and_nothing_moves_without_the_token(
    clarion: Cli, redis: Redis, provider: FakeProvider
) -> None:
    recover(provider)
    no_token = clarion.with_env(CLARION_OPS_TOKEN=None)
    wrong_token = clarion.with_env(CLARION_OPS_TOKEN="not-the-token")

    listed, table, without, wrong, neither = await asyncio.gather(
        clarion("dead-letters", "list", "--json"),
        clarion("dead-letters", "list"),
        no_token("dead-letters", "list"),
        wrong_token("dead-letters", "replay", "--all"),
        clarion("dead-letters", "replay"),
    )

    letters = json_lines(listed)
    assert sorted((d["channel"], d["delivery_id"]) for d in letters) == sorted(
        [("mastodon", mastodon_id(provider)), ("slack", SLACK_ID)]
    )
    assert all(d["kind"] == "delivery" and d["attempt"] == 2 for d in letters)
    assert all(d["reason"] == "retries_exhausted" and d["replayed_at"] is None for d in letters)
    assert all("503" in d["error"] for d in letters)
    assert table.exit_code == 0, table.output
    for letter in letters:
        assert letter["id"] in table.stdout
        assert letter["channel"] in table.stdout
    for output in (table.output, listed.output):
        assert MASTODON_TOKEN not in output
        assert "hook-secret-path" not in output
    for refused in (without, wrong):
        assert refused.exit_code == 1
        assert "401" in refused.output
    assert neither.exit_code == 1
    assert "Give one dead letter ID, or --all." in neither.output
    # Nothing was replayed by any of that.
    assert await state_of(redis, SLACK_ID) == "dead"
    assert await state_of(redis, mastodon_id(provider)) == "dead"
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 2
    assert len(provider.requests_to("POST", STATUSES)) == 2


async def test_replay_one_then_all_sends_each_dead_delivery_once_more(
    clarion: Cli, redis: Redis, provider: FakeProvider
) -> None:
    mastodon = mastodon_id(provider)
    letters = {d["channel"]: d["id"] for d in await clarion.dead_letters()}
    recover(provider)

    one = await clarion("dead-letters", "replay", letters["slack"], "--by", "bob")

    assert one.exit_code == 0, one.output
    assert f"Replayed {letters['slack']}: queued as attempt 3." in one.output
    records = await wait_until_sent(redis, {SLACK_ID})
    [queued] = [r for r in records if r.delivery_id == SLACK_ID and r.status.value == "queued"]
    assert queued.note == "replayed from dead letters by bob"
    assert await state_of(redis, mastodon) == "dead"  # only the one named
    assert len(provider.requests_to("POST", STATUSES)) == 2

    rest = await clarion("dead-letters", "replay", "--all", "--by", "alice")

    assert rest.exit_code == 0, rest.output
    assert "Replayed 1 dead letter(s)." in rest.output
    records = await wait_until_sent(redis, {mastodon})
    for delivery_id in (mastodon, SLACK_ID):
        assert [(r.status.value, r.attempt) for r in records if r.delivery_id == delivery_id] == [
            ("retrying", 1),
            ("dead", 2),
            ("queued", 3),
            ("sent", 3),
        ]
        assert await state_of(redis, delivery_id) == "done"
    posts = provider.requests_to("POST", STATUSES)
    assert len(posts) == 3  # two failed attempts, one replay
    assert {p.headers["idempotency-key"] for p in posts} == {mastodon}

    # Nothing is left to replay, and replaying one again is refused.
    pending, nothing, again = await asyncio.gather(
        clarion("dead-letters", "list", "--pending", "--json"),
        clarion("dead-letters", "replay", "--all"),
        clarion("dead-letters", "replay", letters["mastodon"]),
    )
    assert json_lines(pending) == []
    assert nothing.exit_code == 0, nothing.output
    assert "Nothing to replay." in nothing.output
    assert again.exit_code == 1
    assert "409" in again.output
    assert len(provider.requests_to("POST", STATUSES)) == 3
    assert len(provider.requests_to("POST", SLACK_HOOK)) == 3
