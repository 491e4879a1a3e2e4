"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError

from shared.http_errors import unavailable
from shared.logs import get_logger
from shared.watchdog import stopped_subscribers

READY_TIMEOUT_SECONDS: Final = 2.0

log = get_logger("clarion.ingest")

health = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = "ok"


@health.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health()


@health.get("/readyz", response_model=Health, summary="Redis answers and consumers run")
async def readyz(request: Request) -> Health | JSONResponse:
    state = getattr(request.app.state, "ingest", None)
    if state is None:
        return unavailable("ingest is not started")
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await state.redis.ping()
    except (RedisError, OSError) as exc:  # TimeoutError is an OSError
        log.warning("ingest.not_ready", error=f"{type(exc).__name__}: {exc}")
        return unavailable("Redis is not reachable")
    stopped = stopped_subscribers(state.broker)
    if stopped:
        return unavailable(f"not consuming {', '.join(stopped)}")
    return Health()
