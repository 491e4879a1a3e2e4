"""A scheduler that starts after items fell due fires them at once: late, never
skipped, and it says how late (the ``late_ms`` of each log line and the lateness
histogram). Real Valkey; the production wiring (:func:`started`, :func:`run`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from services.scheduler.approval_timeout import ApprovalTimer, approval_schedule
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.resolution_hold import ResolutionTimer, resolution_schedule
from services.scheduler.retry_due import RetryItem, retry_schedule
from services.scheduler.schedule_store import update_schedule
from services.scheduler.scheduling import schedule_incident_event
from services.scheduler.service import run, started
from shared.clock import ManualClock
from shared.contracts import DeliveryJob
from shared.settings import Settings
from shared.streams import APPROVALS, RESOLUTIONS_DUE, delivery_stream
from tests.support.builders import T0, make_incident, make_incident_opened, store_incident
from tests.support.plans import make_plan
from tests.support.streams import updates_due
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PLAN = make_plan()  # SEV1 every 30 min
DOWN = timedelta(hours=2)
"""How long no scheduler ran."""
DUE_AFTER = {  # each kind's due time, after T0
    "update": timedelta(minutes=30),
    "resolution": timedelta(minutes=10),
    "approval": timedelta(minutes=5),
    "retry": timedelta(minutes=1),
}
WITHIN = 15.0


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def retry_job(incident_id: str) -> DeliveryJob:
    return DeliveryJob(
        delivery_id="d-restart",
        event_id=f"{incident_id}:opened",
        event_type="incident.opened",
        incident_id=incident_id,
        channel="email",
        recipient="alice@example.com",
        audience="customers",
        occurred_at=T0,
        attempt=2,
        last_attempt=3,
        expects="retry:2",
    )


async def arm_every_kind(redis: Redis, start: datetime) -> None:
    """One item of each kind, due ``DUE_AFTER`` after ``start``."""
    incident = make_incident(id="inc-restart", opened_at=start)
    await store_incident(redis, incident)
    opened = make_incident_opened(
        incident,
        event_id="inc-restart:opened",
        occurred_at=start,
        next_update_at=start + DUE_AFTER["update"],
    )
    await schedule_incident_event(update_schedule(redis), opened)
    resolution = ResolutionTimer(
        incident_id="inc-restart",
        monitoring_since=start,
        due_at=start + DUE_AFTER["resolution"],
    )
    await resolution_schedule(redis).change("inc-restart", lambda _: resolution)
    approval = ApprovalTimer(
        incident_id="inc-restart", event_id="ev-held", due_at=start + DUE_AFTER["approval"]
    )
    await approval_schedule(redis).change("ev-held", lambda _: approval)
    retry = RetryItem(
        incident_id="inc-restart", due_at=start + DUE_AFTER["retry"], job=retry_job("inc-restart")
    )
    await retry_schedule(redis).change("d-restart", lambda _: retry)


def sample(metrics: SchedulerMetrics, name: str, kind: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"kind": kind, **labels})


async def test_first_tick_after_start_fires_every_overdue_item_and_reports_its_lateness(
    redis: Redis, settings: Settings
) -> None:
    await arm_every_kind(redis, T0)
    clock = ManualClock(T0 + DOWN)  # the scheduler comes back two hours later
    metrics = SchedulerMetrics()

    async with started(settings, clock, PLAN, metrics=metrics) as scheduler:
        with structlog.testing.capture_logs() as logs:
            fired = await scheduler.ticker.tick()
        again = await scheduler.ticker.tick()

    assert (fired, again) == (4, 0)
    late = {kind: DOWN - after for kind, after in DUE_AFTER.items()}
    logged: dict[str, Any] = {
        entry["event"].removesuffix(".due"): entry["late_ms"]
        for entry in logs
        if entry["event"].endswith(".due")
    }
    assert logged == {
        kind: lateness // timedelta(milliseconds=1) for kind, lateness in late.items()
    }
    for kind, lateness in late.items():
        name = "clarion_scheduler_lateness_seconds"
        assert sample(metrics, "clarion_scheduler_fired_total", kind) == 1
        assert sample(metrics, f"{name}_count", kind) == 1
        assert sample(metrics, f"{name}_sum", kind) == lateness.total_seconds()
        assert sample(metrics, f"{name}_bucket", kind, le="60.0") == 0  # far beyond a minute
    # Late but not skipped: update #1 went out (not #4), once, promising the next from now.
    (update,) = await updates_due(redis)
    assert (update.sequence, update.due_at) == (1, T0 + DUE_AFTER["update"])
    assert update.emitted_at == T0 + DOWN
    assert update.next_update_at == T0 + DOWN + timedelta(minutes=30)
    assert await redis.xlen(RESOLUTIONS_DUE) == 1
    assert await redis.xlen(APPROVALS) == 1
    assert await redis.xlen(delivery_stream("email")) == 1
    # What is still scheduled: the next update only; the one-shot timers are gone.
    assert sample(metrics, "clarion_scheduler_scheduled_items", "update") == 1
    for kind in ("resolution", "approval", "retry"):
        assert sample(metrics, "clarion_scheduler_scheduled_items", kind) == 0


async def test_a_restarted_service_on_redis_time_fires_what_fell_due_while_it_was_down(
    redis: Redis, settings: Settings
) -> None:
    # A first run (its consumer groups exist), then the scheduler is down.
    stop = asyncio.Event()
    await asyncio.wait_for(_run_until_ticked(settings, stop), timeout=WITHIN)
    seconds, micros = await redis.time()
    server_now = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)
    # While it was down, every item fell due: the earliest 2 h ago, the latest 1.5 h ago.
    await arm_every_kind(redis, server_now - DOWN)
    metrics = SchedulerMetrics()

    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop, plan=PLAN, metrics=metrics))
    try:

        async def all_fired() -> bool:
            return all(
                sample(metrics, "clarion_scheduler_fired_total", kind) == 1 for kind in DUE_AFTER
            )

        await eventually(all_fired, within=WITHIN, what="every overdue item fired")
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=WITHIN)

    for kind, after in DUE_AFTER.items():
        lateness = sample(metrics, "clarion_scheduler_lateness_seconds_sum", kind)
        assert lateness is not None
        expected = (DOWN - after).total_seconds()
        assert expected <= lateness < expected + WITHIN, kind


async def _run_until_ticked(settings: Settings, stop: asyncio.Event) -> None:
    metrics = SchedulerMetrics()
    service = asyncio.create_task(run(settings, stop, plan=PLAN, metrics=metrics))
    try:

        async def counted() -> bool:
            return (
                metrics.registry.get_sample_value(
                    "clarion_scheduler_scheduled_items", {"kind": "update"}
                )
                is not None
            )

        await eventually(counted, within=WITHIN, what="a first tick")
    finally:
        stop.set()
        await service
