"""The ops pages under /ops: server-rendered HTML for people on call.

Handlers load what a page needs and hand it to :mod:`ops_views`; who may see them is
:mod:`ops_auth`'s business. Every page answers ``Cache-Control: no-store``, asks
robots to stay away and may not be framed. A request that is not signed in gets 401
with the login form in the body, so a browser always sees where to sign in.

Pages: ``/ops`` (open incidents, audiences overdue for an update),
``/ops/deliveries`` (the delivery log, filtered and paged), ``/ops/incidents/{id}``
(updates and who heard what), ``/ops/dead-letters`` (with replay), ``/ops/outbox``;
``/ops/login`` and ``/ops/logout``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from services.dispatcher.dead_letters import ReplayStatus, get_dead_letter, list_dead_letters
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_query import DeliveryQuery, QueryError, decode_cursor
from services.dispatcher.ops_auth import (
    COOKIE_PATH,
    CSRF_FIELD,
    HOME,
    LoginRequired,
    OpsViewer,
    check_csrf,
    clear_session_cookie,
    configured_token,
    issue_session,
    ops_viewer,
    page_key,
    safe_next,
    set_session_cookie,
    token_matches,
)
from services.dispatcher.ops_overdue import build_overview, expected_audiences
from services.dispatcher.ops_views import (
    SEVERITY_TONES,
    DeliveryFilters,
    Flash,
    datetime_local,
    dead_letter_row,
    decode_flash,
    delivery_row,
    encode_flash,
    filter_options,
    filter_problem,
    moment,
    nav,
    options,
    outbox_row,
    replay_all_flash,
    replay_flash,
    timeline_rows,
    who_heard_what,
)
from services.dispatcher.outbox import read_outbox
from services.dispatcher.page_engine import html_page
from services.dispatcher.state import State, get_state
from shared.contracts import DeliveryStatus
from shared.errors import Forbidden
from shared.http_errors import field_errors
from shared.incidents import load_incident, recent_incidents
from shared.logs import get_logger
from shared.plan import ChannelName

log = get_logger("clarion.dispatcher.ops")

FLASH_COOKIE: Final = "clarion_ops_flash"
OVERVIEW_SCAN: Final = 200
"""The newest incidents the overview looks through for open ones."""
INCIDENT_RECORDS: Final = 5000
"""At most this many delivery records shown for one incident."""
LAST_SENT_PAGES: Final = 5
DEAD_LETTERS_SHOWN: Final = 200
REPLAY_ALL_LIMIT: Final = 1000
OUTBOX_SHOWN: Final = 50
PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class OpsPageRoute(APIRoute):
    """An ops page: refusals become HTML pages, and every answer gets the page headers."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as refusal:
                response = _login_page(request, refusal.problem, _next_of(request), 401)
                if refusal.clear_cookie:
                    clear_session_cookie(response, request)
            except Forbidden as refusal:
                response = _message_page(request, "Not allowed", str(refusal), 403)
            except RequestValidationError as invalid:
                problems = "; ".join(f"{e.field}: {e.reason}" for e in field_errors(invalid))
                response = _message_page(request, "Not a valid request", problems, 422)
            shown = request.method == "GET" and response.status_code == 200
            if shown and FLASH_COOKIE in request.cookies:  # a flash is shown once
                response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
            response.headers.update(PAGE_HEADERS)
            return response

        return page


ops_pages = APIRouter(prefix="/ops", include_in_schema=False, route_class=OpsPageRoute)

Viewer = Annotated[OpsViewer, Depends(ops_viewer)]
CsrfToken = Annotated[str, Form(alias=CSRF_FIELD, max_length=200)]
NextQuery = Annotated[str, Query(alias="next", max_length=2000)]


# Signing in and out


@ops_pages.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next_path: NextQuery = HOME) -> Response:
    target = safe_next(next_path)
    try:
        await ops_viewer(request)  # token-less: loopback only (403 otherwise)
    except LoginRequired as refusal:
        response = _login_page(request, refusal.problem, target, 200)
        if refusal.clear_cookie:
            clear_session_cookie(response, request)
        return response
    return RedirectResponse(target, status_code=303)  # signed in already


@ops_pages.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=1000)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=2000)] = HOME,
) -> Response:
    state = get_state(request)
    target = safe_next(next_path)
    if configured_token(state.settings) is None:
        await ops_viewer(request)  # token-less: loopback only (403 otherwise)
        return RedirectResponse(target, status_code=303)
    if not token_matches(request, token):
        log.warning("ops.sign_in_refused")
        return _login_page(request, "That is not the ops token.", target, 401)
    log.info("ops.signed_in")
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, issue_session(page_key(request), state.clock.now()))
    return response


@ops_pages.post("/logout")
async def logout(request: Request, viewer: Viewer, csrf: CsrfToken = "") -> Response:
    check_csrf(viewer, csrf)
    response = RedirectResponse("/ops/login", status_code=303)
    clear_session_cookie(response, request)
    return response


# Pages


@ops_pages.get("", response_class=HTMLResponse)
async def overview(request: Request, state: State, viewer: Viewer) -> Response:
    now = state.clock.now()
    incidents = [i for i in await recent_incidents(state.redis, OVERVIEW_SCAN) if i.is_open]
    last_sent = {
        incident.id: {
            audience: await _last_sent(state.delivery_log, incident.id, audience)
            for audience in expected_audiences(incident, state.plan, now)
        }
        for incident in incidents
    }
    view = build_overview(incidents, last_sent, state.plan, now)
    return _page(request, viewer, "overview.html.j2", HOME, overview=view)


@ops_pages.get("/deliveries", response_class=HTMLResponse)
async def deliveries(request: Request, state: State, viewer: Viewer) -> Response:
    filters = DeliveryFilters.of(request.query_params)
    zone = state.plan.zones[0]
    values: dict[str, Any] = {
        "filters": filters,
        "since_value": datetime_local(filters.since),
        "until_value": datetime_local(filters.until),
        "rows": (),
        "next_href": None,
        "first_href": filters.href() if filters.before else None,
        "problem": None,
        **filter_options(filters, state.plan),
    }
    try:
        page = await state.delivery_log.query(filters.query())
    except QueryError as error:
        values["problem"] = filter_problem(error)
        template = "deliveries.html.j2"
        return _page(request, viewer, template, "/ops/deliveries", status_code=400, **values)
    values["rows"] = tuple(delivery_row(record, zone) for record in page.deliveries)
    values["next_href"] = filters.href(page.next_cursor) if page.next_cursor else None
    return _page(request, viewer, "deliveries.html.j2", "/ops/deliveries", **values)


@ops_pages.get("/incidents/{incident_id}", response_class=HTMLResponse)
async def incident(incident_id: str, request: Request, state: State, viewer: Viewer) -> Response:
    zone = state.plan.zones[0]
    found = await load_incident(state.redis, incident_id)
    records = await state.delivery_log.recent(INCIDENT_RECORDS + 1, incident_id=incident_id)
    if found is None and not records:
        text = f"There is no incident {incident_id}."
        return _page(
            request, viewer, "message.html.j2", "", status_code=404, heading="Not found", text=text
        )
    values: dict[str, Any] = {
        "incident_id": incident_id,
        "incident": found,
        "severity": found.severity.sev if found else "",
        "severity_tone": SEVERITY_TONES[found.severity] if found else "info",
        "opened": moment(found.opened_at, zone) if found else None,
        "resolved": moment(found.resolved_at, zone) if found and found.resolved_at else None,
        "timeline": timeline_rows(found, zone) if found else (),
        "events": who_heard_what(records[:INCIDENT_RECORDS], incident_id, zone),
        "truncated": len(records) > INCIDENT_RECORDS,
        "deliveries_href": DeliveryFilters(incident_id=incident_id).href(),
    }
    return _page(request, viewer, "incident.html.j2", "", **values)


@ops_pages.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(request: Request, state: State, viewer: Viewer) -> Response:
    zone = state.plan.zones[0]
    entries = await list_dead_letters(state.redis, DEAD_LETTERS_SHOWN)
    rows = tuple(dead_letter_row(entry.view(state.secrets), zone) for entry in entries)
    waiting = sum(1 for row in rows if row.replayed is None)
    return _page(
        request, viewer, "dead_letters.html.j2", "/ops/dead-letters", rows=rows, waiting=waiting
    )


@ops_pages.post("/dead-letters/replay-all")
async def replay_all(
    request: Request, state: State, viewer: Viewer, csrf: CsrfToken = ""
) -> Response:
    check_csrf(viewer, csrf)
    entries = await list_dead_letters(state.redis, REPLAY_ALL_LIMIT, include_replayed=False)
    counts = dict.fromkeys(ReplayStatus, 0)
    for entry in entries:
        counts[(await state.replayer.replay(entry, by=_by(viewer))).status] += 1
    log.info("ops.dead_letters_replayed", by=_by(viewer), **{s.value: n for s, n in counts.items()})
    return _redirect(request, "/ops/dead-letters", replay_all_flash(counts))


@ops_pages.post("/dead-letters/{entry_id}/replay")
async def replay_one(
    entry_id: str, request: Request, state: State, viewer: Viewer, csrf: CsrfToken = ""
) -> Response:
    check_csrf(viewer, csrf)
    entry = await get_dead_letter(state.redis, entry_id)
    result = None if entry is None else await state.replayer.replay(entry, by=_by(viewer))
    status = result.status.value if result else "not_found"
    log.info("ops.dead_letter_replayed", entry_id=entry_id, by=_by(viewer), status=status)
    return _redirect(request, "/ops/dead-letters", replay_flash(entry_id, result))


@ops_pages.get("/outbox", response_class=HTMLResponse)
async def outbox(request: Request, state: State, viewer: Viewer, channel: str = "") -> Response:
    zone = state.plan.zones[0]
    chosen = channel.strip()[:50]
    messages = await read_outbox(state.redis, OUTBOX_SHOWN, channel=chosen or None)
    return _page(
        request,
        viewer,
        "outbox.html.j2",
        "/ops/outbox",
        rows=tuple(outbox_row(message, zone) for message in messages),
        channel=chosen,
        channels=options((c.value for c in ChannelName), chosen),
    )


# Helpers


async def _last_sent(log: DeliveryLog, incident_id: str, audience: str) -> datetime | None:
    """When ``audience`` was last sent something about the incident (None: never)."""
    query = DeliveryQuery(
        incident_id=incident_id,
        statuses=frozenset({DeliveryStatus.SENT}),
        audiences=frozenset({audience}),
        limit=1,
    )
    for _ in range(LAST_SENT_PAGES):  # a page reads a bounded number of entries
        page = await log.query(query)
        if page.deliveries:
            return page.deliveries[0].recorded_at
        if page.next_cursor is None:
            return None
        query = replace(query, before=decode_cursor(page.next_cursor))
    return None


def _by(viewer: OpsViewer) -> str:
    return f"ops page ({viewer.method.value})"


def _base_values(request: Request, viewer: OpsViewer | None, current: str) -> dict[str, Any]:
    return {
        "organization": get_state(request).plan.organization,
        "nav": nav(current) if viewer is not None else (),
        "viewer": viewer,
        "csrf_field": CSRF_FIELD,
        "flash": decode_flash(request.cookies.get(FLASH_COOKIE)) if viewer is not None else None,
    }


def _page(
    request: Request,
    viewer: OpsViewer,
    template: str,
    current: str,
    *,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    return html_page(
        f"ops/{template}", _base_values(request, viewer, current) | values, status_code=status_code
    )


def _login_page(request: Request, problem: str | None, next_path: str, status: int) -> Response:
    values = _base_values(request, None, "") | {"problem": problem, "next": next_path}
    response = html_page("ops/login.html.j2", values, status_code=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="clarion ops"'
    return response


def _message_page(request: Request, heading: str, text: str, status: int) -> Response:
    values = _base_values(request, None, "") | {"heading": heading, "text": text}
    return html_page("ops/message.html.j2", values, status_code=status)


def _next_of(request: Request) -> str:
    """Where to go after signing in: the page asked for (a GET), else the overview."""
    if request.method != "GET":
        return HOME
    query = request.url.query
    return safe_next(f"{request.url.path}?{query}" if query else request.url.path)


def _redirect(request: Request, path: str, flash: Flash) -> Response:
    response = RedirectResponse(path, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        encode_flash(flash),
        max_age=60,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response
