"""The scheduler's retry firer: a delivery's next attempt goes back on its channel's
stream when due, once, and never before (real Valkey, manual clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.outcome import Retryable
from services.dispatcher.delivery_state import ClaimKind, DeliveryStates, Retry, retry_state
from services.scheduler.cadence import ceil_ms
from services.scheduler.retry_due import retry_firer, retry_schedule
from shared.clock import ManualClock
from shared.contracts import DeliveryJob, DeliveryStatus, ScheduledDelivery
from shared.redis_values import DATA_FIELD, data_entries
from shared.settings import Settings
from shared.streams import RETRY_DUE, RETRY_ITEMS, delivery_stream
from tests.support.builders import T0, make_incident_opened
from tests.support.dispatching import Pipeline, ScriptedChannel, build_pipeline
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

LEASE = timedelta(seconds=30)
MS = timedelta(milliseconds=1)


def job(channel: str = "email", delivery_id: str = "d-email", attempt: int = 2) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=delivery_id,
        event_id="ev-1",
        event_type="incident.opened",
        incident_id="inc-1",
        channel=channel,
        recipient="alice@example.com" if channel == "email" else "+14155550100",
        audience="customers",
        occurred_at=T0,
        attempt=attempt,
        last_attempt=3,
        expects=retry_state(attempt),
    )


async def schedule(states: DeliveryStates, next_job: DeliveryJob, due: datetime) -> None:
    """What a worker does when an attempt fails: move the state and schedule the next one."""
    expects = "" if next_job.attempt == 2 else retry_state(next_job.attempt - 1)
    claim = await states.claim(next_job.delivery_id, "worker", expects)
    assert claim.kind is ClaimKind.CLAIMED
    item = ScheduledDelivery(incident_id=next_job.incident_id, due_at=due, job=next_job)
    retry = Retry(
        member=next_job.delivery_id, due_ms=ceil_ms(due), item_json=item.model_dump_json()
    )
    assert await states.finish(next_job.delivery_id, "worker", next_job.expects, retry=retry)


async def jobs_on(redis: Redis, channel: str) -> list[DeliveryJob]:
    entries = data_entries(await redis.xrange(delivery_stream(channel)))
    return [DeliveryJob.model_validate_json(payload) for _, payload in entries]


@pytest.fixture
def states(redis: Redis) -> DeliveryStates:
    return DeliveryStates(redis, 60_000, 3600)


async def test_a_due_retry_goes_back_on_its_channel_stream_once(
    redis: Redis, states: DeliveryStates
) -> None:
    due = T0 + timedelta(seconds=5)
    await schedule(states, job(), due)
    clock = ManualClock(due - MS)
    firer = retry_firer(retry_schedule(redis), redis, clock, LEASE)

    assert await firer.run_once() == 0  # not before it is due
    assert await jobs_on(redis, "email") == []

    clock.advance(MS)
    assert await firer.run_once() == 1

    assert await jobs_on(redis, "email") == [job()]
    assert await redis.zcard(RETRY_DUE) == 0
    assert await redis.hlen(RETRY_ITEMS) == 0
    clock.advance(timedelta(hours=1))
    assert await firer.run_once() == 0
    assert await jobs_on(redis, "email") == [job()]
    assert (await states.claim("d-email", "worker", retry_state(2))).kind is ClaimKind.CLAIMED


async def test_each_retry_fires_at_its_own_time_on_its_own_channel(
    redis: Redis, states: DeliveryStates
) -> None:
    email, sms = job("email", "d-email"), job("sms", "d-sms")
    await schedule(states, email, T0 + timedelta(seconds=5))
    await schedule(states, sms, T0 + timedelta(minutes=1))
    clock = ManualClock(T0 + timedelta(seconds=5))
    firer = retry_firer(retry_schedule(redis), redis, clock, LEASE)

    assert await firer.run_once() == 1
    assert (await jobs_on(redis, "email"), await jobs_on(redis, "sms")) == ([email], [])

    clock.advance(timedelta(minutes=1))
    assert await firer.run_once() == 1
    assert (await jobs_on(redis, "email"), await jobs_on(redis, "sms")) == ([email], [sms])


async def test_a_retry_scheduled_again_while_the_firer_held_it_is_kept(
    redis: Redis, states: DeliveryStates
) -> None:
    """The re-queued job ran and failed again before the firer dropped its claim:
    the firer's drop must not take the new retry with it."""
    await schedule(states, job(attempt=2), T0 + timedelta(seconds=5))
    store = retry_schedule(redis)
    [claim] = await store.claim(T0 + timedelta(seconds=5), LEASE, 10)
    third = job(attempt=3)
    await schedule(states, third, T0 + timedelta(seconds=25))

    assert await store.drop(claim) is False

    assert await redis.zscore(RETRY_DUE, "d-email") == ceil_ms(T0 + timedelta(seconds=25))
    kept = await store.get("d-email")
    assert kept is not None
    assert kept.job == third


async def test_a_retry_whose_firer_died_fires_again_after_the_lease(
    redis: Redis, states: DeliveryStates
) -> None:
    await schedule(states, job(), T0 + timedelta(seconds=5))
    await retry_schedule(redis).claim(T0 + timedelta(seconds=5), LEASE, 10)  # then it died
    clock = ManualClock(T0 + timedelta(seconds=5) + LEASE - MS)
    firer = retry_firer(retry_schedule(redis), redis, clock, LEASE)
    assert await firer.run_once() == 0

    clock.advance(MS)

    assert await firer.run_once() == 1
    assert await jobs_on(redis, "email") == [job()]


# With the dispatcher's worker


@pytest.fixture
async def pipelines(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Pipeline]]:
    built: list[Pipeline] = []

    def factory(email: ScriptedChannel, uniform: Callable[[float, float], float]) -> Pipeline:
        settings = make_settings(
            consumer_name="dispatcher-test",
            delivery_max_attempts=3,
            retry_base=timedelta(seconds=5),
            rate_limits=(),
        )
        pipeline = build_pipeline(
            redis,
            settings,
            make_plan(emails=("alice@example.com",)),
            ManualClock(T0),
            channels={"email": email},
            uniform=uniform,
        )
        built.append(pipeline)
        return pipeline

    yield factory
    for pipeline in built:
        await pipeline.aclose()


OPENED = make_incident_opened(event_id="ev-open", occurred_at=T0)


async def test_a_retry_fired_twice_sends_once(
    redis: Redis, pipelines: Callable[..., Pipeline]
) -> None:
    """The firer put the job back, then died before dropping it: it fires again."""
    email = ScriptedChannel(Retryable("451 later"))
    pipeline = pipelines(email, lambda low, high: high)
    await pipeline.handle(OPENED)
    store = retry_schedule(redis)
    [claim] = await store.claim(T0 + timedelta(seconds=5), LEASE, 10)
    assert claim.item is not None
    await redis.xadd(
        delivery_stream("email"), {DATA_FIELD: claim.item.job.model_dump_json()}
    )  # what the firer did before it died

    ran = await pipeline.fire_retries(after=timedelta(seconds=5) + LEASE)

    assert ran == 2
    assert len(email.sends) == 2  # the failed first attempt, and one retry
    last = (await pipeline.log())[-1]
    assert (last.status, last.attempt) == (DeliveryStatus.SENT, 2)


async def test_a_retry_never_fires_before_the_time_the_log_promised(
    redis: Redis, pipelines: Callable[..., Pipeline]
) -> None:
    email = ScriptedChannel(Retryable("451 later"))
    pipeline = pipelines(email, lambda low, high: 4.0004)  # a backoff of 4.0004 s
    await pipeline.handle(OPENED)
    [retrying] = [r for r in await pipeline.log() if r.channel == "email"]
    assert retrying.next_attempt_at == T0 + timedelta(seconds=4.0004)

    assert await pipeline.fire_retries(after=timedelta(seconds=4)) == 0
    assert len(email.sends) == 1
