"""A dispatcher stopping while jobs wait for a send slot: the sends in flight finish,
the waiting jobs give their deliveries back (queued again, no try counted, no claim
left behind to look like an interrupted send), on a real Valkey."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from services.dispatcher.delivery_worker import STOPPED_BEFORE_ITS_TURN
from shared.clock import ManualClock
from shared.contracts import DeliveryStatus
from shared.settings import Settings
from shared.streams import delivery_state_key
from tests.support.builders import T0, make_incident_opened
from tests.support.dispatching import ScriptedChannel, build_pipeline
from tests.support.plans import make_plan
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

RECIPIENTS = ["ann@example.com", "bob@example.com", "cid@example.com"]


async def test_jobs_waiting_for_a_send_slot_are_queued_again_when_the_worker_stops(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    email = ScriptedChannel()
    email.hold(0)  # the first send hangs: the other two wait for its slot
    settings = make_settings(consumer_name="dispatcher-stop", rate_limits=(), channel_concurrency=1)
    plan = make_plan(
        audiences={"customers": {"public": False, "email": RECIPIENTS}},
        routes=[{"name": "all", "audiences": ["customers"]}],
    )
    pipeline = build_pipeline(redis, settings, plan, ManualClock(T0), channels={"email": email})
    try:
        await pipeline.handle(make_incident_opened(occurred_at=T0), drain=False)
        jobs = await pipeline.queued()
        assert len(jobs) == len(RECIPIENTS)
        runs = [asyncio.create_task(pipeline.worker.deliver(job)) for job in jobs]
        await asyncio.wait_for(email.started[0].wait(), 5)

        async def claimed() -> bool:
            owners = [await redis.hexists(delivery_state_key(j.delivery_id), "owner") for j in jobs]
            return all(owners)

        await eventually(claimed, within=5, interval=0.01, what="the waiting two claimed")

        pipeline.worker.stop_sending()
        sending = email.sends[0][2].delivery_id  # whichever job took the slot
        waiting = [run for job, run in zip(jobs, runs, strict=True) if job.delivery_id != sending]
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        email.release[0].set()
        await asyncio.wait_for(asyncio.gather(*runs), 5)

        assert len(email.sends) == 1  # no send started after the stop
        log = await pipeline.log()
        given_back = [r for r in log if r.status is DeliveryStatus.QUEUED]
        assert len(given_back) == 2
        assert all(STOPPED_BEFORE_ITS_TURN in (r.note or "") for r in given_back)
        assert [r.status for r in log if r.status is DeliveryStatus.SENT] == [DeliveryStatus.SENT]
        for record in given_back:  # no claim left to look like an interrupted send
            state = await redis.hgetall(delivery_state_key(record.delivery_id))
            assert b"owner" not in state

        # Queued again at once: the scheduler hands them back and a worker sends them,
        # as their first try, not an interrupted one.
        again = build_pipeline(redis, settings, plan, ManualClock(T0), channels={"email": email})
        try:
            await again.fire_retries(timedelta(seconds=1))
        finally:
            await again.aclose()
        assert sorted(recipient for recipient, _, _ in email.sends) == RECIPIENTS
        log = await pipeline.log()
        resent = [r for r in log if r.status is DeliveryStatus.SENT]
        assert len(resent) == len(RECIPIENTS)
        assert all(r.attempt == 1 and not r.possible_duplicate for r in resent)
    finally:
        await pipeline.aclose()
