"""The dispatch records a channel worker sends from, remembered a few seconds
(CachedRecords), against a real server: one load for many jobs, never older than its
time to live, and a record not found is looked for again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from services.dispatcher.dispatch_record import DispatchRecords, Rendering
from services.dispatcher.record_cache import CachedRecords
from services.dispatcher.rendering.messages import RenderedMessage
from shared.contracts import Incident
from shared.plan import ChannelName
from shared.streams import dispatch_record_key
from tests.support.builders import make_incident

pytestmark = pytest.mark.integration

EMAIL = RenderedMessage(ChannelName.EMAIL, title="Investigating", text="words\n", html="<p>w</p>")
INCIDENT = make_incident(id="inc-1", opened_at=datetime(2026, 11, 23, 14, 0, tzinfo=UTC))


class CountedRecords(DispatchRecords):
    loads = 0

    async def load(
        self, event_id: str, audience: str, channel: str
    ) -> tuple[Incident, Rendering] | None:
        self.loads += 1
        return await super().load(event_id, audience, channel)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_jobs_loading_one_record_at_once_share_one_load(redis: Redis) -> None:
    records = CountedRecords(redis, 60)
    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})
    cached = CachedRecords(records)

    loaded = await asyncio.gather(*(cached.load("ev-1", "customers", "email") for _ in range(20)))

    assert loaded == [(INCIDENT, EMAIL)] * 20
    assert records.loads == 1
    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    assert records.loads == 1


async def test_a_kept_record_is_never_older_than_its_time_to_live(redis: Redis) -> None:
    records = CountedRecords(redis, 60)
    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})
    clock = Clock()
    cached = CachedRecords(records, ttl=5.0, monotonic=clock)
    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    await redis.delete(dispatch_record_key("ev-1"))  # the retention ran out

    clock.now += 4.9
    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    clock.now += 0.2
    assert await cached.load("ev-1", "customers", "email") is None


async def test_a_record_not_found_is_looked_for_again(redis: Redis) -> None:
    records = CountedRecords(redis, 60)
    cached = CachedRecords(records)
    assert await cached.load("ev-1", "customers", "email") is None

    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})  # an approval's

    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    assert records.loads == 2


async def test_only_the_most_recent_records_are_kept(redis: Redis) -> None:
    records = CountedRecords(redis, 60)
    for event in ("ev-1", "ev-2", "ev-3"):
        await records.save(event, INCIDENT, {("customers", "email"): EMAIL})
    cached = CachedRecords(records, keep=2)

    for event in ("ev-1", "ev-2", "ev-3", "ev-3", "ev-2", "ev-1"):
        await cached.load(event, "customers", "email")

    assert records.loads == 4  # ev-1 was pushed out by ev-3, and loaded again


async def test_a_prefetched_record_is_loaded_once_for_the_job_that_asks(redis: Redis) -> None:
    records = CountedRecords(redis, 60)
    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})
    cached = CachedRecords(records)

    cached.prefetch("ev-1", "customers", "email")
    cached.prefetch("ev-1", "customers", "email")  # already loading: no second load

    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    cached.prefetch("ev-1", "customers", "email")  # kept: nothing to do
    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    assert records.loads == 1


class FlakyRecords(CountedRecords):
    """Its first load fails (a dropped connection), later ones work."""

    async def load(
        self, event_id: str, audience: str, channel: str
    ) -> tuple[Incident, Rendering] | None:
        if self.loads == 0:
            self.loads += 1
            raise ConnectionError("the server went away")
        return await super().load(event_id, audience, channel)


async def test_a_failed_prefetch_is_forgotten_and_the_next_load_tries_again(
    redis: Redis,
) -> None:
    records = FlakyRecords(redis, 60)
    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})
    cached = CachedRecords(records)

    cached.prefetch("ev-1", "customers", "email")
    with pytest.raises(ConnectionError):  # the job shares the prefetch, and its failure
        await cached.load("ev-1", "customers", "email")

    assert await cached.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)
    assert records.loads == 2
