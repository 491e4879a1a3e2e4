"""Noticing a FastStream subscriber that stopped on its own.

FastStream stops a stream subscriber for good when its consumer group vanishes
(``NOGROUP`` after a Redis flush, or a restart without persistence). The process
then looks alive but consumes nothing. A service that notices exits, so that its
supervisor (``clarion up``, Docker's restart policy) starts it again and the groups
are created anew.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from faststream.redis import RedisBroker

from shared.logs import get_logger


def stopped_subscribers(broker: RedisBroker) -> list[str]:
    """The streams whose subscribers are no longer running (empty when all is well)."""
    return [
        str(getattr(getattr(sub, "stream_sub", None), "name", sub))
        for sub in broker.subscribers
        if not sub.running
    ]


async def watch_subscribers(
    broker: RedisBroker, stop: asyncio.Event, interval: float = 1.0
) -> list[str]:
    """Wait until a subscriber stops (returns which) or ``stop`` is set (returns [])."""
    while not stop.is_set():
        stopped = stopped_subscribers(broker)
        if stopped:
            return stopped
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    return []


async def report_stopped_subscribers(
    broker: RedisBroker,
    stop: asyncio.Event,
    on_fatal: Callable[[str], None] | None,
    service: str,
) -> None:
    """Watch until ``stop``; if a subscriber stops first, log it and call ``on_fatal``."""
    stopped = await watch_subscribers(broker, stop)
    if stopped:
        reason = f"consumers stopped on {', '.join(stopped)}; the process must restart"
        get_logger(f"clarion.{service}").critical(f"{service}.consumers_stopped", streams=stopped)
        if on_fatal is not None:
            on_fatal(reason)
