"""Redis calls of concurrent callers share round trips (CoalescedCalls), against a real
server: calls made together go out as one pipeline, and each caller still gets its own
reply or its own error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.redis_batches import Call, CoalescedCalls
from shared.redis_client import connect
from tests.support.smtp import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

_INCREMENT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


class CountingCalls(CoalescedCalls):
    """Counts the pipelines it sends and the calls in each."""

    def __init__(self, redis: Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.sizes: list[int] = []

    async def _send(self, calls: list[Call]) -> None:
        self.sizes.append(len(calls))
        await super()._send(calls)


@pytest.fixture
async def counting(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)  # as the services connect
    await client.flushdb()
    yield client
    await client.aclose()


async def test_calls_made_together_share_one_pipeline(counting: Redis) -> None:
    calls = CountingCalls(counting)
    script = counting.register_script(_INCREMENT)
    await counting.script_load(_INCREMENT)

    results = await asyncio.gather(
        *(calls.script(script, keys=["counter"], args=[n]) for n in range(1, 11)),
        calls.execute("SET", "flag", "on"),
    )

    assert calls.sizes == [11]
    assert results[:10] == [sum(range(1, n + 1)) for n in range(1, 11)]  # in call order
    assert results[10] is True
    assert await counting.get("counter") == b"55"


async def test_calls_one_after_another_go_out_one_by_one(counting: Redis) -> None:
    calls = CountingCalls(counting)

    assert await calls.execute("INCR", "n") == 1
    assert await calls.execute("INCR", "n") == 2

    assert calls.sizes == [1, 1]


async def test_calls_from_tasks_started_this_turn_join_the_pipeline_with_two_turns(
    counting: Redis,
) -> None:
    calls = CountingCalls(counting, turns=2)

    async def late_call(n: int) -> Any:  # a task started now: it calls in the next turn
        return await calls.execute("INCRBY", "n", n)

    first = calls.command("INCRBY", "n", 100)
    replies = await asyncio.gather(first, *(late_call(n) for n in range(1, 4)))

    assert calls.sizes == [4]
    assert sorted(replies) == [100, 101, 103, 106]


async def test_a_burst_beyond_the_batch_size_goes_out_in_several_pipelines(
    counting: Redis,
) -> None:
    calls = CountingCalls(counting, max_batch=8)

    replies = await asyncio.gather(*(calls.execute("INCR", "k") for _ in range(20)))

    assert sorted(replies) == list(range(1, 21))
    assert calls.sizes == [8, 8, 4]


async def test_each_caller_gets_its_own_error(counting: Redis) -> None:
    calls = CoalescedCalls(counting)
    await counting.set("text", "not a number")

    outcomes = await asyncio.gather(
        calls.execute("INCR", "number"), calls.execute("INCR", "text"), return_exceptions=True
    )

    assert outcomes[0] == 1
    assert isinstance(outcomes[1], ResponseError)  # and not the other caller's


async def test_when_redis_cannot_be_reached_every_caller_is_told() -> None:
    unreachable = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    calls = CoalescedCalls(unreachable)
    try:
        outcomes = await asyncio.gather(
            *(calls.execute("SET", f"k{n}", "v") for n in range(3)), return_exceptions=True
        )
    finally:
        await unreachable.aclose()

    assert all(isinstance(o, RedisConnectionError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3  # each caller raises its own instance


async def test_a_script_the_server_forgot_is_loaded_and_run(counting: Redis) -> None:
    calls = CoalescedCalls(counting)
    script = counting.register_script(_INCREMENT)
    await counting.script_flush()

    assert await calls.script(script, keys=["counter"], args=[3]) == 3
    assert await calls.script(script, keys=["counter"], args=[4]) == 7


async def test_a_caller_cancelled_before_the_send_sends_nothing(counting: Redis) -> None:
    calls = CoalescedCalls(counting)
    cancelled = asyncio.ensure_future(calls.execute("SET", "cancelled", "1"))
    kept = asyncio.ensure_future(calls.execute("SET", "kept", "1"))
    await asyncio.sleep(0)  # one turn: both queued, the send not begun: noqa: sleep-ok
    cancelled.cancel()

    assert await kept is True
    assert await counting.exists("cancelled", "kept") == 1


async def test_a_connection_redis_dropped_is_replaced_and_the_calls_go_through(
    counting: Redis, redis_url: str
) -> None:
    calls = CountingCalls(counting)
    assert await calls.execute("INCR", "n") == 1  # a pooled connection now exists
    killer = Redis.from_url(redis_url)
    try:
        killed = await killer.client_kill_filter(_type="normal", skipme=True)
    finally:
        await killer.aclose()
    assert killed >= 1

    replies = await asyncio.gather(calls.execute("INCR", "n"), calls.execute("GET", "n"))

    assert list(replies) == [2, b"2"]


async def test_a_pipeline_cut_off_while_waiting_leaves_no_reply_for_the_next_caller(
    counting: Redis,
) -> None:
    calls = CoalescedCalls(counting)
    waiting = calls.command("BLPOP", "nothing-yet", 5)  # the server holds its reply

    async def on_the_wire() -> bool:
        return bool(calls._sending)

    await eventually(on_the_wire, what="the pipeline sent")
    for task in list(calls._sending):
        task.cancel()  # as at shutdown
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await counting.rpush("nothing-yet", "late")  # what the BLPOP would now answer

    assert await calls.execute("GET", "absent") is None  # its own reply, not the BLPOP's
    assert await counting.lrange("nothing-yet", 0, -1) == [b"late"]  # nobody popped it
