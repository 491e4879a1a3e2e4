"""Webhook routes of the sources that answer in Clarion's own shape.

Each route is the same few steps: receive (bounded read, credentials, rate
limit), validate the body against the source's model, parse it into alerts,
and accept them, answering 202 only once the incidents and their events are
durably in Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, Field
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from services.ingest.openapi_docs import json_body
from services.ingest.security import WEBHOOK_AUTH
from services.ingest.severity import SeverityMap
from services.ingest.sources import alertmanager, datadog, generic, grafana
from services.ingest.state import Accepted, State
from shared.contracts import Alert
from shared.logs import get_logger

P = TypeVar("P", bound=BaseModel)

log = get_logger("clarion.ingest")

webhooks = APIRouter(prefix="/v1/alerts", tags=["webhooks"], dependencies=WEBHOOK_AUTH)

ANSWERS: dict[int | str, dict[str, str]] = {
    400: {"description": "The body is not JSON"},
    401: {"description": "Credentials are missing or wrong"},
    403: {"description": "No credentials can help (loopback only, or none set for the source)"},
    413: {"description": "The body, or its number of alerts, is over the limit"},
    422: {"description": "The body is JSON but not valid; the error names each field"},
    429: {"description": "The source is over its rate limit; see Retry-After"},
    503: {"description": "Storage is unavailable; nothing was accepted, try again"},
}


class AcceptedAnswer(BaseModel):
    """The answer to an accepted webhook."""

    status: str = "accepted"
    incident_id: str | None = Field(description="The first incident the alerts touched")
    incident_ids: list[str] = Field(description="Every incident the alerts touched")
    events: list[str] = Field(description="Incident events published; [] for a resend")
    duplicate: bool = Field(description="True when the request changed nothing (a resend)")


def answer(source: str, alerts: int, accepted: Accepted, state: State) -> Response:
    """The 202 of an accepted webhook: an :class:`AcceptedAnswer`, as JSON."""
    state.intake.metrics.count_accepted(source, alerts)
    log.info(
        "alerts.accepted",
        source=source,
        alerts=alerts,
        incident_ids=accepted.incident_ids,
        events=accepted.events,
        duplicate=accepted.duplicate,
    )
    body = {  # AcceptedAnswer's fields, in its order, built without validating them again
        "status": "accepted",
        "incident_id": accepted.incident_ids[0] if accepted.incident_ids else None,
        "incident_ids": accepted.incident_ids,
        "events": accepted.events,
        "duplicate": accepted.duplicate,
    }
    return Response(to_json(body), 202, media_type="application/json")


@dataclass(frozen=True)
class BatchSource(Generic[P]):
    """A source whose body is one validated model holding a batch of alerts."""

    name: str
    model: type[P]
    parse: Callable[[P, SeverityMap], list[Alert]]
    severities: SeverityMap
    count: Callable[[P], int] = lambda _: 1
    truncated: Callable[[P], int] = lambda _: 0
    external_url: Callable[[P], str | None] = lambda _: None


ALERTMANAGER = BatchSource(
    alertmanager.SOURCE,
    alertmanager.AlertmanagerWebhook,
    alertmanager.parse,
    alertmanager.SEVERITIES,
    count=lambda p: len(p.alerts),
    truncated=lambda p: p.truncated_alerts,
    external_url=lambda p: p.external_url,
)
GRAFANA = BatchSource(
    grafana.SOURCE,
    grafana.GrafanaWebhook,
    grafana.parse,
    grafana.SEVERITIES,
    count=lambda p: len(p.alerts),
    truncated=lambda p: p.truncated_alerts,
    external_url=lambda p: p.external_url,
)
DATADOG = BatchSource(datadog.SOURCE, datadog.DatadogWebhook, datadog.parse, datadog.SEVERITIES)


async def receive_batch(request: Request, state: State, source: BatchSource[P]) -> Response:
    """Receive, validate, parse and accept one webhook of ``source``."""
    async with state.intake.session(request, source.name) as session:
        await session.receive()
        payload = session.model(source.model)
        session.check_count(source.count(payload))
        alerts = source.parse(payload, state.severities(source.name, source.severities))
        truncated = source.truncated(payload)
        accepted = await state.accept(alerts, truncated, source.external_url(payload))
    if truncated:
        log.warning("alerts.truncated", source=source.name, truncated=truncated)
    return answer(source.name, len(alerts), accepted, state)


@webhooks.post(
    "/alertmanager",
    status_code=202,
    response_model=AcceptedAnswer,
    summary="Prometheus Alertmanager webhook (version 4)",
    responses=ANSWERS,
    openapi_extra=json_body(alertmanager.AlertmanagerWebhook, "alertmanager_firing.json"),
)
async def alertmanager_webhook(request: Request, state: State) -> Response:
    return await receive_batch(request, state, ALERTMANAGER)


@webhooks.post(
    "/grafana",
    status_code=202,
    response_model=AcceptedAnswer,
    summary="Grafana unified alerting webhook (version 1)",
    description="Accepts a bearer token, basic auth, or Grafana's HMAC signature "
    "(`X-Grafana-Alerting-Signature`, with the optional timestamp header).",
    responses=ANSWERS,
    openapi_extra=json_body(grafana.GrafanaWebhook, "grafana_firing.json"),
)
async def grafana_webhook(request: Request, state: State) -> Response:
    return await receive_batch(request, state, GRAFANA)


@webhooks.post(
    "/datadog",
    status_code=202,
    response_model=AcceptedAnswer,
    summary="Datadog webhook (default payload plus the alert variables)",
    responses=ANSWERS,
    openapi_extra=json_body(datadog.DatadogWebhook, "datadog_triggered.json"),
)
async def datadog_webhook(request: Request, state: State) -> Response:
    return await receive_batch(request, state, DATADOG)


@webhooks.post(
    "/generic",
    status_code=202,
    response_model=AcceptedAnswer,
    summary="Generic JSON alerts (Clarion's format, version 1)",
    description="The format is documented in docs/sources/generic.md and its JSON Schema in "
    "docs/schemas/generic-alert-v1.schema.json. Accepts a bearer token, basic auth, or a "
    "Standard Webhooks signature.",
    responses=ANSWERS,
    openapi_extra=json_body(generic.GenericWebhook, "generic_firing.json"),
)
async def generic_webhook(request: Request, state: State) -> Response:
    source = generic.SOURCE
    async with state.intake.session(request, source) as session:
        await session.receive()
        data = session.json()
        if isinstance(data, dict) and isinstance(data.get("alerts"), list):
            session.check_count(len(data["alerts"]))
        payload = session.model(generic.GenericWebhook)
        alerts = generic.parse(payload, state.severities(source, generic.SEVERITIES))
        accepted = await state.accept(alerts)
    return answer(source, len(alerts), accepted, state)
