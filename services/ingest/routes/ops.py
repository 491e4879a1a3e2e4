"""Ops endpoints of ingest: the sample of rejected requests, and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from services.ingest.rejections import Rejection
from services.ingest.routes.operator import answers
from services.ingest.security import OPERATOR_AUTH
from services.ingest.state import State

ops = APIRouter(tags=["ops"])


class Rejections(BaseModel):
    rejections: list[Rejection]


@ops.get(
    "/v1/rejections",
    summary="The latest rejected webhook requests, newest first (bodies redacted)",
    dependencies=OPERATOR_AUTH,
    responses=answers(401, 403, 422, 503),
)
async def rejections(state: State, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Rejections:
    return Rejections(rejections=await state.intake.rejections.recent(limit))


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    body, content_type = state.intake.metrics.exposition()
    return Response(body, media_type=content_type)
