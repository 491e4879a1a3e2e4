"""The retry policy: doubling backoff with jitter in its upper half, a cap, and
``Retry-After`` as a floor with a cap of its own. Randomness is injected."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.dispatcher.retry_policy import RetryPolicy
from shared.settings import Settings

POLICY = RetryPolicy(
    last_attempt=6,
    base=timedelta(seconds=5),
    cap=timedelta(minutes=10),
    retry_after_cap=timedelta(hours=6),
)


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


class Draws:
    """A ``uniform`` that records the range it was asked for and answers its middle."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.ranges.append((low, high))
        return (low + high) / 2


def test_backoff_doubles_with_each_failed_attempt() -> None:
    delays = [POLICY.delay(attempt, None, highest) for attempt in range(1, 6)]

    assert delays == [timedelta(seconds=s) for s in (5, 10, 20, 40, 80)]


def test_backoff_stops_growing_at_the_cap() -> None:
    assert POLICY.delay(8, None, highest) == timedelta(minutes=10)  # 5 s * 2**7 = 640 s
    assert POLICY.delay(30, None, highest) == timedelta(minutes=10)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 5.0), (2, 10.0), (4, 40.0), (12, 600.0)])
def test_jitter_is_drawn_from_the_upper_half_of_the_backoff(attempt: int, ceiling: float) -> None:
    draws = Draws()

    delay = POLICY.delay(attempt, None, draws)

    assert draws.ranges == [(ceiling / 2, ceiling)]
    assert delay == timedelta(seconds=ceiling * 0.75)
    assert POLICY.delay(attempt, None, lowest) == timedelta(seconds=ceiling / 2)


def test_the_default_jitter_stays_in_range() -> None:
    delays = {POLICY.delay(3, None) for _ in range(200)}

    assert all(timedelta(seconds=10) <= d <= timedelta(seconds=20) for d in delays)
    assert len(delays) > 1  # it is random


def test_retry_after_is_a_floor_above_the_backoff() -> None:
    asked = timedelta(minutes=2)

    assert POLICY.delay(1, asked, highest) == asked


def test_a_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    assert POLICY.delay(4, timedelta(seconds=1), highest) == timedelta(seconds=40)
    assert POLICY.delay(4, timedelta(seconds=0), lowest) == timedelta(seconds=20)


def test_retry_after_is_honoured_only_up_to_its_cap() -> None:
    assert POLICY.delay(1, timedelta(days=3), highest) == timedelta(hours=6)


def test_a_capped_retry_after_still_never_undercuts_the_backoff() -> None:
    policy = RetryPolicy(
        last_attempt=6,
        base=timedelta(minutes=5),
        cap=timedelta(hours=1),
        retry_after_cap=timedelta(minutes=1),
    )

    assert policy.delay(3, timedelta(hours=2), highest) == timedelta(minutes=20)


def test_the_policy_comes_from_the_settings() -> None:
    settings = Settings(
        _env_file=None,
        delivery_max_attempts=4,
        retry_base="2s",
        retry_max="1m",
        retry_after_max="30m",
    )

    policy = RetryPolicy.of(settings)

    assert policy == RetryPolicy(
        last_attempt=4,
        base=timedelta(seconds=2),
        cap=timedelta(minutes=1),
        retry_after_cap=timedelta(minutes=30),
    )


@pytest.mark.parametrize("attempt", [45, 49, 200])
def test_a_late_attempt_still_waits_the_cap(attempt: int) -> None:
    assert POLICY.delay(attempt, None, highest) == timedelta(minutes=10)
