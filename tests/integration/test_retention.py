"""Age-based stream retention on a real Valkey: old entries go, unless a consumer group
has not read or not acknowledged them; the delivery log's incident index follows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_query import (
    INDEXED_INCIDENTS,
    DeliveryQuery,
    StreamId,
    incident_index_key,
    parse_id,
)
from shared.clock import ManualClock
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.redis_values import as_text
from shared.retention import RetentionTask, trim_by_age, trim_stream
from shared.streams import DELIVERY_LOG
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
STREAM = "clarion:test-retention"
GROUP = "readers"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def add_days_ago(redis: Redis, *days: float) -> list[str]:
    """One entry per age (in days before NOW), oldest first; returns their ids."""
    added = []
    for age in days:
        entry_id = await redis.xadd(STREAM, {"n": str(age)}, id=f"{ms(NOW - age * DAY)}-0")
        added.append(as_text(entry_id))
    return added


async def stream_ids(redis: Redis, key: str) -> list[str]:
    return [as_text(entry_id) for entry_id, _ in await redis.xrange(key) or ()]


async def read_all(redis: Redis, count: int) -> list[str]:
    """Read ``count`` new entries as one consumer of GROUP (they become pending)."""
    reply: Any = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=count)
    return [entry_id.decode() for entry_id, _ in reply[0][1]]


async def test_without_groups_only_age_counts(redis: Redis) -> None:
    old = await add_days_ago(redis, 10, 8)
    young = await add_days_ago(redis, 6, 1)

    removed = await trim_by_age(redis, STREAM, timedelta(days=7), NOW)

    assert removed == 2
    assert await stream_ids(redis, STREAM) == young
    assert not set(old) & set(await stream_ids(redis, STREAM))


async def test_a_group_that_has_not_read_old_entries_keeps_them(redis: Redis) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    added = await add_days_ago(redis, 10, 9, 8, 1)

    untouched = await trim_by_age(redis, STREAM, timedelta(days=7), NOW)
    read = await read_all(redis, 2)  # the two oldest, now pending
    while_pending = await trim_by_age(redis, STREAM, timedelta(days=7), NOW)
    await redis.xack(STREAM, GROUP, *read)
    after_ack = await trim_by_age(redis, STREAM, timedelta(days=7), NOW)

    assert untouched == 0
    assert while_pending == 0
    assert after_ack == 2  # read and acknowledged: they may go; the unread 8-day-old stays
    assert await stream_ids(redis, STREAM) == added[2:]


async def test_an_unacknowledged_entry_holds_back_everything_after_it(redis: Redis) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    added = await add_days_ago(redis, 12, 11, 10, 9, 1)
    read = await read_all(redis, 5)
    await redis.xack(STREAM, GROUP, read[0], read[1], read[3], read[4])  # not the 10-day-old

    removed = await trim_by_age(redis, STREAM, timedelta(days=7), NOW)

    assert removed == 2
    assert await stream_ids(redis, STREAM) == added[2:]


async def test_the_slowest_group_decides(redis: Redis) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    added = await add_days_ago(redis, 12, 11, 10, 1)
    await redis.xgroup_create(STREAM, "laggard", id=added[0])  # has read the oldest only
    await redis.xack(STREAM, GROUP, *await read_all(redis, 4))

    trimmed = await trim_stream(redis, STREAM, timedelta(days=7), NOW)

    assert trimmed.removed == 1
    assert trimmed.cut is not None
    assert parse_id(trimmed.cut) == (ms(NOW - 12 * DAY), 1)  # right after what it read
    assert await stream_ids(redis, STREAM) == added[1:]


async def test_a_missing_stream_is_left_alone(redis: Redis) -> None:
    trimmed = await trim_stream(redis, STREAM, timedelta(days=7), NOW)

    assert (trimmed.removed, trimmed.cut) == (0, None)
    assert await redis.exists(STREAM) == 0


def delivery(n: int, incident_id: str, days_ago: float) -> DeliveryRecorded:
    at = NOW - days_ago * DAY + timedelta(seconds=n)
    return DeliveryRecorded(
        delivery_id=f"d-{n}",
        incident_id=incident_id,
        event_id=f"ev-{n}",
        channel="email",
        recipient="alice@example.com",
        status=DeliveryStatus.SENT,
        attempt=1,
        started_at=at,
        recorded_at=at,
    )


async def index_ids(redis: Redis, incident_id: str) -> list[StreamId]:
    key = incident_index_key(incident_id)
    return [parse_id(entry_id) for entry_id, _ in await redis.xrange(key) or ()]


async def test_the_delivery_log_and_its_incident_index_are_trimmed_to_the_same_cut(
    redis: Redis,
) -> None:
    log = DeliveryLog(redis)
    for n, (incident, age) in enumerate(
        [("inc-old", 40), ("inc-old", 35), ("inc-long", 33), ("inc-long", 2), ("inc-new", 1)]
    ):
        await log.record(delivery(n, incident, age))

    removed, index_removed = await log.trim(timedelta(days=30), NOW)

    assert (removed, index_removed) == (3, 3)
    assert await redis.exists(incident_index_key("inc-old")) == 0
    members = {as_text(m) for m in await redis.zrange(INDEXED_INCIDENTS, 0, -1)}
    assert members == {"inc-long", "inc-new"}
    log_ids = [parse_id(i) for i, _ in await redis.xrange(DELIVERY_LOG) or ()]
    assert await index_ids(redis, "inc-long") == [log_ids[0]]
    assert await index_ids(redis, "inc-new") == [log_ids[1]]
    assert [
        r.delivery_id for r in (await log.query(DeliveryQuery(incident_id="inc-long"))).deliveries
    ] == ["d-3"]
    assert (await log.query(DeliveryQuery(incident_id="inc-old"))).deliveries == []


async def test_the_task_keeps_what_a_group_of_the_log_has_not_read_in_the_index_too(
    redis: Redis,
) -> None:
    log = DeliveryLog(redis)
    await redis.xgroup_create(DELIVERY_LOG, "auditor", id="0", mkstream=True)
    for n, age in enumerate([40, 35, 1]):
        await log.record(delivery(n, "inc-1", age))
    task = RetentionTask(
        redis,
        {DELIVERY_LOG: timedelta(days=30)},
        clock=ManualClock(NOW),
        interval=timedelta(hours=1),
        derived={DELIVERY_LOG: log},
    )

    [kept] = await task.run_once()
    reply: Any = await redis.xreadgroup("auditor", "a", {DELIVERY_LOG: ">"}, count=1)
    await redis.xack(DELIVERY_LOG, "auditor", reply[0][1][0][0])
    [trimmed] = await task.run_once()

    assert kept.removed == 0
    assert trimmed.removed == 1  # only the one the auditor has read and acknowledged
    log_ids = [parse_id(i) for i, _ in await redis.xrange(DELIVERY_LOG) or ()]
    assert len(log_ids) == 2
    assert await index_ids(redis, "inc-1") == log_ids
    page = await log.query(DeliveryQuery(incident_id="inc-1"))
    assert [r.delivery_id for r in page.deliveries] == ["d-2", "d-1"]


async def test_the_task_trims_at_start_and_stops_at_once(redis: Redis) -> None:
    await add_days_ago(redis, 10, 1)
    other = "clarion:test-retention-other"
    await redis.xadd(other, {"n": "1"}, id=f"{ms(NOW - 3 * DAY)}-0")
    task = RetentionTask(
        redis,
        {STREAM: timedelta(days=7), other: timedelta(days=2)},
        clock=ManualClock(NOW),
        interval=timedelta(hours=1),
    )

    task.start()
    try:

        async def trimmed() -> bool:
            return await redis.xlen(STREAM) == 1 and await redis.xlen(other) == 0

        await eventually(trimmed, what="the first retention run")
    finally:
        await task.stop()  # does not wait for the hour to pass

    assert await redis.xlen(STREAM) == 1


async def test_the_interval_must_be_positive(redis: Redis) -> None:
    with pytest.raises(ValueError, match="positive"):
        RetentionTask(
            redis,
            {STREAM: DAY},
            clock=ManualClock(NOW),
            interval=timedelta(0),
        )


async def test_a_key_that_is_not_a_stream_does_not_stop_the_others(redis: Redis) -> None:
    await redis.set("clarion:test-not-a-stream", "x")
    await add_days_ago(redis, 10, 1)
    task = RetentionTask(
        redis,
        {"clarion:test-not-a-stream": DAY, STREAM: timedelta(days=7)},
        clock=ManualClock(NOW),
        interval=timedelta(hours=1),
    )

    done = await task.run_once()

    assert [(t.stream, t.removed) for t in done] == [(STREAM, 1)]
    assert await redis.get("clarion:test-not-a-stream") == b"x"
