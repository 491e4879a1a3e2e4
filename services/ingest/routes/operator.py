"""The operator API: read incidents, post updates, acknowledge, resolve.

Protected by ``CLARION_OPS_TOKEN`` as a bearer token (loopback only when unset).
Every change goes through the same atomic store as alerts do, and publishes
the same incident events, so humans and monitoring never race each other.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query

from services.ingest.incident_actions import (
    OperatorUpdate,
    acknowledge,
    post_update,
    publish_postmortem,
    resolve,
)
from services.ingest.incident_store import ApplyResult, IncidentNotFound
from services.ingest.operator_models import (
    AcknowledgeRequest,
    ActionResult,
    IncidentList,
    IncidentView,
    PostmortemRequest,
    ResolveRequest,
    UpdateRequest,
)
from services.ingest.state import State, require_operator
from shared.contracts import Incident
from shared.incidents import load_incident, recent_incidents
from shared.logs import bound, get_logger

log = get_logger("clarion.ingest.operator")


operator = APIRouter(
    prefix="/v1/incidents", tags=["operator"], dependencies=[Depends(require_operator)]
)


@operator.get("", summary="List incidents, newest first")
async def list_incidents(
    state: State,
    status: Annotated[Literal["open", "resolved", "all"], Query()] = "all",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> IncidentList:
    incidents = await recent_incidents(state.redis, limit if status == "all" else 500)
    if status != "all":
        incidents = [i for i in incidents if i.is_open == (status == "open")]
    return IncidentList(incidents=[IncidentView.of(i) for i in incidents[:limit]])


@operator.get("/{incident_id}", summary="One incident: alerts, timeline, severity, status")
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
)
async def post_incident_update(
    incident_id: str, state: State, body: Annotated[UpdateRequest, Body()]
) -> ActionResult:
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


@operator.post("/{incident_id}/acknowledge", summary="Acknowledge: the status becomes identified")
async def acknowledge_incident(
    incident_id: str,
    state: State,
    body: Annotated[AcknowledgeRequest | None, Body()] = None,
) -> ActionResult:
    by = body.by if body else None
    result = await state.store.change(
        incident_id, lambda current, now: acknowledge(current, now, by)
    )
    return _answer("acknowledged", result)


@operator.post("/{incident_id}/resolve", summary="Resolve the incident now")
async def resolve_incident(
    incident_id: str,
    state: State,
    body: Annotated[ResolveRequest | None, Body()] = None,
) -> ActionResult:
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
)
async def post_postmortem(
    incident_id: str, state: State, body: Annotated[PostmortemRequest, Body()]
) -> ActionResult:
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
