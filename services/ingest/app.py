"""The ingest service: monitoring webhooks in, 202 once the change is durably in Redis.

``create_app`` is the composition root. Its lifespan builds the Redis client,
the broker, the incident store, the intake (credentials, rate limit, record of
rejections) and the consumer of "monitoring" holds that have ended, and passes
them in; nothing is global.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from faststream.redis import RedisBroker
from redis.exceptions import RedisError

from services.ingest.credentials import all_credentials, known_secrets, log_auth_posture
from services.ingest.fast_lane import IngestApp
from services.ingest.handlers import resolution_consumer
from services.ingest.incident_actions import IncidentClosed, IncidentOpen
from services.ingest.incident_store import IncidentNotFound, IncidentStore
from services.ingest.intake import Intake
from services.ingest.metrics import IngestMetrics
from services.ingest.rate_limit import RateLimiter, parse_rate_limit
from services.ingest.rejections import RejectionLog
from services.ingest.routes.health import health
from services.ingest.routes.operator import operator
from services.ingest.routes.ops import ops
from services.ingest.routes.pagerduty import pagerduty
from services.ingest.routes.sns import sns
from services.ingest.routes.webhooks import webhooks
from services.ingest.sns_signature import HttpCertificateFetcher, SnsVerifier
from services.ingest.state import IngestState
from shared.clock import Clock, SystemClock
from shared.errors import RetryableFailure
from shared.http_errors import error_body, install_error_handlers, unavailable
from shared.logs import get_logger
from shared.plan import Plan, load_plan
from shared.redis_client import broker_connection, connect, ensure_consumer_groups, stop_broker
from shared.settings import Settings
from shared.watchdog import report_stopped_subscribers

HTTP_TIMEOUT_SECONDS: Final = 10.0

DESCRIPTION: Final = """
Monitoring webhooks in; incidents and their events out, durably, before any 2xx.

* **Webhooks** accept Prometheus Alertmanager, Grafana, Datadog, generic JSON and AWS SNS
  (CloudWatch alarms), and `POST /v2/enqueue` is a drop-in for PagerDuty's Events API v2.
* **The operator API** under `/v1/incidents` reads incidents, posts updates, acknowledges
  and resolves (bearer `CLARION_OPS_TOKEN`).
* Errors share one JSON shape: `{"error": {"code", "message", "fields"?}}` (PagerDuty's
  route answers in PagerDuty's own shape).
"""

log = get_logger("clarion.ingest")


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    on_fatal: Callable[[str], None] | None = None,
    plan: Plan | None = None,
) -> IngestApp:
    """The ingest app. ``on_fatal`` is called when consuming has stopped for good.

    ``plan`` defaults to the one ``CLARION_PLAN`` names (or the shipped one).
    """
    the_clock: Clock = clock or SystemClock()
    the_plan = plan or load_plan(settings.plan)  # an invalid plan fails here, at once
    credentials = all_credentials(settings)  # a malformed credential fails here, at once
    parse_rate_limit(settings.ingest_rate_limit)  # and so does a malformed rate limit

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.require_redis_url()
        redis = connect(url)
        broker = RedisBroker(
            url,
            **broker_connection(),
            logger=get_logger("clarion.ingest.broker"),
        )
        metrics = IngestMetrics()
        http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
        try:
            await ensure_consumer_groups(redis)
            store = IncidentStore(redis, broker, the_clock, the_plan)
            resolution_consumer(redis, store, settings).subscribe(broker, settings)
            rejections = RejectionLog(
                redis,
                settings.rejection_sample_size,
                metrics=metrics,
                secrets=known_secrets(settings, the_plan),
                clock=the_clock,
            )
            intake = Intake(
                credentials=credentials,
                limiter=RateLimiter(settings.ingest_rate_limit),  # bound to this event loop
                rejections=rejections,
                metrics=metrics,
                clock=the_clock,
                max_body_bytes=settings.max_body_bytes,
                max_alerts=settings.max_alerts_per_request,
            )
            sns_verifier = SnsVerifier(
                HttpCertificateFetcher(http), settings.sns_cert_url_pattern, clock=the_clock
            )
            app.state.ingest = IngestState(
                settings, the_plan, the_clock, redis, broker, store, intake, sns_verifier, http
            )
            await broker.start()
            stopping = asyncio.Event()
            watchdog = asyncio.create_task(
                report_stopped_subscribers(broker, stopping, on_fatal, "ingest")
            )
            _warn_if_open(settings)
            log.info("ingest.started", host=settings.ingest_host, port=settings.ingest_port)
            try:
                yield
            finally:
                stopping.set()
                await watchdog
        finally:
            await stop_broker(broker)
            await redis.aclose()
            await http.aclose()

    app = IngestApp(
        title="Clarion ingest",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    _install_ingest_error_handlers(app)
    for router in (webhooks, pagerduty, sns, operator, ops, health):
        app.include_router(router)
    for route in webhooks.routes:  # the hot path: see services.ingest.fast_lane
        if isinstance(route, APIRoute):
            app.serve_directly(route.path, route.endpoint)
    return app


def _warn_if_open(settings: Settings) -> None:
    log_auth_posture(settings, log)
    if settings.ops_token is None:
        log.warning(
            "ingest.ops_loopback_only",
            detail="CLARION_OPS_TOKEN is not set: the operator API answers this host only",
        )


def _install_ingest_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
        # Nothing was accepted: the sender keeps the alert and retries.
        log.error("ingest.redis_unavailable", error=f"{type(exc).__name__}: {exc}")
        return unavailable("storage is unavailable; nothing was accepted, try again")

    @app.exception_handler(RetryableFailure)
    async def _retryable(_: Request, exc: RetryableFailure) -> JSONResponse:
        log.warning("ingest.retryable_failure", error=str(exc))
        return unavailable(f"{exc}; nothing was accepted, try again")

    @app.exception_handler(IncidentNotFound)
    async def _not_found(_: Request, exc: IncidentNotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", str(exc)), 404)

    @app.exception_handler(IncidentClosed)
    async def _closed(_: Request, exc: IncidentClosed) -> JSONResponse:
        return JSONResponse(error_body("incident_resolved", str(exc)), 409)

    @app.exception_handler(IncidentOpen)
    async def _still_open(_: Request, exc: IncidentOpen) -> JSONResponse:
        return JSONResponse(error_body("incident_open", str(exc)), 409)
