"""Shared rate limits (GCRA in one Lua script) on a real Valkey.

The script reads Redis ``TIME``: these tests only rely on a few milliseconds passing
between calls, never on time moving on by itself. The one that needs an exact clock
pins the script's clock to a hash the test sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from services.dispatcher import rate_limits
from services.dispatcher.rate_limits import RateLimits, parse_rate_limits
from shared.redis_batches import CoalescedCalls

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
SLACK_MS = timedelta(seconds=1)
"""How much the few calls of a test may take, at most, on a slow machine."""


def limiter(redis: Redis, entries: Iterable[str]) -> RateLimits:
    return RateLimits(redis, parse_rate_limits(entries))


async def rate_keys(redis: Redis) -> list[str]:
    return sorted([key.decode() async for key in redis.scan_iter("clarion:rate:*")])


def about(wait: timedelta | None, expected: timedelta) -> bool:
    """``wait`` is ``expected``, less what the test's own calls took."""
    return wait is not None and expected - SLACK_MS < wait <= expected


async def test_the_budget_allows_its_amount_then_says_how_long_to_wait(redis: Redis) -> None:
    limits = limiter(redis, ["mastodon=3/hour"])

    allowed = [await limits.acquire("mastodon", "@ops@hachyderm.io") for _ in range(3)]
    refused = await limits.acquire("mastodon", "@ops@hachyderm.io")
    again = await limits.acquire("mastodon", "@someone@else.example")

    assert allowed == [None, None, None]
    assert about(refused, timedelta(minutes=20))  # the next of 3 per hour
    assert about(again, timedelta(minutes=20))  # refusals are not counted


async def test_each_recipient_has_its_own_budget(redis: Redis) -> None:
    limits = limiter(redis, ["sms:recipient=1/minute"])

    assert await limits.acquire("sms", ALICE) is None
    assert about(await limits.acquire("sms", ALICE), timedelta(minutes=1))
    assert await limits.acquire("sms", BOB) is None
    assert about(await limits.acquire("sms", BOB), timedelta(minutes=1))


async def test_nothing_is_counted_when_one_limit_refuses(redis: Redis) -> None:
    limits = limiter(redis, ["sms=2/hour", "sms:recipient=1/hour"])

    assert await limits.acquire("sms", ALICE) is None
    assert about(await limits.acquire("sms", ALICE), timedelta(hours=1))  # her own limit
    assert await limits.acquire("sms", BOB) is None  # the refusal took no provider budget
    assert about(await limits.acquire("sms", CAROL), timedelta(minutes=30))  # provider's

    keys = await rate_keys(redis)
    assert len(keys) == 3  # the provider's, Alice's and Bob's: Carol's refusal wrote nothing


async def test_the_wait_is_that_of_the_longest_refusing_limit(redis: Redis) -> None:
    limits = limiter(redis, ["sms:recipient=1/minute", "sms=1/hour"])

    assert await limits.acquire("sms", ALICE) is None

    assert about(await limits.acquire("sms", ALICE), timedelta(hours=1))


async def test_checks_sent_with_other_calls_share_the_budget_and_its_refusals(
    redis: Redis,
) -> None:
    calls = CoalescedCalls(redis)
    shared = RateLimits(redis, parse_rate_limits(["sms=3/hour"]), calls)
    alone = limiter(redis, ["sms=3/hour"])

    together = await asyncio.gather(*(shared.acquire("sms", ALICE) for _ in range(3)))

    assert together == [None, None, None]  # three checks in one round trip, all counted
    assert about(await alone.acquire("sms", BOB), timedelta(minutes=20))
    assert about(await shared.acquire("sms", CAROL), timedelta(minutes=20))


async def test_two_instances_share_one_budget(redis: Redis) -> None:
    first = limiter(redis, ["x=1/day"])
    second = limiter(redis, ["x=1/day"])

    assert await first.acquire("x", "@clarion") is None

    assert about(await second.acquire("x", "@clarion"), timedelta(days=1))
    assert about(await first.acquire("x", "@clarion"), timedelta(days=1))


async def test_other_channels_are_not_limited_by_one_that_is_spent(redis: Redis) -> None:
    limits = limiter(redis, ["slack:recipient=1/hour", "discord=1/hour"])
    assert await limits.acquire("slack", "#incidents") is None
    assert await limits.acquire("slack", "#incidents") is not None

    assert await limits.acquire("discord", "#incidents") is None
    assert [await limits.acquire("email", ALICE) for _ in range(20)] == [None] * 20


async def test_key_names_carry_no_recipient(redis: Redis) -> None:
    limits = limiter(redis, ["sms:recipient=1/minute", "email:recipient=5/minute"])

    await limits.acquire("sms", "+14155550100")
    await limits.acquire("email", ALICE)

    keys = await rate_keys(redis)
    assert len(keys) == 2
    for key in keys:
        assert "@" not in key
        assert "alice" not in key
        assert "4155550100" not in key


PINNED_TIME = "clarion-test:time"


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate-limit script reads its clock from ``PINNED_TIME`` instead of ``TIME``."""
    source = rate_limits._ACQUIRE
    assert "redis.call('TIME')" in source
    pinned = source.replace("redis.call('TIME')", f"redis.call('HMGET', '{PINNED_TIME}', 1, 2)")
    monkeypatch.setattr(rate_limits, "_ACQUIRE", pinned)


async def set_time(redis: Redis, ms: int) -> None:
    await redis.hset(PINNED_TIME, mapping={"1": ms // 1000, "2": (ms % 1000) * 1000})


async def test_with_the_clock_pinned_the_budget_refills_one_interval_at_a_time(
    redis: Redis, pinned_clock: None
) -> None:
    start = 1_795_444_200_000
    await set_time(redis, start)
    limits = limiter(redis, ["mastodon=2/minute"])
    assert [await limits.acquire("mastodon", "@ops") for _ in range(2)] == [None, None]
    assert await limits.acquire("mastodon", "@ops") == timedelta(seconds=30)

    await set_time(redis, start + 29_999)
    assert await limits.acquire("mastodon", "@ops") == timedelta(milliseconds=1)
    await set_time(redis, start + 30_000)
    assert await limits.acquire("mastodon", "@ops") is None
    assert await limits.acquire("mastodon", "@ops") == timedelta(seconds=30)


async def test_a_wait_of_a_fraction_of_a_millisecond_is_still_a_refusal(
    redis: Redis, pinned_clock: None
) -> None:
    start = 1_795_444_200_000
    await set_time(redis, start)
    limits = limiter(redis, ["sms=3/second"])  # one every 333.33 ms
    assert [await limits.acquire("sms", f"+1415555010{i}") for i in range(3)] == [None] * 3
    await set_time(redis, start + 333)  # the next send is allowed at +333.33 ms

    allowed = [await limits.acquire("sms", f"+1415555020{i}") for i in range(5)]

    assert allowed.count(None) == 0
