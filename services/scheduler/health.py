"""The scheduler's HTTP side: ``/healthz``, ``/readyz`` and ``/metrics``.

``create_app`` is what ``python -m services.scheduler`` serves: its lifespan
starts the scheduler (:func:`services.scheduler.service.started`) and ticks until
the server stops. When a subscriber stops on its own the app calls ``on_fatal``,
so the process exits non-zero and its supervisor starts it again.

Ready means: Redis answers, every subscriber runs, and the ticker got on
recently (a batch claimed or a tick done within :func:`max_tick_age`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.service import Scheduler, SubscriberStopped, started
from shared.clock import Clock
from shared.http_errors import install_error_handlers, unavailable
from shared.logs import get_logger
from shared.plan import Plan, load_plan
from shared.settings import Settings
from shared.watchdog import stopped_subscribers

READY_TIMEOUT_SECONDS: Final = 2.0
READY_TICKS: Final = 5
"""Ready while the ticker got on within this many tick intervals ..."""
MIN_TICK_AGE_SECONDS: Final = 5.0
"""... or this many seconds, whichever is longer (a slow Redis round trip is no outage)."""

log = get_logger("clarion.scheduler")


def max_tick_age(settings: Settings) -> float:
    """How long (seconds) the ticker may go without progress and still be ready."""
    return max(READY_TICKS * settings.scheduler_tick_ms / 1000, MIN_TICK_AGE_SECONDS)


class TickProgress(Protocol):
    @property
    def last_progress(self) -> float | None: ...


@dataclass(frozen=True)
class SchedulerProbe:
    """What ``/readyz`` checks and ``/metrics`` shows, for one running scheduler."""

    redis: Redis
    broker: RedisBroker
    ticker: TickProgress
    metrics: SchedulerMetrics
    max_tick_age: float
    monotonic: Callable[[], float] = time.monotonic

    @classmethod
    def of(cls, scheduler: Scheduler) -> SchedulerProbe:
        return cls(
            redis=scheduler.redis,
            broker=scheduler.broker,
            ticker=scheduler.ticker,
            metrics=scheduler.metrics,
            max_tick_age=max_tick_age(scheduler.settings),
        )

    async def not_ready(self) -> str | None:
        """Why the scheduler is not ready, or ``None`` when it is."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                await self.redis.ping()
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            log.warning("scheduler.not_ready", error=f"{type(exc).__name__}: {exc}")
            return "Redis is not reachable"
        stopped = stopped_subscribers(self.broker)
        if stopped:
            return f"not consuming {', '.join(stopped)}"
        last = self.ticker.last_progress
        if last is None:
            return "the scheduler has not ticked yet"
        age = self.monotonic() - last
        if age > self.max_tick_age:
            return f"the scheduler last ticked {age:.1f}s ago (limit {self.max_tick_age:g}s)"
        return None


routes = APIRouter(tags=["health"])


def _probe(request: Request) -> SchedulerProbe | None:
    probe: SchedulerProbe | None = getattr(request.app.state, "scheduler", None)
    return probe


@routes.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@routes.get("/readyz", response_model=None, summary="Redis answers, consumers run, ticks recent")
async def readyz(request: Request) -> dict[str, str] | JSONResponse:
    probe = _probe(request)
    reason = "the scheduler is not started" if probe is None else await probe.not_ready()
    return {"status": "ready"} if reason is None else unavailable(reason)


@routes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    probe = _probe(request)
    if probe is None:
        return unavailable("the scheduler is not started")
    body, content_type = probe.metrics.exposition()
    return Response(body, media_type=content_type)


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    on_fatal: Callable[[str], None] | None = None,
    plan: Plan | None = None,
    *,
    metrics: SchedulerMetrics | None = None,
) -> FastAPI:
    """The scheduler as an app: its lifespan runs the scheduler; the routes report on it."""
    the_plan = plan or load_plan(settings.plan)  # an invalid plan fails here, at once

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with started(settings, clock, the_plan, metrics=metrics) as scheduler:
            stopping = asyncio.Event()
            running = asyncio.create_task(_tick_until(scheduler, stopping, on_fatal))
            app.state.scheduler = SchedulerProbe.of(scheduler)
            try:
                yield
            finally:
                stopping.set()
                await running

    app = FastAPI(title="Clarion scheduler", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(routes)
    return app


async def _tick_until(
    scheduler: Scheduler, stop: asyncio.Event, on_fatal: Callable[[str], None] | None
) -> None:
    try:
        await scheduler.run_until(stop)
    except SubscriberStopped as exc:
        log.critical("scheduler.subscriber_stopped", error=str(exc))
        if on_fatal is not None:
            on_fatal(str(exc))
