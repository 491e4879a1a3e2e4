"""Where a first message's time goes: one channel's path, cut at the steps Redis records.

For each incident, five moments on the wall clock, all read after the run (nothing is
added to the services to measure them):

- **posted**: the bench's ``time.time()`` just before the webhook was written;
- **opened**: the incident's ``opened_at`` (ingest's clock, right before its write);
- **queued**: the id of the incident's first job on the channel's stream (Valkey's
  clock when the fan-out's transaction ran);
- **started**: the ``started_at`` of the channel's ``sent`` record (the dispatcher's
  clock, once the delivery was claimed);
- **arrived**: the sink's receipt, moved to the wall clock by the send's own stamps.

So the stages are: *ingest* (HTTP, validation, correlation), *fan-out* (the incident's
write and fsync, the dispatcher's read, plan, render, the jobs' transaction),
*pick-up* (that transaction's fsync, the channel's read, the claim) and *send* (the
rendering's load, the checks, the provider call, up to the sink's receipt).

:func:`write_round_trips` calibrates them: an ``XADD`` paced like the incidents, from
an otherwise idle client, with the run's ``appendfsync`` and without any.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError
from redis.asyncio import Redis

from bench.report import summary_ms
from shared.contracts import DeliveryJob
from shared.redis_values import data_entries
from shared.streams import PREFIX, delivery_stream, incident_key

STAGES: Final = ("ingest", "fan-out", "pick-up", "send")
PROBE_STREAM: Final = f"{PREFIX}:bench:round-trips"


@dataclass(frozen=True)
class Moments:
    """One incident's path on one channel, unix seconds."""

    posted: float
    opened: float
    queued: float
    started: float
    arrived: float

    def stages(self) -> tuple[float, float, float, float]:
        return (
            self.opened - self.posted,
            self.queued - self.opened,
            self.started - self.queued,
            self.arrived - self.started,
        )


def breakdown(paths: Iterable[Moments]) -> dict[str, dict[str, float | int | None]]:
    """Each stage's n, p50, p99 and max in ms."""
    columns: list[list[float]] = [[] for _ in STAGES]
    for path in paths:
        for column, seconds in zip(columns, path.stages(), strict=True):
            column.append(seconds)
    return {stage: summary_ms(column) for stage, column in zip(STAGES, columns, strict=True)}


async def queued_at(redis: Redis, channel: str, after: str) -> dict[str, float]:
    """Incident id -> when its first job on ``channel`` after ``after`` was queued."""
    queued: dict[str, float] = {}
    raw = await redis.xrange(delivery_stream(channel), min=f"({after}")
    for entry_id, payload in data_entries(raw):
        try:
            job = DeliveryJob.model_validate_json(payload)
        except ValidationError:
            continue
        queued.setdefault(job.incident_id, int(entry_id.split("-")[0]) / 1000)
    return queued


async def opened_at(redis: Redis, incident_ids: Iterable[str]) -> dict[str, float]:
    """Incident id -> its ``opened_at``, from the stored incidents."""
    ids = list(incident_ids)
    async with redis.pipeline(transaction=False) as pipe:
        for incident_id in ids:
            pipe.get(incident_key(incident_id))
        stored: list[Any] = await pipe.execute()
    opened: dict[str, float] = {}
    for incident_id, raw in zip(ids, stored, strict=True):
        if raw:
            opened[incident_id] = _opened(raw)
    return opened


def _opened(raw: bytes | str) -> float:
    return datetime.fromisoformat(json.loads(raw)["opened_at"]).timestamp()


def paths(
    posted: Mapping[str, float],
    opened: Mapping[str, float],
    queued: Mapping[str, float],
    started: Mapping[str, float],
    arrived: Mapping[str, float],
) -> list[Moments]:
    """The incidents every moment is known for."""
    known = posted.keys() & opened.keys() & queued.keys() & started.keys() & arrived.keys()
    return [Moments(posted[k], opened[k], queued[k], started[k], arrived[k]) for k in sorted(known)]


async def write_round_trips(redis: Redis, rate: float, count: int) -> list[float]:
    """Seconds per ``XADD`` round trip, ``count`` of them paced at ``rate`` per second."""
    took: list[float] = []
    try:
        for _ in range(count):
            began = time.perf_counter()
            await redis.xadd(PROBE_STREAM, {"probe": b"x" * 300})
            took.append(time.perf_counter() - began)
            await asyncio.sleep(max(0.0, 1 / rate - took[-1]))  # paced, like the incidents
    finally:
        await redis.delete(PROBE_STREAM)
    return took
