"""Email subscriptions on the status page: subscribe, confirm, unsubscribe. HTML, no JS.

- ``GET /status/subscribe``: the form (an address, and the plan's components to
  choose from; none ticked means every incident).
- ``POST /status/subscribe``: a bad address or component is a 400 with the form and
  the reason; anything else gets the same "check your inbox" page, whether the
  address is new, subscribed already or throttled, and the confirmation email goes
  out after the answer (:func:`.subscription_mail.ask_to_confirm`).
- ``GET /status/subscribe/confirm?token=``: a page with a Confirm button. Link
  scanners follow GET links, so GET never confirms; ``POST`` does, once.
- ``GET /status/unsubscribe?token=``: a page with an Unsubscribe button; ``POST``
  unsubscribes. The POST is RFC 8058's one-click: it needs no cookie, no session and
  no body beyond ``List-Unsubscribe=One-Click`` (which it does not even require),
  only the signed token of the link in the email (:mod:`.unsubscribe`).

Pages that carry a token in their address say ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``, so the token does not leak to another site or a cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import HTMLResponse
from limits import parse
from starlette.datastructures import FormData

from services.dispatcher.page_engine import html_page
from services.dispatcher.rate_limits import Limit, RateLimits
from services.dispatcher.state import DispatcherState, State
from services.dispatcher.subscription_mail import ConfirmationMailer, ask_to_confirm, scope_words
from services.dispatcher.subscriptions import (
    MAIL_EVERY,
    MAX_ADDRESS,
    PENDING_FOR,
    InvalidAddress,
    SubscriptionStore,
    chosen_components,
    parse_address,
    well_formed_token,
)
from services.dispatcher.unsubscribe import (
    unsubscribe_secret,
    unsubscribe_token,
    verify_unsubscribe_token,
)

SUBSCRIBE_SCOPE: Final = "subscribe-form"
SUBSCRIBE_LIMITS: Final = {
    SUBSCRIBE_SCOPE: (
        Limit(parse("10/hour"), per_recipient=True),  # per client address
        Limit(parse("1000/hour"), per_recipient=False),  # all together: the mail budget
    )
}
"""Requests to subscribe, so the form can't be used to mail-bomb strangers."""
STATUS_HREF: Final = "/status"
SUBSCRIBE_HREF: Final = "/status/subscribe"
CONFIRM_HREF: Final = "/status/subscribe/confirm"
UNSUBSCRIBE_HREF: Final = "/status/unsubscribe"
PRIVATE: Final = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}

subscription_routes = APIRouter(prefix="/status", include_in_schema=False)


def _with_token(path: str, token: str) -> str:
    return f"{path}?{urlencode({'token': token})}"


def _values(state: DispatcherState, **values: Any) -> dict[str, Any]:
    return {
        "organization": state.plan.organization,
        "status_href": STATUS_HREF,
        "subscribe_href": SUBSCRIBE_HREF,
        **values,
    }


def _form_page(
    state: DispatcherState,
    *,
    email: str = "",
    checked: frozenset[str] = frozenset(),
    error: str | None = None,
    error_field: str | None = None,
    status_code: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    components = [
        {
            "name": c.name,
            "description": c.description,
            "checked": c.name.casefold() in checked,
        }
        for c in state.plan.components
    ]
    values = _values(
        state, email=email, components=components, error=error, error_field=error_field
    )
    code = status_code or (400 if error else 200)
    return html_page("page/subscribe.html.j2", values, status_code=code, headers=headers)


def _problem(
    state: DispatcherState,
    status_code: int,
    *,
    heading: str,
    problem: str,
    advice: str,
    subscribe_again: bool = True,
) -> HTMLResponse:
    values = _values(
        state,
        heading=heading,
        problem=problem,
        advice=advice,
        next_href=SUBSCRIBE_HREF if subscribe_again else STATUS_HREF,
        next_label="Subscribe again" if subscribe_again else "Back to the status page",
    )
    return html_page(
        "page/subscribe_link_problem.html.j2", values, status_code=status_code, headers=PRIVATE
    )


def _text(form: FormData | Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# Subscribing


@subscription_routes.get("/subscribe", response_class=HTMLResponse)
async def subscribe_form(state: State) -> HTMLResponse:
    return _form_page(state)


@subscription_routes.post("/subscribe", response_class=HTMLResponse)
async def subscribe(request: Request, state: State, background: BackgroundTasks) -> HTMLResponse:
    form = await request.form()
    typed = _text(form, "email")[: MAX_ADDRESS * 2]
    requested = [value for value in form.getlist("component") if isinstance(value, str)]
    checked = frozenset(name.strip().casefold() for name in requested)
    client = request.client.host if request.client else "unknown"
    wait = await RateLimits(state.redis, SUBSCRIBE_LIMITS).acquire(SUBSCRIBE_SCOPE, client)
    if wait is not None:
        minutes = max(1, math.ceil(wait.total_seconds() / 60))
        return _form_page(
            state,
            email=typed,
            checked=checked,
            error=f"too many subscription requests: try again in {minutes} minute(s)",
            error_field="email",
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait.total_seconds()))},
        )
    try:
        address = parse_address(typed)
    except InvalidAddress as exc:
        reason = str(exc) if typed.strip() else "enter your email address"
        return _form_page(state, email=typed, checked=checked, error=reason, error_field="email")
    try:
        components = chosen_components(requested, [c.name for c in state.plan.components])
    except ValueError as exc:
        return _form_page(
            state, email=typed, checked=checked, error=str(exc), error_field="component"
        )
    background.add_task(
        ask_to_confirm,
        SubscriptionStore(state.redis, state.clock),
        ConfirmationMailer(state.settings, state.redis, state.clock),
        address,
        components,
        organization=state.plan.organization,
        follow_url=state.plan.follow_url(state.settings.local_status_url),
        email_from=state.settings.email_from,
    )
    values = _values(
        state,
        email=address,
        hours=int(PENDING_FOR.total_seconds() // 3600),
        minutes=int(MAIL_EVERY.total_seconds() // 60),
    )
    return html_page("page/subscribe_sent.html.j2", values)


# Confirming


def _bad_confirm_link(state: DispatcherState, token: str) -> HTMLResponse:
    if not well_formed_token(token):
        return _problem(
            state,
            400,
            heading="This link is not complete",
            problem="The confirmation link is missing part of its address.",
            advice="Copy the whole link from the email into your browser, or subscribe again.",
        )
    return _problem(
        state,
        404,
        heading="This link has expired or was used already",
        problem="This confirmation link no longer works: it was used already, or it is "
        f"more than {int(PENDING_FOR.total_seconds() // 3600)} hours old.",
        advice="If you are not getting updates yet, subscribe again for a new link.",
    )


@subscription_routes.get("/subscribe/confirm", response_class=HTMLResponse)
async def confirm_page(state: State, token: str = "") -> HTMLResponse:
    pending = await SubscriptionStore(state.redis, state.clock).pending(token)
    if pending is None:
        return _bad_confirm_link(state, token)
    values = _values(
        state,
        scope=scope_words(pending.components),
        token=token,
        confirm_href=CONFIRM_HREF,
    )
    return html_page("page/subscribe_confirm.html.j2", values, headers=PRIVATE)


@subscription_routes.post("/subscribe/confirm", response_class=HTMLResponse)
async def confirm(request: Request, state: State, token: str = "") -> HTMLResponse:
    token = token or _text(await request.form(), "token")
    subscriber = await SubscriptionStore(state.redis, state.clock).confirm(token)
    if subscriber is None:
        return _bad_confirm_link(state, token)
    secret = await unsubscribe_secret(state.settings, state.redis)
    values = _values(
        state,
        email=subscriber.address,
        scope=scope_words(subscriber.subscription.components),
        unsubscribe_href=_with_token(
            UNSUBSCRIBE_HREF, unsubscribe_token(secret, subscriber.address)
        ),
    )
    return html_page("page/subscribe_confirmed.html.j2", values, headers=PRIVATE)


# Unsubscribing


async def _unsubscriber(state: DispatcherState, token: str) -> str | None:
    """The address an unsubscribe token was signed for; None for anything else."""
    if not token:
        return None
    return verify_unsubscribe_token(await unsubscribe_secret(state.settings, state.redis), token)


def _bad_unsubscribe_link(state: DispatcherState) -> HTMLResponse:
    return _problem(
        state,
        400,
        heading="This unsubscribe link is not valid",
        problem="The link is incomplete or was changed, so we cannot tell whose it is.",
        advice="Use the unsubscribe link at the bottom of one of our update emails, copied whole.",
        subscribe_again=False,
    )


@subscription_routes.get("/unsubscribe", response_class=HTMLResponse)
async def unsubscribe_page(state: State, token: str = "") -> HTMLResponse:
    address = await _unsubscriber(state, token)
    if address is None:
        return _bad_unsubscribe_link(state)
    values = _values(
        state, email=address.strip(), unsubscribe_href=_with_token(UNSUBSCRIBE_HREF, token)
    )
    return html_page("page/unsubscribe.html.j2", values, headers=PRIVATE)


@subscription_routes.post("/unsubscribe", response_class=HTMLResponse)
async def unsubscribe(request: Request, state: State, token: str = "") -> HTMLResponse:
    if not token:
        token = _text(await request.form(), "token")
    address = await _unsubscriber(state, token)
    if address is None:
        return _bad_unsubscribe_link(state)
    await SubscriptionStore(state.redis, state.clock).unsubscribe(address)
    values = _values(state, email=address.strip())
    return html_page("page/unsubscribe_done.html.j2", values, headers=PRIVATE)
