"""The scheduler's /healthz, /readyz and /metrics, with the scheduler running for real."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.scheduler.health import SchedulerProbe, create_app, max_tick_age, routes
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.schedule_store import update_schedule
from services.scheduler.scheduling import schedule_incident_event
from services.scheduler.service import SCHEDULED
from services.scheduler.ticker import Ticker
from shared.clock import RedisTimeClock
from shared.contracts import UpdateDue
from shared.http_errors import install_error_handlers
from shared.settings import Settings
from tests.support.asgi import running
from tests.support.builders import make_incident, make_incident_opened, store_incident
from tests.support.plans import make_plan
from tests.support.processes import ServiceProcess
from tests.support.smtp import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PLAN = make_plan()
WITHIN = 15.0


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class Fatal:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


class Progress:
    def __init__(self, last: float | None) -> None:
        self.last_progress = last


@pytest.fixture
def fatal() -> Fatal:
    return Fatal()


@pytest.fixture
def metrics() -> SchedulerMetrics:
    return SchedulerMetrics()


@pytest.fixture
async def client(
    redis: Redis, settings: Settings, fatal: Fatal, metrics: SchedulerMetrics
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, on_fatal=fatal, plan=PLAN, metrics=metrics)
    async with running(app, "http://scheduler") as http:
        yield http


async def ready(client: httpx.AsyncClient) -> httpx.Response | None:
    response = await client.get("/readyz")
    return response if response.status_code == 200 else None


async def test_alive_ready_and_measured(client: httpx.AsyncClient, redis: Redis) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    answer = await eventually(lambda: ready(client), within=WITHIN, what="readiness")
    assert answer.json() == {"status": "ready"}

    # An update that fell due a minute ago fires; the metrics show it, and how late.
    now = datetime.now(UTC)
    incident = make_incident(id="inc-metrics", opened_at=now - timedelta(minutes=2))
    await store_incident(redis, incident)
    opened = make_incident_opened(
        incident,
        event_id="inc-metrics:opened",
        occurred_at=now - timedelta(minutes=2),
        next_update_at=now - timedelta(minutes=1),
    )
    await schedule_incident_event(update_schedule(redis), opened)

    async def fired_metrics() -> str | None:
        text = (await client.get("/metrics")).text
        return text if 'clarion_scheduler_fired_total{kind="update"} 1.0' in text else None

    text = await eventually(fired_metrics, within=WITHIN, what="the fire in /metrics")
    lines = text.splitlines()
    assert 'clarion_scheduler_lateness_seconds_bucket{kind="update",le="30.0"} 0.0' in lines
    assert 'clarion_scheduler_lateness_seconds_bucket{kind="update",le="+Inf"} 1.0' in lines
    for kind in SCHEDULED:
        assert any(
            line.startswith(f'clarion_scheduler_scheduled_items{{kind="{kind}"}}') for line in lines
        )
    assert "clarion_scheduler_tick_failures_total 0.0" in lines


async def test_scheduled_items_are_counted_by_kind(client: httpx.AsyncClient, redis: Redis) -> None:
    await eventually(lambda: ready(client), within=WITHIN, what="readiness")
    now = datetime.now(UTC)
    for n in range(3):  # promised in an hour: scheduled, not due
        incident = make_incident(id=f"inc-{n}", opened_at=now)
        await store_incident(redis, incident)
        opened = make_incident_opened(
            incident,
            event_id=f"inc-{n}:opened",
            occurred_at=now,
            next_update_at=now + timedelta(hours=1),
        )
        await schedule_incident_event(update_schedule(redis), opened)

    async def counted() -> bool:
        text = (await client.get("/metrics")).text
        return 'clarion_scheduler_scheduled_items{kind="update"} 3.0' in text.splitlines()

    await eventually(counted, within=WITHIN, what="three scheduled updates in /metrics")


async def test_not_ready_and_fatal_when_the_consumer_group_vanishes(
    client: httpx.AsyncClient, redis: Redis, fatal: Fatal
) -> None:
    await eventually(lambda: ready(client), within=WITHIN, what="readiness")

    await redis.flushdb()  # NOGROUP stops the subscribers

    async def told() -> list[str]:
        return fatal.reasons

    (reason,) = await eventually(told, within=WITHIN, what="on_fatal")
    assert "subscribers stopped" in reason
    response = await client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    assert error["message"].startswith("not consuming ")


# --- Readiness, check by check -------------------------------------------------------


def probe(redis: Redis, broker: RedisBroker, last: float | None, now: float) -> SchedulerProbe:
    return SchedulerProbe(
        redis=redis,
        broker=broker,
        ticker=Progress(last),
        metrics=SchedulerMetrics(),
        max_tick_age=5.0,
        monotonic=lambda: now,
    )


@pytest.fixture
def broker(redis_url: str) -> RedisBroker:
    return RedisBroker(redis_url)  # never started: no subscribers to have stopped


async def test_ready_only_with_a_recent_tick(redis: Redis, broker: RedisBroker) -> None:
    assert await probe(redis, broker, last=100.0, now=105.0).not_ready() is None
    stale = await probe(redis, broker, last=100.0, now=105.5).not_ready()
    assert stale == "the scheduler last ticked 5.5s ago (limit 5s)"
    never = await probe(redis, broker, last=None, now=105.0).not_ready()
    assert never == "the scheduler has not ticked yet"


async def test_not_ready_without_redis(broker: RedisBroker) -> None:
    gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await probe(gone, broker, last=100.0, now=100.0).not_ready() == (
            "Redis is not reachable"
        )
    finally:
        await gone.aclose()


async def test_not_ready_answers_503_with_the_shared_error_body(
    redis: Redis, broker: RedisBroker
) -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(routes)
    app.state.scheduler = probe(redis, broker, last=100.0, now=160.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://scheduler") as client:
        response = await client.get("/readyz")
        alive = await client.get("/healthz")

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json() == {
        "error": {
            "code": "unavailable",
            "message": "the scheduler last ticked 60.0s ago (limit 5s)",
        }
    }
    assert alive.status_code == 200  # alive, though not ready


def test_the_tick_age_limit_is_a_few_ticks_and_never_below_five_seconds(
    make_settings: Callable[..., Settings],
) -> None:
    assert max_tick_age(make_settings(scheduler_tick_ms=100)) == 5.0
    assert max_tick_age(make_settings(scheduler_tick_ms=1000)) == 5.0
    assert max_tick_age(make_settings(scheduler_tick_ms=10_000)) == 50.0


async def test_failing_ticks_are_counted_and_make_no_progress(
    settings: Settings, metrics: SchedulerMetrics
) -> None:
    gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", retry=Retry(NoBackoff(), 0))
    ticker = Ticker(
        update_schedule(gone),
        publisher=_NoPublisher(),
        redis=gone,
        settings=settings,
        clock=RedisTimeClock(gone),
        plan=PLAN,
        metrics=metrics,
        scheduled=SCHEDULED,
    )
    stop = asyncio.Event()
    ticking = asyncio.create_task(ticker.run_forever(stop))
    try:

        async def failed_twice() -> bool:
            failures = metrics.registry.get_sample_value("clarion_scheduler_tick_failures_total")
            return (failures or 0) >= 2  # ... and it keeps trying

        await eventually(failed_twice, within=WITHIN, what="two failed ticks")
    finally:
        stop.set()
        await asyncio.wait_for(ticking, timeout=WITHIN)
        await gone.aclose()
    assert ticker.last_progress is None


class _NoPublisher:
    async def publish(self, due: UpdateDue) -> None:
        raise AssertionError(f"nothing should fire without Redis, not {due.event_id}")


# --- The process -------------------------------------------------------------------


@pytest.mark.e2e
def test_the_scheduler_process_serves_readiness_and_metrics_then_stops_on_sigterm(
    redis_url: str, test_plan_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env.update(
        {
            "CLARION_REDIS_URL": redis_url,
            "CLARION_PLAN": str(test_plan_path),
            "CLARION_SCHEDULER_PORT": str(port),
            "CLARION_SCHEDULER_TICK_MS": "100",
            "CLARION_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess("scheduler", env, tmp_path, f"{url}/readyz")
    service.start()
    try:
        service.wait_ready(within=30)
        metrics = httpx.get(f"{url}/metrics", timeout=5)
        alive = httpx.get(f"{url}/healthz", timeout=5)
    finally:
        service.stop()

    assert alive.json() == {"status": "ok"}
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "clarion_scheduler_tick_failures_total 0.0" in metrics.text.splitlines()
    assert service.process is not None
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert service.process.returncode in {0, -signal.SIGTERM}
    assert '"scheduler.stopped"' in service.log_path.read_text()
