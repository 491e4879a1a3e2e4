"""Waiting on conditions with a deadline, never on the clock alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``within`` seconds.

    For state that has no notification to await (a Redis key, a stream length).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)  # bounded poll, not a wait on time: noqa: sleep-ok
    raise AssertionError(f"{what} not reached within {within}s (last value: {last!r})")
