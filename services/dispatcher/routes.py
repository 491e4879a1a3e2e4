"""HTTP routes: the public status page, ops endpoints, and health checks."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from redis.exceptions import RedisError

from services.dispatcher.state import State, get_state
from services.dispatcher.status_view import (
    StatusPage,
    build_status_page,
    status_json,
    template_values,
)
from services.dispatcher.templating import environment
from shared.auth import check_bearer
from shared.contracts import dump
from shared.http_errors import error_body
from shared.incidents import recent_incidents
from shared.watchdog import stopped_subscribers

STATUS_PAGE_SCAN = 100


async def require_ops_token(request: Request) -> None:
    """When an ops token is configured, /v1/* needs ``Authorization: Bearer <token>``."""
    check_bearer(request.headers.get("authorization"), get_state(request).settings.ops_token)


public = APIRouter()
ops = APIRouter(prefix="/v1", dependencies=[Depends(require_ops_token)])


async def _status_page(state: State) -> StatusPage:
    incidents = await state.status_pages.recent(STATUS_PAGE_SCAN)
    return build_status_page(incidents, state.settings.organization_name, state.clock.now())


@public.get("/status", response_class=HTMLResponse)
async def status_html(state: State) -> HTMLResponse:
    page = await _status_page(state)
    values = template_values(page, ZoneInfo(state.settings.display_timezone))
    html = environment().get_template("page/status.html.j2").render(values)
    return HTMLResponse(html)


@public.get("/status.json")
async def status_document(state: State) -> dict[str, Any]:
    return status_json(await _status_page(state))


@public.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@public.get("/readyz", response_model=None)
async def readyz(state: State) -> dict[str, str] | JSONResponse:
    try:
        await state.redis.ping()
    except (RedisError, OSError) as exc:
        body = error_body("not_ready", f"redis unavailable: {type(exc).__name__}")
        return JSONResponse(body, status_code=503)
    stopped = stopped_subscribers(state.broker)
    if stopped:
        body = error_body("not_ready", f"not consuming {', '.join(stopped)}")
        return JSONResponse(body, status_code=503)
    return {"status": "ready"}


@ops.get("/deliveries")
async def deliveries(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    incident_id: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict[str, Any]]:
    records = await state.delivery_log.recent(limit, incident_id=incident_id)
    return [dump(record) for record in records]


@ops.get("/incidents")
async def incidents(
    state: State, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    return [dump(incident) for incident in await recent_incidents(state.redis, limit)]
