"""Three scheduler processes on one Valkey fire each due item exactly once, and the
claims of an instance SIGKILLed while it holds leases fire again once the lease
has run out.

Items are written in one pipeline each (one by one they take longer than the
time to their due, on a Valkey that fsyncs every write): update-due items for
stored open SEV1 incidents, in the scheduler's schedule keys; retries into
``RETRY_DUE``/``RETRY_ITEMS`` as the JSON of the ``ScheduledDelivery`` contract,
as the dispatcher writes them. Fires are counted
on the target streams: ``UpdateDue`` by event id on ``clarion:updates-due``,
delivery jobs by delivery id on the channels' delivery streams.

The SIGKILL tests make sure the leases seen are the victim's: the other two
instances are paused (SIGSTOP) while the victim claims, the victim is killed as
soon as a lease appears on the due set, and the others resume (SIGCONT). By
design an item the victim published but had not yet completed goes out a second
time after the lease, with the same event id (an update) or the same job (a
retry; only the job that finds ``retry:N`` sends). The tests assert exactly
that: one fire per item, plus one repeat for each item published-but-not-
completed at the kill, and nothing of the victim's fired again before its lease
ran out.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from services.dispatcher.delivery_state import retry_state
from services.scheduler.cadence import ScheduleItem, ceil_ms, update_event_id
from services.scheduler.schedule_store import update_schedule
from shared.contracts import DeliveryJob, ScheduledDelivery, Severity, UpdateDue
from shared.redis_values import as_text, data_entries
from shared.streams import (
    INCIDENTS_BY_TIME,
    RETRY_DUE,
    RETRY_ITEMS,
    SCHEDULE_DUE,
    SCHEDULE_ITEMS,
    UPDATES_DUE,
    delivery_stream,
    incident_key,
)
from tests.support.builders import make_incident
from tests.support.plans import write_plan
from tests.support.processes import ServiceProcess, free_port
from tests.support.streams import stream_bodies
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

INSTANCES = 3
TICK_MS = 50
LEASE_MS = 2_000
LEASE = timedelta(milliseconds=LEASE_MS)
CHANNELS = ("email", "sms")
CLOCK_TOLERANCE_MS = 50
"""How far two instances' Redis-synced clocks (and Redis' own) may disagree, at most."""


@pytest.fixture
def start_schedulers(
    redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., list[ServiceProcess]]]:
    started: list[ServiceProcess] = []
    plan = write_plan(tmp_path)  # SEV1: an update every 30 min, so each item fires once here
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}

    def start(count: int = INSTANCES) -> list[ServiceProcess]:
        instances = []
        for n in range(len(started), len(started) + count):
            port = free_port()
            env = {
                **base,
                "CLARION_REDIS_URL": redis_url,
                "CLARION_PLAN": str(plan),
                "CLARION_SCHEDULER_PORT": str(port),
                "CLARION_SCHEDULER_TICK_MS": str(TICK_MS),
                "CLARION_SCHEDULER_LEASE_MS": str(LEASE_MS),
                "CLARION_POLLING_INTERVAL_MS": "100",
                "CLARION_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
            log_dir = tmp_path / f"scheduler-{n}"
            log_dir.mkdir()
            instances.append(
                ServiceProcess("scheduler", env, log_dir, f"http://127.0.0.1:{port}/readyz")
            )
        started.extend(instances)
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_ready()
        return instances

    yield start
    for instance in started:
        resume(instance)
        instance.stop()


def pause(instance: ServiceProcess) -> None:
    assert instance.process is not None
    instance.process.send_signal(signal.SIGSTOP)


def resume(instance: ServiceProcess) -> None:
    if instance.process is not None and instance.process.poll() is None:
        instance.process.send_signal(signal.SIGCONT)


async def redis_now(redis: Redis) -> datetime:
    seconds, microseconds = await redis.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=microseconds)


def logged(instance: ServiceProcess, event: str) -> list[dict[str, object]]:
    """The instance's log records of ``event`` (``update.due``, ``retry.due``, ...)."""
    records = []
    for line in instance.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            records.append(record)
    return records


# Update-due items


async def arm_updates(redis: Redis, count: int, first_due: datetime, spread: timedelta) -> None:
    """``count`` open SEV1 incidents, update #1 of each due in ``[first_due, + spread)``.

    One pipeline, laid out as ``ScheduleStore`` keeps items (documented there): the
    item JSON in ``SCHEDULE_ITEMS``, its due time (ms, rounded up) in ``SCHEDULE_DUE``.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(count):
            incident = make_incident(
                id=f"inc-{n:03}", key=f"group-{n:03}", opened_at=first_due - timedelta(minutes=30)
            )
            item = ScheduleItem(
                incident_id=incident.id,
                sequence=1,
                severity=Severity.CRITICAL,
                basis_at=incident.opened_at,
                due_at=first_due + spread * n / count,
            )
            pipe.set(incident_key(incident.id), incident.model_dump_json())
            pipe.zadd(INCIDENTS_BY_TIME, {incident.id: incident.opened_at.timestamp()})
            pipe.hset(SCHEDULE_ITEMS, incident.id, item.model_dump_json())
            pipe.zadd(SCHEDULE_DUE, {incident.id: ceil_ms(item.due_at)})
        await pipe.execute()
    stored = await update_schedule(redis).get(f"inc-{count - 1:03}")  # as the store reads it
    assert stored is not None
    assert stored.due_at == first_due + spread * (count - 1) / count


async def scores(redis: Redis, key: str, low: int | str = "-inf") -> dict[str, int]:
    """Members of the due set ``key`` with a score from ``low``, and their scores."""
    pairs = cast(
        "list[tuple[bytes, float]]", await redis.zrangebyscore(key, low, "+inf", withscores=True)
    )
    return {as_text(member): int(score) for member, score in pairs}


async def published_updates(redis: Redis) -> list[UpdateDue]:
    return [UpdateDue.model_validate_json(b) for b in await stream_bodies(redis, UPDATES_DUE)]


async def update_items(redis: Redis) -> dict[str, ScheduleItem]:
    raw = await redis.hgetall(SCHEDULE_ITEMS)
    return {as_text(k): ScheduleItem.model_validate_json(v) for k, v in raw.items()}


async def all_updates_went_out(redis: Redis, count: int) -> bool:
    items = await update_items(redis)
    return len(items) == count and all(item.sequence == 2 for item in items.values())


# Retry items


def retry_job(n: int) -> DeliveryJob:
    channel = CHANNELS[n % len(CHANNELS)]
    return DeliveryJob(
        delivery_id=f"d-{n:03}",
        event_id="inc-r:1:incident.opened",
        event_type="incident.opened",
        incident_id="inc-r",
        channel=channel,
        recipient=f"user{n}@example.com" if channel == "email" else f"+1415555{n:04}",
        audience="customers",
        occurred_at=datetime(2026, 11, 23, 14, 30, tzinfo=UTC),
        attempt=2,
        last_attempt=3,
        expects=retry_state(2),
    )


async def arm_retries(
    redis: Redis, count: int, first_due: datetime, spread: timedelta
) -> dict[str, ScheduledDelivery]:
    """What the dispatcher writes when a send fails: the job, due in ``[first_due, + spread)``."""
    scheduled = {}
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(count):
            job = retry_job(n)
            due = first_due + spread * n / count
            item = ScheduledDelivery(incident_id=job.incident_id, due_at=due, job=job)
            pipe.zadd(RETRY_DUE, {job.delivery_id: ceil_ms(due)})
            pipe.hset(RETRY_ITEMS, job.delivery_id, item.model_dump_json())
            scheduled[job.delivery_id] = item
        await pipe.execute()
    return scheduled


async def requeued_jobs(redis: Redis) -> list[tuple[int, DeliveryJob]]:
    """Every job put back on a delivery stream, with the ms (Redis time) of its XADD."""
    jobs = []
    for channel in CHANNELS:
        for entry_id, payload in data_entries(await redis.xrange(delivery_stream(channel))):
            jobs.append((int(entry_id.split("-")[0]), DeliveryJob.model_validate_json(payload)))
    return jobs


async def no_retries_left(redis: Redis) -> bool:
    return await redis.zcard(RETRY_DUE) == 0 and await redis.hlen(RETRY_ITEMS) == 0


# Three instances, nobody dies

UPDATES = 150
RETRIES = 150


async def test_scheduler_three_instances_fire_each_item_exactly_once(
    redis: Redis, start_schedulers: Callable[..., list[ServiceProcess]]
) -> None:
    instances = await asyncio.to_thread(start_schedulers)
    first_due = await redis_now(redis) + timedelta(milliseconds=300)
    spread = timedelta(milliseconds=1500)  # many ticks of every instance
    await arm_updates(redis, UPDATES, first_due, spread)
    retries = await arm_retries(redis, RETRIES, first_due, spread)

    await eventually(lambda: all_updates_went_out(redis, UPDATES), within=20, what="updates")
    await eventually(lambda: no_retries_left(redis), within=20, what="retries fired")
    for instance in instances:
        instance.stop()

    updates = await published_updates(redis)
    by_event = Counter(u.event_id for u in updates)
    assert set(by_event) == {update_event_id(f"inc-{n:03}", 1) for n in range(UPDATES)}
    assert set(by_event.values()) == {1}, by_event.most_common(3)
    for update in updates:
        assert update.emitted_at >= update.due_at, f"{update.event_id} fired early"

    requeued = await requeued_jobs(redis)
    by_delivery = Counter(job.delivery_id for _, job in requeued)
    assert set(by_delivery) == set(retries)
    assert set(by_delivery.values()) == {1}, by_delivery.most_common(3)
    for ms, job in requeued:
        assert job == retries[job.delivery_id].job
        assert ms >= ceil_ms(retries[job.delivery_id].due_at) - CLOCK_TOLERANCE_MS, "early"

    for instance in instances:  # none failed and waited out its lease
        assert logged(instance, "schedule.fire_failed") == []
        assert logged(instance, "retry.fire_failed") == []
    # Every instance took its share (a lost tick loop would show here).
    updates_by_instance = [len(logged(i, "update.due")) for i in instances]
    retries_by_instance = [len(logged(i, "retry.due")) for i in instances]
    assert sum(updates_by_instance) == UPDATES, updates_by_instance
    assert sum(retries_by_instance) == RETRIES, retries_by_instance
    assert sum(n > 0 for n in updates_by_instance) >= 2, updates_by_instance
    assert sum(n > 0 for n in retries_by_instance) >= 2, retries_by_instance


# One instance SIGKILLed while it holds leases

KILL_ITEMS = 200
FULL_BATCHES = 300


@pytest.fixture
async def victim_alone(
    start_schedulers: Callable[..., list[ServiceProcess]],
) -> tuple[ServiceProcess, list[ServiceProcess]]:
    """Three running instances; the last two paused until the test resumes them."""
    victim, *others = await asyncio.to_thread(start_schedulers)
    for other in others:
        pause(other)
    return victim, others


async def due_after_writing(redis: Redis) -> datetime:
    """A due time for items written now: only once they are all written may one be claimed."""
    return await redis_now(redis) + timedelta(seconds=1)


async def kill_on_first_lease(
    redis: Redis, victim: ServiceProcess, due_key: str, due_ms: int
) -> None:
    """Wait for a score past every due time (a lease, or a completed item), then SIGKILL."""

    async def leased() -> int:
        return int(await redis.zcount(due_key, due_ms + 1, "+inf"))

    await eventually(leased, within=15, interval=0, what="the victim's first claim")
    victim.kill()


async def test_scheduler_killed_instance_updates_fire_again_after_its_lease(
    redis: Redis, victim_alone: tuple[ServiceProcess, list[ServiceProcess]]
) -> None:
    victim, others = victim_alone
    due = await due_after_writing(redis)
    await arm_updates(redis, KILL_ITEMS, due, timedelta(0))  # all due at once
    assert await redis_now(redis) < due, "writing took too long: the victim began early"

    await kill_on_first_lease(redis, victim, SCHEDULE_DUE, ceil_ms(due))
    items = await update_items(redis)
    due_scores = await scores(redis, SCHEDULE_DUE)
    published_at_kill = {u.event_id for u in await published_updates(redis)}
    lease_ends = {
        incident_id: due_scores[incident_id]
        for incident_id, item in items.items()
        if item.sequence == 1 and due_scores[incident_id] > ceil_ms(due)
    }
    assert lease_ends, "the victim died holding no lease: nothing to prove"
    assert all(end <= ceil_ms(due) + LEASE_MS + 10_000 for end in lease_ends.values())
    for other in others:
        resume(other)

    await eventually(lambda: all_updates_went_out(redis, KILL_ITEMS), within=20, what="updates")
    for instance in others:
        instance.stop()

    updates = await published_updates(redis)
    by_event = Counter(u.event_id for u in updates)
    assert set(by_event) == {update_event_id(f"inc-{n:03}", 1) for n in range(KILL_ITEMS)}
    repeated = {update_event_id(i, 1) for i in lease_ends} & published_at_kill
    assert {e for e, n in by_event.items() if n > 1} == repeated  # published, not completed
    assert all(by_event[e] == 2 for e in repeated)
    for update in updates:
        assert update.emitted_at >= update.due_at
        if update.incident_id in lease_ends and update.event_id not in published_at_kill:
            # The victim's claim went out once, by another instance, after the lease.
            assert by_event[update.event_id] == 1
            emitted_ms = ceil_ms(update.emitted_at)
            assert emitted_ms >= lease_ends[update.incident_id] - CLOCK_TOLERANCE_MS
    print(  # the report reads this with -s
        f"\nupdates: {len(lease_ends)} leases held at the kill, "
        f"{len(published_at_kill)} updates out before it, {len(repeated)} repeated after the lease"
    )


async def test_scheduler_killed_instance_retries_fire_again_after_its_lease(
    redis: Redis, victim_alone: tuple[ServiceProcess, list[ServiceProcess]]
) -> None:
    victim, others = victim_alone
    due = await due_after_writing(redis)
    retries = await arm_retries(redis, KILL_ITEMS, due, timedelta(0))
    assert await redis_now(redis) < due, "writing took too long: the victim began early"

    await kill_on_first_lease(redis, victim, RETRY_DUE, ceil_ms(due))
    lease_ends = await scores(redis, RETRY_DUE, ceil_ms(due) + 1)
    requeued_at_kill = {job.delivery_id for _, job in await requeued_jobs(redis)}
    assert lease_ends, "the victim died holding no lease: nothing to prove"
    for other in others:
        resume(other)

    await eventually(lambda: no_retries_left(redis), within=20, what="retries fired")
    for instance in others:
        instance.stop()

    requeued = await requeued_jobs(redis)
    by_delivery = Counter(job.delivery_id for _, job in requeued)
    assert set(by_delivery) == set(retries)
    assert all(job == retries[job.delivery_id].job for _, job in requeued)  # a repeat: same job
    repeated = set(lease_ends) & requeued_at_kill
    assert {d for d, n in by_delivery.items() if n > 1} == repeated  # requeued, not dropped
    assert all(by_delivery[d] == 2 for d in repeated)
    for ms, job in requeued:
        if job.delivery_id in lease_ends and job.delivery_id not in requeued_at_kill:
            assert by_delivery[job.delivery_id] == 1
            assert ms >= lease_ends[job.delivery_id] - CLOCK_TOLERANCE_MS
    print(
        f"\nretries: {len(lease_ends)} leases held at the kill, "
        f"{len(requeued_at_kill)} jobs requeued before it, {len(repeated)} repeated after the lease"
    )


# A full batch


async def test_scheduler_a_full_batch_of_due_updates_fires_without_waiting_for_a_lease(
    redis: Redis, start_schedulers: Callable[..., list[ServiceProcess]]
) -> None:
    (instance,) = await asyncio.to_thread(start_schedulers, 1)
    due = await due_after_writing(redis)
    await arm_updates(redis, FULL_BATCHES, due, timedelta(0))
    assert await redis_now(redis) < due, "writing took too long"

    await eventually(lambda: all_updates_went_out(redis, FULL_BATCHES), within=20, what="updates")
    instance.stop()

    updates = await published_updates(redis)
    assert len({u.event_id for u in updates}) == FULL_BATCHES
    errors = Counter(str(r.get("error")) for r in logged(instance, "schedule.fire_failed"))
    latest = max(u.emitted_at - u.due_at for u in updates)
    assert (errors, latest < LEASE) == (Counter(), True), f"last {latest} late; failed: {errors}"
