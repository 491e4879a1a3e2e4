"""GuardedConsumer against a real server: reclaim, delivery cap, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from shared.consumer import GuardedConsumer, StreamEntry
from shared.errors import PermanentFailure
from shared.settings import Settings
from shared.streams import DEAD_LETTERS
from tests.support.streams import stream_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

STREAM = "clarion:test-stream"
GROUP = "test-group"


class Recorder:
    def __init__(self, fail_times: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.fail_times = fail_times
        self.error = error
        self.attempts: list[int] = []
        self.handled: list[dict[str, Any]] = []
        self.dead: list[tuple[dict[str, Any], str]] = []
        self.done = asyncio.Event()

    async def handle(self, message: dict[str, Any], entry: StreamEntry) -> None:
        self.attempts.append(entry.delivery_count)
        if len(self.attempts) <= self.fail_times:
            raise self.error(f"boom {len(self.attempts)}")
        self.handled.append(message)
        self.done.set()

    async def on_dead(self, message: dict[str, Any], entry: StreamEntry, error: str) -> None:
        self.dead.append((message, error))


def _decode(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    return value


@pytest.fixture
async def broker_for(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[[Recorder], Any]]:
    brokers: list[RedisBroker] = []
    settings = make_settings(reclaim_idle_ms=200, polling_interval_ms=50, max_deliveries=3)

    async def start(recorder: Recorder) -> RedisBroker:
        await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        broker = RedisBroker(settings.require_redis_url())
        consumer: GuardedConsumer[dict[str, Any]] = GuardedConsumer(
            redis=redis,
            stream=STREAM,
            group=GROUP,
            decode=_decode,
            handle=recorder.handle,
            max_deliveries=settings.max_deliveries,
            on_dead=recorder.on_dead,
        )
        consumer.subscribe(broker, settings)
        await broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        await broker.stop()


async def _pending(redis: Redis) -> int:
    info = await redis.xpending(STREAM, GROUP)
    return int(info["pending"])


async def _dead_letters(redis: Redis) -> list[dict[str, Any]]:
    return await stream_json(redis, DEAD_LETTERS)


async def test_a_failed_message_is_reclaimed_and_retried(redis: Redis, broker_for: Any) -> None:
    recorder = Recorder(fail_times=1)
    broker = await broker_for(recorder)
    await broker.publish({"n": 1}, stream=STREAM)
    await asyncio.wait_for(recorder.done.wait(), timeout=15)
    assert recorder.attempts == [1, 2]
    assert recorder.handled == [{"n": 1}]
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def _zero_pending(redis: Redis) -> bool:
    return await _pending(redis) == 0


async def test_a_message_that_keeps_failing_is_dead_lettered_with_its_error(
    redis: Redis, broker_for: Any
) -> None:
    recorder = Recorder(fail_times=100)
    broker = await broker_for(recorder)
    await broker.publish({"n": 2}, stream=STREAM)
    (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "max_deliveries_exceeded"
    assert "boom 3" in dead["error"]
    assert json.loads(dead["payload"]) == {"n": 2}
    assert recorder.attempts == [1, 2, 3]
    assert recorder.dead == [({"n": 2}, "RuntimeError: boom 3")]
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def test_an_undecodable_message_goes_straight_to_dead_letters(
    redis: Redis, broker_for: Any
) -> None:
    recorder = Recorder()
    await broker_for(recorder)
    await redis.xadd(STREAM, {"__data__": b"[1, 2, 3]"})
    (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "undecodable"
    assert dead["delivery_count"] == 1
    assert recorder.attempts == []
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def test_a_permanent_failure_is_not_retried(redis: Redis, broker_for: Any) -> None:
    recorder = Recorder(fail_times=1, error=PermanentFailure)
    broker = await broker_for(recorder)
    await broker.publish({"n": 3}, stream=STREAM)
    (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "permanent_failure"
    assert recorder.attempts == [1]
