"""Open-loop sending, and matching each send with the first message it caused.

:func:`open_loop` sends request ``i`` at ``start + i / rate`` whether or not earlier
ones were answered (a connection is opened when none is free), so a slow system
meets the rate it would meet in production instead of slowing the sender down.
Each send is stamped with ``time.monotonic()`` (the clock the sinks stamp arrivals
with) and ``time.time()`` (the clock of the delivery log's ``recorded_at``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from bench.http_load import Pool
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.redis_values import as_text, data_entries
from shared.streams import DELIVERY_LOG


@dataclass
class Sent:
    index: int
    scheduled: float  # monotonic
    at: float = 0.0  # monotonic, just before the request was written
    wall: float = 0.0  # time.time() at the same moment
    status: int = 0
    body: bytes = b""
    error: str | None = None


async def open_loop(
    pool: Pool, make_request: Callable[[int], bytes], rate: float, count: int
) -> list[Sent]:
    """Send ``count`` requests at ``rate`` per second on a fixed schedule."""
    sends = [Sent(i, 0.0) for i in range(count)]

    async def send(sent: Sent) -> None:
        data = make_request(sent.index)
        sent.at, sent.wall = time.monotonic(), time.time()
        try:
            sent.status, sent.body = await pool.request(data)
        except (ConnectionError, OSError) as exc:
            sent.error = f"{type(exc).__name__}: {exc}"

    start = time.monotonic() + 0.02
    tasks = []
    for sent in sends:
        sent.scheduled = start + sent.index / rate
        delay = sent.scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(sent)))
    await asyncio.gather(*tasks)
    return sends


def send_lag_ms(sends: Iterable[Sent]) -> float:
    """How far behind its schedule the latest send went out (the sender's own lateness)."""
    return round(max((s.at - s.scheduled for s in sends), default=0.0) * 1000, 2)


def first_arrivals(items: Iterable[list[object]], path: str | None = None) -> dict[str, float]:
    """The earliest arrival time per key, from the sinks' ``[time, path, key]`` listing."""
    first: dict[str, float] = {}
    for arrived, where, key in items:
        if not isinstance(key, str) or not isinstance(arrived, float):
            continue
        if path is not None and where != path:
            continue
        if key not in first or arrived < first[key]:
            first[key] = arrived
    return first


async def newest_id(redis: Redis, stream: str) -> str:
    """The id to read ``stream`` after (``0`` when it is empty)."""
    newest = await redis.xrevrange(stream, count=1)
    return as_text(newest[0][0]) if newest else "0"


class DeliveryLogReader:
    """Follows the delivery log: the first ``sent`` record per incident on each of
    ``channels``."""

    def __init__(self, redis: Redis, channels: tuple[str, ...]) -> None:
        self._redis = redis
        self._last = "0"
        # channel -> incident id -> its first sent record
        self.sent: dict[str, dict[str, DeliveryRecorded]] = {c: {} for c in channels}

    def recorded_at(self, channel: str) -> dict[str, float]:
        """Incident id -> the ``recorded_at`` of its first sent record (unix seconds)."""
        return {k: r.recorded_at.timestamp() for k, r in self.sent[channel].items()}

    def started_at(self, channel: str) -> dict[str, float]:
        """Incident id -> the ``started_at`` of its first sent record (unix seconds)."""
        return {k: r.started_at.timestamp() for k, r in self.sent[channel].items()}

    async def skip_to_end(self) -> None:
        self._last = await newest_id(self._redis, DELIVERY_LOG)

    async def follow(self) -> None:
        while True:
            raw = await self._redis.xrange(DELIVERY_LOG, min=f"({self._last}", count=5000)
            entries = data_entries(raw)
            for entry_id, payload in entries:
                self._last = entry_id
                record = DeliveryRecorded.model_validate_json(payload)
                sent = self.sent.get(record.channel)
                if sent is None or record.status is not DeliveryStatus.SENT:
                    continue
                first = sent.get(record.incident_id)
                if first is None or record.recorded_at < first.recorded_at:
                    sent[record.incident_id] = record
            if len(raw or ()) < 5000:
                return
