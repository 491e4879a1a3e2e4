"""``POST /v2/enqueue``: a drop-in for PagerDuty's Events API v2.

Any tool that can send to PagerDuty can send to Clarion by changing only the
URL. Answers are PagerDuty's own: 202 ``{"status": "success", ...,
"dedup_key"}``, and 400 ``{"status": "invalid event", "message", "errors"}``
for bad events and unknown routing keys (never a silent drop).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import Request

from services.ingest.incident_actions import acknowledge
from services.ingest.intake import Session
from services.ingest.openapi_docs import json_body
from services.ingest.security import CREDENTIAL_IN_BODY, INGEST_TOKEN
from services.ingest.sources import pagerduty as source
from services.ingest.sources.pagerduty import PagerDutyEvent
from services.ingest.state import IngestState, State
from shared.errors import (
    BodyTooLarge,
    ClarionError,
    Forbidden,
    MalformedBody,
    RateLimited,
    Unauthorized,
)
from shared.logs import get_logger

SOURCE = source.SOURCE

log = get_logger("clarion.ingest")

pagerduty = APIRouter(tags=["webhooks"], dependencies=[Depends(INGEST_TOKEN)])


class _InvalidEvent(ClarionError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@pagerduty.post(
    "/v2/enqueue",
    status_code=202,
    summary="PagerDuty Events API v2 drop-in",
    description="Actions trigger, acknowledge and resolve. The routing key must be one of "
    "`CLARION_PAGERDUTY_ROUTING_KEYS` or `CLARION_INGEST_TOKEN`.",
    responses={
        400: {"description": "Invalid event, unknown routing key, or not JSON"},
        403: {"description": "No credentials configured and the sender is not on this host"},
        413: {"description": "The body is over the limit"},
        429: {"description": "Too many events; see Retry-After"},
        503: {"description": "Storage is unavailable; nothing was accepted, try again"},
    },
    openapi_extra=json_body(PagerDutyEvent, "pagerduty_trigger.json") | CREDENTIAL_IN_BODY,
)
async def enqueue(request: Request, state: State) -> JSONResponse:
    started, status = time.perf_counter(), 503
    try:
        answer = await _enqueue(Session(state.intake, request, SOURCE), state)
        status = answer.status_code
        return answer
    finally:
        state.intake.metrics.observe_request(SOURCE, status, time.perf_counter() - started)


async def _enqueue(session: Session, state: IngestState) -> JSONResponse:
    try:
        event = await _receive(session, state)
        dedup_key = source.dedup_key_of(event)
        if source.is_acknowledge(event):
            by = event.client or "a PagerDuty sender"
            result = await state.store.change_open(
                source.group_key_of(event), lambda current, now: acknowledge(current, now, by)
            )
            log.info("alerts.acknowledged", source=SOURCE, events=result.events)
        else:
            alerts = source.parse(event, state.severities(SOURCE, source.SEVERITIES))
            accepted = await state.accept(alerts)
            state.intake.metrics.count_accepted(SOURCE, len(alerts))
            log.info("alerts.accepted", source=SOURCE, events=accepted.events)
    except ClarionError as exc:
        answer = _pagerduty_answer(exc)
        if answer is None:
            raise
        await _record(session, state, exc, answer)
        return answer
    return JSONResponse(source.accepted_body(dedup_key), 202)


async def _receive(session: Session, state: IngestState) -> PagerDutyEvent:
    await session.read()
    data = session.json()
    if not isinstance(data, dict):
        raise _InvalidEvent(["Event object must be a JSON object"])
    key = data.get("routing_key")
    try:
        session.authenticate(routing_key=key if isinstance(key, str) else "")
    except Unauthorized as exc:
        creds = state.intake.credentials[SOURCE]
        accepted = [s.get_secret_value() for s in (*creds.tokens, *creds.routing_keys)]
        given = key if isinstance(key, str) else ""
        raise _InvalidEvent(source.routing_key_errors(given, accepted)) from exc
    await state.intake.limiter.check(SOURCE)
    try:
        return PagerDutyEvent.model_validate(data)
    except ValidationError as exc:
        raise _InvalidEvent(source.error_messages(exc)) from exc


def _pagerduty_answer(exc: ClarionError) -> JSONResponse | None:
    """The answer PagerDuty would give to ``exc``; None for errors that aren't the sender's."""
    if isinstance(exc, MalformedBody):
        return JSONResponse(source.unrecognized_body(), 400)
    if isinstance(exc, _InvalidEvent):
        return JSONResponse(source.invalid_event_body(exc.errors), 400)
    if isinstance(exc, BodyTooLarge):
        return JSONResponse(source.invalid_event_body([str(exc)]), 413)
    if isinstance(exc, Forbidden):
        return JSONResponse({"status": "forbidden", "message": str(exc), "errors": []}, 403)
    if isinstance(exc, RateLimited):
        body: dict[str, Any] = {
            "status": "throttle event",
            "message": "Requests for this service are arriving too quickly. Please retry later.",
            "errors": [str(exc)],
        }
        return JSONResponse(body, 429, headers={"Retry-After": str(exc.retry_after_seconds)})
    return None


async def _record(
    session: Session, state: IngestState, exc: ClarionError, answer: JSONResponse
) -> None:
    reason = {
        MalformedBody: "invalid_json",
        _InvalidEvent: "invalid_event",
        BodyTooLarge: "payload_too_large",
        Forbidden: "forbidden",
        RateLimited: "rate_limited",
    }.get(type(exc), type(exc).__name__)
    await state.intake.rejections.record(
        source=SOURCE,
        status=answer.status_code,
        reason=reason,
        message=str(exc),
        client=session.client,
        body=session.body,
    )
