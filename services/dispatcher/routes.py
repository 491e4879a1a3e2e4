"""HTTP routes: health checks and approvals (the status page is in ``status_routes``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from services.dispatcher.approvals import ApprovalStore, granted
from services.dispatcher.ops_auth import require_ops_token
from services.dispatcher.state import State
from shared.errors import NotFound
from shared.http_errors import error_body
from shared.watchdog import stopped_subscribers

public = APIRouter()
ops = APIRouter(prefix="/v1", dependencies=[Depends(require_ops_token)])


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


@ops.get("/approvals", summary="Customer-facing messages waiting for approval")
async def pending_approvals(state: State) -> list[dict[str, Any]]:
    return [
        {
            "event_id": p.event_id,
            "incident_id": p.incident_id,
            "event_type": p.event_type,
            "requested_at": p.requested_at.isoformat(),
            "auto_publish_at": p.auto_publish_at.isoformat(),
            "held": p.held,
            "preview": {"title": p.preview_title, "text": p.preview_text},
        }
        for p in await ApprovalStore(state.redis).pending()
    ]


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="operator", min_length=1, max_length=200)


@ops.post(
    "/approvals/{event_id}/approve",
    status_code=202,
    summary="Approve held messages: they go out now",
)
async def approve(
    event_id: str, state: State, body: Annotated[ApproveRequest | None, Body()] = None
) -> dict[str, Any]:
    pending = await ApprovalStore(state.redis).get(event_id)
    if pending is None:
        raise NotFound(f"nothing is waiting for approval under {event_id!r}")
    by = body.by if body else "operator"
    await state.approvals.publish_approval(granted(pending, state.clock.now(), by))
    return {"status": "approved", "event_id": event_id, "by": by, "held": pending.held}
