"""The scheduler on Redis' clock: hosts whose clocks are 30 s apart fire each due item
once, never early, and neither starves (real Valkey; the hosts' clocks are fakes
skewed by +/-30 s that feed a :class:`RedisTimeClock`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from services.scheduler.cadence import ScheduleItem, ceil_ms, floor_ms
from services.scheduler.schedule_store import ScheduleStore, update_schedule
from services.scheduler.scheduling import schedule_incident_event
from services.scheduler.ticker import Ticker
from shared.clock import ClockNotSynced, ManualClock, MonotonicWallClock, RedisTimeClock
from shared.contracts import UpdateDue
from shared.settings import Settings
from tests.support.builders import T0, make_incident, make_incident_opened, store_incident
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

PLAN = make_plan()  # SEV1 every 30 min: a fired item is not due again during a test
SKEW = timedelta(seconds=30)
LEASE = timedelta(seconds=30)
SLACK = timedelta(milliseconds=250)
"""How far two reads of Redis time around an operation may stray on a loaded machine."""


class SkewedClock:
    """This host's wall clock, ``skew`` off the true time."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


class Recorder:
    """A publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[UpdateDue] = []

    async def publish(self, due: UpdateDue) -> None:
        self.sent.append(due)


async def server_now(redis: Redis) -> datetime:
    seconds, microseconds = await redis.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=microseconds)


async def arm(
    store: ScheduleStore[ScheduleItem], redis: Redis, incident_id: str, due: datetime
) -> None:
    """An open SEV1 incident whose next update is due at ``due``."""
    opened_at = due - timedelta(minutes=1)
    incident = make_incident(id=incident_id, opened_at=opened_at)
    await store_incident(redis, incident)
    event = make_incident_opened(
        incident, event_id=f"{incident_id}:opened", occurred_at=opened_at, next_update_at=due
    )
    await schedule_incident_event(store, event)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(scheduler_lease_ms=LEASE // timedelta(milliseconds=1))


def ticker(redis: Redis, clock: RedisTimeClock, publisher: Recorder, settings: Settings) -> Ticker:
    return Ticker(
        update_schedule(redis), publisher, redis, settings, clock, plan=PLAN, batch_size=7
    )


# --- The clock itself --------------------------------------------------------------


class FakeServer:
    """Answers TIME with ``server_time``; the round trip takes ``round_trip`` on ``local``."""

    def __init__(self, local: ManualClock, server_time: datetime, round_trip: timedelta) -> None:
        self.local = local
        self.server_time = server_time
        self.round_trip = round_trip
        self.fail = False

    async def time(self) -> tuple[int, int]:
        if self.fail:
            raise ConnectionError("Redis went away")
        self.local.advance(self.round_trip)
        since_epoch = self.server_time - datetime(1970, 1, 1, tzinfo=UTC)
        return divmod(since_epoch // timedelta(microseconds=1), 1_000_000)


async def test_the_offset_is_measured_at_the_middle_of_the_round_trip() -> None:
    local = ManualClock(T0)
    server = FakeServer(local, T0 + timedelta(seconds=42), round_trip=timedelta(milliseconds=200))
    clock = RedisTimeClock(server, local)

    await clock.sync()

    # TIME was read halfway through the 200 ms round trip, which has now ended.
    assert clock.round_trip == timedelta(milliseconds=200)
    assert clock.offset == timedelta(seconds=42) - timedelta(milliseconds=100)
    assert clock.now() == T0 + timedelta(seconds=42, milliseconds=100)
    local.advance(timedelta(seconds=5))
    assert clock.now() == T0 + timedelta(seconds=47, milliseconds=100)


async def test_now_before_the_first_sync_refuses() -> None:
    local = ManualClock(T0)
    clock = RedisTimeClock(FakeServer(local, T0, timedelta(0)), local)

    with pytest.raises(ClockNotSynced):
        clock.now()


async def test_a_failed_sync_raises_and_keeps_the_last_offset() -> None:
    local = ManualClock(T0)
    server = FakeServer(local, T0 - SKEW, timedelta(0))
    clock = RedisTimeClock(server, local)
    await clock.sync()
    server.fail = True

    with pytest.raises(ConnectionError):
        await clock.sync()

    assert clock.offset == -SKEW
    assert clock.now() == T0 - SKEW


async def test_a_local_clock_going_back_during_a_sync_keeps_the_last_offset() -> None:
    local = ManualClock(T0)
    server = FakeServer(local, T0 + SKEW, timedelta(0))
    clock = RedisTimeClock(server, local)
    await clock.sync()
    server.round_trip = -timedelta(seconds=10)  # the host's clock stepped back meanwhile
    server.server_time = T0 + timedelta(hours=1)

    await clock.sync()

    assert clock.offset == SKEW


def test_the_default_local_clock_moves_only_with_the_monotonic_clock() -> None:
    ticks = [100.0]
    walls = iter([T0, T0 + timedelta(hours=3)])  # a later wall-clock step is never read
    clock = MonotonicWallClock(wall=lambda: next(walls), monotonic=lambda: ticks[0])

    ticks[0] = 102.5

    assert clock.now() == T0 + timedelta(seconds=2.5)
    assert clock.now() == T0 + timedelta(seconds=2.5)


async def test_clocks_skewed_both_ways_read_the_servers_time(redis: Redis) -> None:
    fast = RedisTimeClock(redis, SkewedClock(SKEW))
    slow = RedisTimeClock(redis, SkewedClock(-SKEW))

    before = await server_now(redis)
    await asyncio.gather(fast.sync(), slow.sync())
    readings = [fast.now(), slow.now()]
    after = await server_now(redis)

    assert fast.offset is not None
    assert abs(fast.offset + SKEW) < SLACK
    assert slow.offset is not None
    assert abs(slow.offset - SKEW) < SLACK
    for reading in readings:
        assert before - SLACK <= reading <= after + SLACK


# --- Tickers on skewed hosts -------------------------------------------------------


async def test_skewed_tickers_fire_each_due_item_once_and_nothing_early(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    store = update_schedule(redis)
    now = await server_now(redis)
    due = [f"due-{n}" for n in range(60)]
    early = [f"early-{n}" for n in range(10)]  # due within the hosts' skew: not yet
    for incident_id in due:
        await arm(store, redis, incident_id, now - timedelta(seconds=1))
    for incident_id in early:
        await arm(store, redis, incident_id, now + timedelta(seconds=15))
    fast_local = SkewedClock(SKEW)
    other = Redis.from_url(redis_url)
    try:
        fast, slow = Recorder(), Recorder()
        tickers = [
            ticker(redis, RedisTimeClock(redis, fast_local), fast, settings),
            ticker(other, RedisTimeClock(other, SkewedClock(-SKEW)), slow, settings),
        ]

        counts = await asyncio.gather(*(t.tick() for t in tickers))
        again = await asyncio.gather(*(t.tick() for t in tickers))
        fired_by = await server_now(redis)
    finally:
        await other.aclose()

    assert sum(counts) == len(due)
    assert again == [0, 0]
    assert len(fast.sent) > 0  # neither starves: the slow clock's host fires too ...
    assert len(slow.sent) > 0  # ... and the fast one does not take everything
    fired = Counter(d.incident_id for d in fast.sent + slow.sent)
    assert set(fired) == set(due)
    assert set(fired.values()) == {1}
    for update in fast.sent + slow.sent:
        # On Redis' time: never before the due time, never 30 s off.
        assert update.due_at <= update.emitted_at <= fired_by + SLACK
        assert update.next_update_at == update.emitted_at + timedelta(minutes=30)
    for incident_id in early:
        assert await store.due_score(incident_id) == ceil_ms(now + timedelta(seconds=15))
    # On its own clock the fast host would have fired them 15 s early.
    taken = await store.claim(fast_local.now(), LEASE, limit=100)
    assert {c.incident_id for c in taken} == set(early)


async def test_a_lease_taken_on_a_slow_host_holds_against_a_fast_host(
    redis: Redis, settings: Settings
) -> None:
    store = update_schedule(redis)
    await arm(store, redis, "inc-held", await server_now(redis) - timedelta(seconds=1))
    slow_clock = RedisTimeClock(redis, SkewedClock(-SKEW))
    await slow_clock.sync()

    before = await server_now(redis)
    (held,) = await store.claim(slow_clock.now(), LEASE, limit=10)  # ... still firing it
    after = await server_now(redis)

    # The lease is on Redis' time, not 30 s short on the slow host's.
    lease_ms = LEASE // timedelta(milliseconds=1)
    assert held.lease_score == await store.due_score("inc-held")
    assert floor_ms(before - SLACK) + lease_ms <= held.lease_score
    assert held.lease_score <= floor_ms(after + SLACK) + lease_ms
    fast_local = SkewedClock(SKEW)
    publisher = Recorder()
    assert await ticker(redis, RedisTimeClock(redis, fast_local), publisher, settings).tick() == 0
    assert publisher.sent == []
    # On its own clock the fast host would think the lease ran out and fire it again.
    (taken,) = await store.claim(fast_local.now(), LEASE, limit=10)
    assert taken.incident_id == "inc-held"


async def test_a_slow_host_fires_what_is_due_on_redis_time(
    redis: Redis, settings: Settings
) -> None:
    store = update_schedule(redis)
    now = await server_now(redis)
    for incident_id in ("inc-a", "inc-b", "inc-c"):
        await arm(store, redis, incident_id, now - timedelta(seconds=1))
    slow_local = SkewedClock(-SKEW)
    assert await store.claim(slow_local.now(), LEASE, limit=10) == []  # not due on its clock

    publisher = Recorder()
    fired = await ticker(redis, RedisTimeClock(redis, slow_local), publisher, settings).tick()

    assert fired == 3
    assert sorted(d.incident_id for d in publisher.sent) == ["inc-a", "inc-b", "inc-c"]
    for update in publisher.sent:
        assert update.emitted_at >= update.due_at
        assert update.emitted_at - update.due_at < timedelta(seconds=1) + SLACK * 4
