"""Per-source rate limiting of webhook requests (the ``limits`` library, moving window).

The limit is ``CLARION_INGEST_RATE_LIMIT`` in the ``limits`` notation, e.g.
``100/second`` or ``100/second;2000/minute``; each source has its own budget.
Counts live in this process's memory: N ingest replicas allow N times the rate.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from shared.errors import RateLimited

_NAMESPACE = "clarion-ingest"


def parse_rate_limit(text: str) -> tuple[RateLimitItem, ...]:
    """The limits in ``text``; ValueError naming the setting when it is not valid."""
    try:
        items = tuple(parse_many(text))
    except ValueError:
        items = ()
    if not items or any(item.amount < 1 for item in items):
        raise ValueError(
            f"CLARION_INGEST_RATE_LIMIT={text!r} is not a rate limit; write it like "
            "'100/second' or '100/second;2000/minute' (amounts of at least 1)"
        )
    return items


class RateLimiter:
    """``await check(source)`` raises :class:`RateLimited` once a source is over its limit."""

    def __init__(self, limit: str, storage: Storage | None = None) -> None:
        self.items = parse_rate_limit(limit)
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())

    async def check(self, source: str) -> None:
        """Count one request from ``source``, or raise :class:`RateLimited`."""
        for item in self.items:
            if not await self._limiter.hit(item, _NAMESPACE, source):
                stats = await self._limiter.get_window_stats(item, _NAMESPACE, source)
                retry_after = math.ceil(stats.reset_time - time.time())
                raise RateLimited(
                    retry_after,
                    f"the {source} source is over its rate limit of {item}; "
                    f"retry after {max(1, retry_after)} s",
                )
