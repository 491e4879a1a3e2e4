"""Per-source rate limiting of webhook requests (a moving window).

The limit is ``CLARION_INGEST_RATE_LIMIT`` in the ``limits`` library's notation,
e.g. ``100/second`` or ``100/second;2000/minute``; each source has its own
budget. A request is refused while the window (the last second, minute, ...)
already holds as many accepted requests as the limit allows, as the ``limits``
library's moving window does; the times of those requests are kept in a deque
per source and limit, so a request costs a few operations (the library's memory
storage spends a task and a thread hop on each). Counts live in this process's
memory: N ingest replicas allow N times the rate, and so do N worker processes of
one ingest (``CLARION_INGEST_WORKERS``), each counting the requests it serves.
"""

from __future__ import annotations

import math
import time
from collections import deque

from limits import RateLimitItem, parse_many

from shared.errors import RateLimited


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

    def __init__(self, limit: str) -> None:
        self.items = parse_rate_limit(limit)
        self._windows: dict[tuple[str, int], deque[float]] = {}

    async def check(self, source: str) -> None:
        """Count one request from ``source``, or raise :class:`RateLimited`.

        Each limit counts the request once it passes, even when a later one refuses it.
        """
        now = time.time()
        for number, item in enumerate(self.items):
            window = self._windows.get((source, number))
            if window is None:
                window = self._windows[(source, number)] = deque()
            span = item.get_expiry()
            while window and window[0] < now - span:  # left the window
                window.popleft()
            if len(window) >= item.amount:
                retry_after = math.ceil(window[0] + span - now)
                raise RateLimited(
                    retry_after,
                    f"the {source} source is over its rate limit of {item}; "
                    f"retry after {max(1, retry_after)} s",
                )
            window.append(now)
