"""Ops API for dead letters: list them, replay one, replay all."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.dispatcher.dead_letters import (
    ReplayStatus,
    get_dead_letter,
    list_dead_letters,
)
from services.dispatcher.ops_auth import require_ops_token
from services.dispatcher.state import State
from shared.errors import NotFound
from shared.http_errors import error_body

dead_letter_routes = APIRouter(prefix="/v1", dependencies=[Depends(require_ops_token)])

Kind = Literal["message", "delivery"]


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="operator", min_length=1, max_length=200)


@dead_letter_routes.get("/dead-letters", summary="What could not be done, newest first")
async def dead_letters(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    kind: Kind | None = None,
    channel: Annotated[str | None, Query(max_length=50)] = None,
    include_replayed: bool = True,
) -> list[dict[str, Any]]:
    entries = await list_dead_letters(
        state.redis, limit, kind=kind, channel=channel, include_replayed=include_replayed
    )
    return [entry.view(state.secrets) for entry in entries]


@dead_letter_routes.post(
    "/dead-letters/{entry_id}/replay",
    status_code=202,
    summary="Replay one dead letter (a delivery is sent again under the same idempotency key)",
    response_model=None,
)
async def replay_one(
    entry_id: str, state: State, body: Annotated[ReplayRequest | None, Body()] = None
) -> dict[str, Any] | JSONResponse:
    entry = await get_dead_letter(state.redis, entry_id)
    if entry is None:
        raise NotFound(f"no dead letter {entry_id!r}")
    result = await state.replayer.replay(entry, by=body.by if body else "operator")
    if result.status is not ReplayStatus.REPLAYED:
        return JSONResponse(error_body(result.status.value, result.detail), status_code=409)
    return {"id": entry_id, "status": result.status.value, "detail": result.detail}


@dead_letter_routes.post(
    "/dead-letters/replay",
    summary="Replay every dead letter not replayed yet (optionally of one kind or channel)",
)
async def replay_all(
    state: State,
    kind: Kind | None = None,
    channel: Annotated[str | None, Query(max_length=50)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    body: Annotated[ReplayRequest | None, Body()] = None,
) -> dict[str, Any]:
    entries = await list_dead_letters(
        state.redis, limit, kind=kind, channel=channel, include_replayed=False
    )
    counts = {status.value: 0 for status in ReplayStatus}
    for entry in entries:
        result = await state.replayer.replay(entry, by=body.by if body else "operator")
        counts[result.status.value] += 1
    return {"considered": len(entries), **counts}
