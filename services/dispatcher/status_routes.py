"""The public status page: HTML, one page per incident, JSON and feeds. No login, no JS
framework; every answer is built from what the status page channel posted."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.dispatcher.page_engine import html_page
from services.dispatcher.state import State
from services.dispatcher.status_feeds import FeedWriter, atom_feed, rss_feed
from services.dispatcher.status_presenter import (
    incident_values,
    moment,
    page_zones,
    status_page_values,
)
from services.dispatcher.status_summary import (
    IncidentUrl,
    components_document,
    incidents_document,
    status_document,
    summary_document,
)
from services.dispatcher.status_view import HISTORY, StatusPage, build_status_page

SCAN: Final = 500
"""At most this many incidents (changed in the last 90 days) make up the page."""
CACHE: Final = {"Cache-Control": "public, max-age=15"}

status_pages = APIRouter(tags=["status page"])


async def _page(state: State) -> StatusPage:
    now = state.clock.now()
    incidents = await state.status_pages.recent(SCAN, since=now - HISTORY)
    return build_status_page(incidents, state.plan, now)


def _page_url(request: Request) -> str:
    return str(request.url_for("status_html"))


def _incident_url(request: Request) -> IncidentUrl:
    def url(incident_id: str) -> str:
        return str(request.url_for("incident_page", incident_id=incident_id))

    return url


@status_pages.get("/status", response_class=HTMLResponse, include_in_schema=False)
async def status_html(state: State) -> HTMLResponse:
    page = await _page(state)
    return html_page("page/status.html.j2", status_page_values(page, state.plan), headers=CACHE)


@status_pages.get(
    "/status/incidents/{incident_id}", response_class=HTMLResponse, include_in_schema=False
)
async def incident_page(incident_id: str, state: State) -> HTMLResponse:
    incident = await state.status_pages.get(incident_id)
    organization = state.plan.organization
    if incident is None:
        message = "There is no incident at this address. It may have been mistyped."
        missing = {"organization": organization, "message": message}
        return html_page("page/not_found.html.j2", missing, status_code=404)
    now = state.clock.now()
    values: dict[str, Any] = {
        "organization": organization,
        "incident": incident_values(incident, state.plan, now),
        "generated": moment(now, page_zones(state.plan)),
    }
    return html_page("page/incident.html.j2", values, headers=CACHE)


@status_pages.get(
    "/status.json",
    summary="The status page as data (Statuspage summary.json shape)",
    description="Schema: /status.schema.json. Also at /status/api/v2/summary.json.",
)
async def status_json(request: Request, state: State) -> JSONResponse:
    page = await _page(state)
    body = summary_document(page, state.plan, _page_url(request), _incident_url(request))
    return JSONResponse(body, headers=CACHE)


@status_pages.get("/status/api/v2/summary.json", include_in_schema=False)
async def summary_json(request: Request, state: State) -> JSONResponse:
    return await status_json(request, state)


@status_pages.get("/status/api/v2/status.json", summary="The overall status only")
async def overall_json(request: Request, state: State) -> JSONResponse:
    page = await _page(state)
    return JSONResponse(status_document(page, state.plan, _page_url(request)), headers=CACHE)


@status_pages.get(
    "/status/api/v2/incidents.json", summary="Open incidents and the last 90 days of resolved"
)
async def incidents_json(request: Request, state: State) -> JSONResponse:
    page = await _page(state)
    body = incidents_document(page, state.plan, _page_url(request), _incident_url(request))
    return JSONResponse(body, headers=CACHE)


@status_pages.get("/status/api/v2/components.json", summary="Components and their status")
async def components_json(request: Request, state: State) -> JSONResponse:
    page = await _page(state)
    return JSONResponse(components_document(page, state.plan, _page_url(request)), headers=CACHE)


@status_pages.get("/status.schema.json", summary="The JSON Schema of /status.json")
async def status_schema() -> JSONResponse:
    return JSONResponse(_schema())


@status_pages.get("/status/feed.atom", include_in_schema=False)
async def feed_atom(request: Request, state: State) -> Response:
    return await _feed(request, state, atom_feed, "feed_atom", "application/atom+xml")


@status_pages.get("/status/feed.rss", include_in_schema=False)
async def feed_rss(request: Request, state: State) -> Response:
    return await _feed(request, state, rss_feed, "feed_rss", "application/rss+xml")


async def _feed(
    request: Request, state: State, write: FeedWriter, route: str, media_type: str
) -> Response:
    body = write(
        await _page(state),
        page_url=_page_url(request),
        self_url=str(request.url_for(route)),
        incident_url=_incident_url(request),
    )
    return Response(body, media_type=f"{media_type}; charset=utf-8", headers=CACHE)


@cache
def _schema() -> dict[str, Any]:
    text = files("services.dispatcher").joinpath("status.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
