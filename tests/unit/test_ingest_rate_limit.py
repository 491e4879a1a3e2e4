from __future__ import annotations

import types

import limits.aio.storage.memory
import pytest

import services.ingest.rate_limit
from services.ingest.rate_limit import RateLimiter, parse_rate_limit
from shared.errors import RateLimited


class FakeTime:
    """Stands in for the ``time`` module where the limiter and its storage read the clock."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    module = types.SimpleNamespace(time=fake.time)
    monkeypatch.setattr(limits.aio.storage.memory, "time", module)
    monkeypatch.setattr(services.ingest.rate_limit, "time", module)
    return fake


@pytest.mark.parametrize(
    "text", ["", "abc", "100", "0/second", "-1/second", "10/fortnight", "100/second;"]
)
def test_an_invalid_setting_is_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"CLARION_INGEST_RATE_LIMIT=.* is not a rate limit"):
        RateLimiter(text)


def test_several_limits_may_be_combined() -> None:
    items = parse_rate_limit("100/second; 2000 per minute")
    assert [(i.amount, i.get_expiry()) for i in items] == [(100, 1), (2000, 60)]


async def test_over_the_limit_is_rate_limited_with_a_retry_after(clock: FakeTime) -> None:
    limiter = RateLimiter("3/minute")
    for _ in range(3):
        await limiter.check("alertmanager")
        clock.now += 10

    with pytest.raises(RateLimited, match="alertmanager source is over its rate limit") as caught:
        await limiter.check("alertmanager")

    # The first of the three requests leaves the window 60 s after it came, 30 s from now.
    assert caught.value.retry_after_seconds == 30


async def test_a_source_is_served_again_once_the_window_moves_on(clock: FakeTime) -> None:
    limiter = RateLimiter("2/second")
    await limiter.check("grafana")
    await limiter.check("grafana")
    with pytest.raises(RateLimited) as caught:
        await limiter.check("grafana")
    assert caught.value.retry_after_seconds == 1

    clock.now += 1.001
    await limiter.check("grafana")


async def test_sources_have_budgets_of_their_own(clock: FakeTime) -> None:
    limiter = RateLimiter("1/minute")
    await limiter.check("alertmanager")
    with pytest.raises(RateLimited):
        await limiter.check("alertmanager")

    await limiter.check("grafana")
    await limiter.check("datadog")


async def test_two_limiters_do_not_share_counts(clock: FakeTime) -> None:
    await RateLimiter("1/minute").check("generic")
    await RateLimiter("1/minute").check("generic")


async def test_the_tightest_exceeded_limit_names_the_wait(clock: FakeTime) -> None:
    limiter = RateLimiter("2/minute;100/day")
    await limiter.check("sns")
    await limiter.check("sns")
    with pytest.raises(RateLimited, match="2 per 1 minute") as caught:
        await limiter.check("sns")
    assert caught.value.retry_after_seconds == 60


async def test_retry_after_is_at_least_one_second_without_a_fake_clock() -> None:
    limiter = RateLimiter("1/hour")
    await limiter.check("pagerduty")
    with pytest.raises(RateLimited) as caught:
        await limiter.check("pagerduty")
    assert 3590 <= caught.value.retry_after_seconds <= 3600


def test_rate_limited_never_asks_for_less_than_a_second() -> None:
    assert RateLimited(0).retry_after_seconds == 1
    assert str(RateLimited(7)) == "too many requests; retry after 7 s"
