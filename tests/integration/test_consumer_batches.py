"""GuardedConsumer reading in batches, against a real server: each entry is handled on
its own (at most ``max_workers`` at once) and acknowledged on its own outcome; one that
fails stays pending for the reclaimer; a closing consumer starts nothing more."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, cast

import pytest
from faststream.redis import RedisBroker
from faststream.redis.parser.binary import BinaryMessageFormatV1
from redis.asyncio import Redis

from shared.consumer import GuardedConsumer, StreamEntry
from shared.redis_values import DATA_FIELD, as_text
from shared.settings import Settings
from tests.support.streams import StreamEntries
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

STREAM: Final = "clarion:test-batches"
GROUP: Final = "test-group"
WORKERS: Final = 3


class Handler:
    """Records what it handled; fails each message's first attempt when it says so, and
    holds every attempt until ``gate`` opens (open from the start unless told)."""

    def __init__(self, *, gated: bool = False) -> None:
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.running = 0
        self.peak = 0
        self.attempts: list[tuple[int, int]] = []  # (message n, delivery count)
        self.handled: list[int] = []

    async def handle(self, message: dict[str, Any], entry: StreamEntry) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
            self.attempts.append((message["n"], entry.delivery_count))
            if message.get("fail_first") and entry.delivery_count == 1:
                raise RuntimeError("the first attempt fails")
            self.handled.append(message["n"])
        finally:
            self.running -= 1


def _decode(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


def batch_consumer(
    redis: Redis,
    handler: Handler,
    max_workers: int,
    acknowledge: Callable[[Sequence[str]], Awaitable[object]] | None = None,
) -> GuardedConsumer[dict[str, Any]]:
    """A consumer of the test stream reading 8 entries at once, 3 deliveries at most."""
    return GuardedConsumer(
        redis=redis,
        stream=STREAM,
        group=GROUP,
        decode=_decode,
        handle=handler.handle,
        max_deliveries=3,
        max_workers=max_workers,
        batch=8,
        acknowledge=acknowledge,
    )


Started = tuple[GuardedConsumer[dict[str, Any]], RedisBroker]


@pytest.fixture
async def batches(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Any]]:
    brokers: list[RedisBroker] = []

    async def start(
        handler: Handler,
        *,
        reclaim_idle_ms: int = 300,
        acknowledge: Callable[[Sequence[str]], Awaitable[object]] | None = None,
    ) -> Started:
        """``reclaim_idle_ms``: long for tests that hold entries (the reclaimer would take
        over those that wait for a slot longer than that; their claim guards them)."""
        settings = make_settings(
            reclaim_idle_ms=reclaim_idle_ms, polling_interval_ms=50, max_deliveries=3
        )
        if not await redis.exists(STREAM):
            await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        broker = RedisBroker(settings.require_redis_url())
        consumer = batch_consumer(redis, handler, WORKERS, acknowledge)
        consumer.subscribe(broker, settings)
        await broker.start()
        brokers.append(broker)
        return consumer, broker

    yield start
    for broker in brokers:
        await broker.stop()


async def _add(redis: Redis, *messages: dict[str, Any]) -> None:
    for message in messages:  # plain JSON, as the pipeline writes jobs
        await redis.xadd(STREAM, {DATA_FIELD: json.dumps(message)})


async def _pending(redis: Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


async def test_every_entry_of_a_batch_is_handled_and_acknowledged(
    redis: Redis, batches: Any
) -> None:
    handler = Handler()
    await batches(handler)

    await _add(redis, *({"n": n} for n in range(20)))

    await eventually(lambda: _all_handled(handler, 20), what="20 handled")
    assert sorted(handler.handled) == list(range(20))
    assert await eventually(lambda: _none_pending(redis), what="every entry acknowledged")


async def test_each_entry_s_body_is_found_whatever_its_shape(redis: Redis, batches: Any) -> None:
    handler = Handler()
    await batches(handler)
    envelope = await BinaryMessageFormatV1.encode(
        message=json.dumps({"n": 2}).encode(),
        reply_to=None,
        headers={"content-type": "application/json"},
        correlation_id="c-2",
    )
    legacy = {"data": json.dumps({"n": 3}), "headers": {"content-type": "application/json"}}

    await redis.xadd(STREAM, {DATA_FIELD: json.dumps({"n": 1})})  # plain JSON
    await redis.xadd(STREAM, {DATA_FIELD: envelope})  # FastStream's binary envelope
    await redis.xadd(STREAM, {DATA_FIELD: json.dumps(legacy)})  # its legacy JSON envelope
    await redis.xadd(STREAM, {DATA_FIELD: json.dumps({"n": 4, "data": {"not": "enveloped"}})})

    await eventually(lambda: _all_handled(handler, 4), what="4 handled")
    assert sorted(handler.handled) == [1, 2, 3, 4]


async def test_handled_entries_go_to_the_given_acknowledgement(redis: Redis, batches: Any) -> None:
    acked: list[str] = []

    async def acknowledge(entry_ids: Sequence[str]) -> object:
        acked.extend(entry_ids)
        return await redis.xack(STREAM, GROUP, *entry_ids)

    handler = Handler()
    await batches(handler, acknowledge=acknowledge)
    await _add(redis, *({"n": n} for n in range(5)))

    await eventually(lambda: _all_handled(handler, 5), what="5 handled")
    assert await eventually(lambda: _none_pending(redis), what="every entry acknowledged")
    ids = [as_text(entry_id) for entry_id, _ in cast(StreamEntries, await redis.xrange(STREAM))]
    assert sorted(acked) == sorted(ids)


async def test_a_failed_entry_stays_pending_alone_and_the_reclaimer_retries_it(
    redis: Redis, batches: Any
) -> None:
    handler = Handler()
    await batches(handler)

    await _add(redis, {"n": 0}, {"n": 1, "fail_first": True}, {"n": 2})

    await eventually(lambda: _all_handled(handler, 2), what="the two good entries")
    assert await eventually(lambda: _pending_is(redis, 1), what="only the failed one pending")
    await eventually(lambda: _all_handled(handler, 3), what="the failed entry retried")
    assert (1, 1) in handler.attempts
    assert (1, 2) in handler.attempts  # the reclaimer's attempt, counted as the second
    assert sorted(handler.handled) == [0, 1, 2]
    assert await eventually(lambda: _none_pending(redis), what="every entry acknowledged")


async def test_no_more_than_max_workers_entries_run_at_once(redis: Redis, batches: Any) -> None:
    handler = Handler(gated=True)
    consumer, _ = await batches(handler, reclaim_idle_ms=60_000)

    await _add(redis, *({"n": n} for n in range(10)))

    await eventually(lambda: _running(handler, WORKERS), what="the workers busy")
    assert len(consumer._in_flight) == WORKERS  # the rest wait for a slot
    handler.gate.set()
    await eventually(lambda: _all_handled(handler, 10), what="10 handled")
    assert handler.peak == WORKERS


async def test_a_closed_consumer_finishes_what_runs_and_leaves_the_rest_for_later(
    redis: Redis, batches: Any
) -> None:
    handler = Handler(gated=True)
    consumer, broker = await batches(handler, reclaim_idle_ms=60_000)
    await _add(redis, *({"n": n} for n in range(10)))
    await eventually(lambda: _running(handler, WORKERS), what="the workers busy")

    consumer.close()  # what a stopping dispatcher does: close, stop reading, drain
    await broker.stop()
    handler.gate.set()
    await consumer.drain(10.0)

    assert len(handler.handled) == WORKERS
    # The next consumer (a restarted dispatcher) gets the rest: pending ones by reclaim.
    after = Handler()
    await batches(after)
    await eventually(lambda: _all_handled(after, 10 - WORKERS), what="the rest handled")
    assert sorted(handler.handled + after.handled) == list(range(10))


async def _all_handled(handler: Handler, count: int) -> bool:
    return len(handler.handled) >= count


async def _running(handler: Handler, count: int) -> bool:
    return handler.running == count


async def _none_pending(redis: Redis) -> bool:
    return await _pending(redis) == 0


async def _pending_is(redis: Redis, count: int) -> bool:
    return await _pending(redis) == count


async def test_closing_wakes_a_batch_waiting_for_a_slot_and_starts_nothing_more(
    redis: Redis,
) -> None:
    handler = Handler(gated=True)
    consumer = batch_consumer(redis, handler, max_workers=1)
    entries = [
        (json.dumps({"n": n}).encode(), StreamEntry(STREAM, GROUP, f"{n + 1}-0", 1))
        for n in range(3)
    ]
    starting = asyncio.create_task(consumer.process_batch(entries))
    await eventually(lambda: _running(handler, 1), what="the one worker busy")
    assert not starting.done()  # the second entry waits for the slot

    consumer.close()
    await asyncio.wait_for(starting, timeout=5.0)  # woken, and it starts nothing more
    handler.gate.set()
    await consumer.drain(5.0)

    assert handler.handled == [0]
    assert handler.peak == 1
