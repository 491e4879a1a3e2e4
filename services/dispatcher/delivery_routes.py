"""``GET /v1/deliveries`` (the delivery log, filtered and paged) and ``GET /metrics``.

``deliveries_router`` needs the ops token like every /v1 route; ``metrics_router``
is open, for Prometheus to scrape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.dispatcher.delivery_query import (
    MAX_LIMIT,
    DeliveryQuery,
    InvalidCursor,
    QueryError,
    StreamId,
    decode_cursor,
)
from services.dispatcher.ops_auth import require_ops_token
from services.dispatcher.state import State
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.errors import NotFound

MAX_VALUES = 20
"""At most this many values of one repeated filter parameter."""

deliveries_router = APIRouter(prefix="/v1", dependencies=[Depends(require_ops_token)])
metrics_router = APIRouter()


class DeliveriesPage(BaseModel):
    model_config = ConfigDict(frozen=True)

    deliveries: list[DeliveryRecorded] = Field(description="Newest first; oldest first with after")
    next_cursor: str | None = Field(
        description="Pass as `before` for the next, older page (null: nothing older); "
        "with `after`, pass as `after` on the next poll (never null)."
    )
    follow_cursor: str = Field(
        description="Pass as `after` to get what is recorded from now on, oldest first."
    )


@deliveries_router.get(
    "/deliveries",
    summary="The delivery log: every delivery attempt, filtered and paged",
    response_model=DeliveriesPage,
)
async def list_deliveries(
    *,
    state: State,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Records per page (1 to 1000).")
    ] = 50,
    incident_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    channel: Annotated[
        list[str] | None,
        Query(max_length=MAX_VALUES, description="Repeat to match any of several channels."),
    ] = None,
    status: Annotated[
        list[DeliveryStatus] | None,
        Query(max_length=MAX_VALUES, description="Repeat to match any of several statuses."),
    ] = None,
    audience: Annotated[
        list[str] | None,
        Query(max_length=MAX_VALUES, description="Repeat to match any of several audiences."),
    ] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description="Recorded at or after this time (ISO 8601 with a time zone)."),
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="Recorded before this time (ISO 8601).")
    ] = None,
    before: Annotated[
        str | None,
        Query(max_length=200, description="A `next_cursor`: the page older than it."),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=200,
            description="A `next_cursor` or `follow_cursor`: what was recorded after it, "
            "oldest first.",
        ),
    ] = None,
) -> DeliveriesPage:
    query = _query(
        incident_id=incident_id,
        channels=frozenset(channel or ()),
        statuses=frozenset(status or ()),
        audiences=frozenset(audience or ()),
        since=since,
        until=until,
        limit=limit,
        before=before,
        after=after,
    )
    page = await state.delivery_log.query(query)
    return DeliveriesPage(
        deliveries=page.deliveries,
        next_cursor=page.next_cursor,
        follow_cursor=page.follow_cursor,
    )


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    collected = state.delivery_log.metrics
    if collected is None:
        raise NotFound("this dispatcher collects no metrics")
    body, content_type = collected.exposition()
    return Response(body, media_type=content_type)


def _query(
    *,
    incident_id: str | None,
    channels: frozenset[str],
    statuses: frozenset[DeliveryStatus],
    audiences: frozenset[str],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    before: str | None,
    after: str | None,
) -> DeliveryQuery:
    """The query, or a 422 naming the parameter at fault (in the shared error shape)."""
    try:
        return DeliveryQuery(
            incident_id=incident_id,
            channels=channels,
            statuses=statuses,
            audiences=audiences,
            since=since,
            until=until,
            limit=limit,
            before=_cursor("before", before),
            after=_cursor("after", after),
        )
    except QueryError as exc:
        raise _invalid(exc.field, exc.reason) from exc


def _cursor(name: str, value: str | None) -> StreamId | None:
    if value is None:
        return None
    try:
        return decode_cursor(value)
    except InvalidCursor as exc:
        raise QueryError(name, str(exc)) from exc


def _invalid(field: str, reason: str) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("query", field), "msg": reason, "type": "value_error", "input": None}]
    )
