"""The ingest HTTP API: monitoring webhooks in, 202 once the change is durably in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from faststream.redis import RedisBroker
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.ingest.body import read_json, validate
from services.ingest.incident_store import IncidentStore
from services.ingest.sources import alertmanager
from shared.auth import check_bearer
from shared.clock import Clock, SystemClock
from shared.errors import RetryableFailure
from shared.http_errors import error_body, install_error_handlers
from shared.logs import bound, get_logger
from shared.redis_client import RETRY_ON, broker_retry, connect, ensure_consumer_groups
from shared.settings import Settings

READY_TIMEOUT_SECONDS: Final = 2.0
RETRY_AFTER_SECONDS: Final = "5"

log = get_logger("clarion.ingest")


class Accepted(BaseModel):
    status: str = "accepted"
    incident_id: str | None
    events: list[str]
    duplicate: bool


class Health(BaseModel):
    status: str = "ok"


@dataclass
class _Runtime:
    redis: Redis | None = None
    store: IncidentStore | None = None


def create_app(settings: Settings, clock: Clock | None = None) -> FastAPI:
    runtime = _Runtime()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        url = settings.require_redis_url()
        redis = connect(url)
        broker = RedisBroker(
            url,
            retry=broker_retry(),
            retry_on_error=RETRY_ON,
            logger=get_logger("clarion.ingest.broker"),
        )
        try:
            await ensure_consumer_groups(redis)
            await broker.connect()
            runtime.redis = redis
            runtime.store = IncidentStore(redis, broker, clock or SystemClock())
            if settings.ingest_token is None:
                log.warning(
                    "ingest.auth_disabled",
                    detail="CLARION_INGEST_TOKEN is not set: webhooks are accepted unauthenticated",
                )
            log.info("ingest.started", host=settings.ingest_host, port=settings.ingest_port)
            yield
        finally:
            runtime.redis = runtime.store = None
            await broker.stop()
            await redis.aclose()

    app = FastAPI(title="Clarion ingest", lifespan=lifespan)
    install_error_handlers(app)
    _install_ingest_error_handlers(app)

    def store() -> IncidentStore:
        if runtime.store is None:
            raise RetryableFailure("ingest is not started")
        return runtime.store

    @app.post("/v1/alerts/alertmanager", status_code=202)
    async def alertmanager_webhook(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Accepted:
        check_bearer(authorization, settings.ingest_token)
        payload = validate(alertmanager.AlertmanagerWebhook, await read_json(request))
        result = await store().apply(
            alertmanager.group_key_of(payload),
            alertmanager.parse(payload),
            truncated=payload.truncated_alerts,
            external_url=payload.external_url,
        )
        with bound(incident_id=result.incident_id):
            log.info(
                "alerts.accepted",
                source=alertmanager.SOURCE,
                alerts=len(payload.alerts),
                events=result.events,
                duplicate=result.duplicate,
            )
        return Accepted(
            incident_id=result.incident_id, events=result.events, duplicate=result.duplicate
        )

    @app.get("/healthz")
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Health)
    async def readyz() -> Health | JSONResponse:
        if runtime.redis is None:
            return _unavailable("ingest is not started")
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                await runtime.redis.ping()
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            log.warning("ingest.not_ready", error=f"{type(exc).__name__}: {exc}")
            return _unavailable("Redis is not reachable")
        return Health()

    return app


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(
        error_body("unavailable", message), 503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


def _install_ingest_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
        # Nothing was accepted: the sender keeps the alert and retries.
        log.error("ingest.redis_unavailable", error=f"{type(exc).__name__}: {exc}")
        return _unavailable("storage is unavailable; nothing was accepted, try again")

    @app.exception_handler(RetryableFailure)
    async def _retryable(_: Request, exc: RetryableFailure) -> JSONResponse:
        log.warning("ingest.retryable_failure", error=str(exc))
        return _unavailable(f"{exc}; nothing was accepted, try again")
