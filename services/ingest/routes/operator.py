"""The operator API: read incidents, post updates, acknowledge, resolve.

Protected by ``CLARION_OPS_TOKEN`` as a bearer token (loopback only when unset),
checked before the body is even read; bodies are then read as webhooks' are,
bounded by ``CLARION_MAX_BODY_BYTES`` (:mod:`services.ingest.operator_body`).
Every change goes through the same atomic store as alerts do, and publishes
the same incident events, so humans and monitoring never race each other.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query

from services.ingest.incident_actions import (
    OperatorUpdate,
    acknowledge,
    post_update,
    publish_postmortem,
    resolve,
)
from services.ingest.incident_store import ApplyResult, IncidentNotFound
from services.ingest.operator_body import body_of, documented, optional_body_of
from services.ingest.operator_models import (
    AcknowledgeRequest,
    ActionResult,
    IncidentList,
    IncidentView,
    PostmortemRequest,
    ResolveRequest,
    UpdateRequest,
)
from services.ingest.security import OPERATOR_AUTH
from services.ingest.state import State
from shared.contracts import Incident
from shared.incidents import load_incident, recent_incidents
from shared.logs import bound, get_logger

log = get_logger("clarion.ingest.operator")


ANSWERS: Final[dict[int | str, dict[str, str]]] = {
    400: {"description": "The body is missing or not JSON"},
    401: {"description": "The ops token is missing or wrong"},
    403: {"description": "`CLARION_OPS_TOKEN` is not set and the caller is not on this host"},
    404: {"description": "No incident has this id"},
    409: {
        "description": "The incident takes no such change: it is resolved (a post-mortem: "
        "it is not resolved yet)"
    },
    413: {"description": "The body is over `CLARION_MAX_BODY_BYTES`"},
    422: {"description": "The body or a parameter is not valid; the error names each field"},
    503: {"description": "Storage is unavailable; nothing was changed, try again"},
}
"""What the operator API answers besides 2xx, all in the shape of ``shared.http_errors``."""


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may answer ``statuses`` (see :data:`ANSWERS`)."""
    return {status: ANSWERS[status] for status in statuses}


READ: Final = answers(404)
CHANGE: Final = answers(400, 404, 409, 413, 422)

operator = APIRouter(
    prefix="/v1/incidents",
    tags=["operator"],
    dependencies=OPERATOR_AUTH,  # first of all: before the body is read
    responses=answers(401, 403, 503),
)

UpdateBody = Annotated[UpdateRequest, Depends(body_of(UpdateRequest))]
AcknowledgeBody = Annotated[
    AcknowledgeRequest | None, Depends(optional_body_of(AcknowledgeRequest))
]
ResolveBody = Annotated[ResolveRequest | None, Depends(optional_body_of(ResolveRequest))]
PostmortemBody = Annotated[PostmortemRequest, Depends(body_of(PostmortemRequest))]


@operator.get("", summary="List incidents, newest first", responses=answers(422))
async def list_incidents(
    state: State,
    status: Annotated[Literal["open", "resolved", "all"], Query()] = "all",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> IncidentList:
    incidents = await recent_incidents(state.redis, limit if status == "all" else 500)
    if status != "all":
        incidents = [i for i in incidents if i.is_open == (status == "open")]
    return IncidentList(incidents=[IncidentView.of(i) for i in incidents[:limit]])


@operator.get(
    "/{incident_id}",
    summary="One incident: alerts, timeline, severity, status",
    responses=READ,
)
async def get_incident(incident_id: str, state: State) -> IncidentView:
    incident = await load_incident(state.redis, incident_id)
    if incident is None:
        raise IncidentNotFound(f"no incident has the id {incident_id}")
    return IncidentView.of(incident)


@operator.post(
    "/{incident_id}/updates",
    status_code=201,
    summary="Post a human-written update",
    description="Publishes an updated event and restarts the update cadence. "
    "A status of `resolved` resolves the incident.",
    responses=CHANGE,
    openapi_extra=documented(UpdateRequest),
)
async def post_incident_update(incident_id: str, state: State, body: UpdateBody) -> ActionResult:
    update = OperatorUpdate(
        message=body.message,
        status=body.status,
        title=body.title,
        impact=body.impact,
        components=tuple(body.components) if body.components is not None else None,
        author=body.author,
    )
    result = await state.store.change(
        incident_id, lambda current, now: post_update(current, now, update)
    )
    return _answer("update_posted", result)


@operator.post(
    "/{incident_id}/acknowledge",
    summary="Acknowledge: the status becomes identified",
    responses=CHANGE,
    openapi_extra=documented(AcknowledgeRequest, required=False),
)
async def acknowledge_incident(
    incident_id: str, state: State, body: AcknowledgeBody
) -> ActionResult:
    by = body.by if body else None
    result = await state.store.change(
        incident_id, lambda current, now: acknowledge(current, now, by)
    )
    return _answer("acknowledged", result)


@operator.post(
    "/{incident_id}/resolve",
    summary="Resolve the incident now",
    responses=CHANGE,
    openapi_extra=documented(ResolveRequest, required=False),
)
async def resolve_incident(incident_id: str, state: State, body: ResolveBody) -> ActionResult:
    message = body.message if body else None
    result = await state.store.change(
        incident_id, lambda current, now: resolve(current, now, message)
    )
    return _answer("resolved", result)


@operator.post(
    "/{incident_id}/postmortem",
    summary="Publish the post-mortem of a resolved incident",
    description="Tells the audiences the plan routes `postmortem_published` to. "
    "The same link again changes nothing; a new link is announced as a correction.",
    responses=CHANGE,
    openapi_extra=documented(PostmortemRequest),
)
async def post_postmortem(incident_id: str, state: State, body: PostmortemBody) -> ActionResult:
    url, summary = str(body.url), body.summary
    result = await state.store.change(
        incident_id, lambda current, now: publish_postmortem(current, now, url, summary)
    )
    return _answer("postmortem_published", result)


def _answer(action: str, result: ApplyResult) -> ActionResult:
    incident = result.incident
    assert isinstance(incident, Incident)
    with bound(incident_id=incident.id):
        log.info(f"operator.{action}", events=result.events)
    return ActionResult(incident=IncidentView.of(incident), events=result.events)
