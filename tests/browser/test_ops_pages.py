"""The ops pages in a real Chromium: closed without the ops token, useful with it.

The system runs as processes with ``CLARION_OPS_TOKEN`` set (tests/browser/conftest.py);
one incident is open and its emails are in the delivery log. Selectors are what a person
sees (roles, labels, text), never the page's CSS structure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, Response, expect

from tests.browser.artifacts import is_png
from tests.browser.clarion_system import EMAILS, OPS_TOKEN, ServedIncident
from tests.browser.conftest import OpenPage

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

OPS_PAGES = ("/ops", "/ops/deliveries", "/ops/dead-letters")
REFUSED = (401, 403)


async def _visit(page: Page, url: str) -> Response:
    response = await page.goto(url)
    assert response is not None, url
    return response


def _lands(response: Response) -> bool:
    """The answer a navigation ends on (after any redirects)."""
    return response.request.is_navigation_request() and not 300 <= response.status < 400


async def _sign_in(page: Page, token: str) -> Response:
    """Fill the sign-in form and submit it; the page the browser lands on."""
    await page.get_by_label("Ops token").fill(token)
    async with page.expect_response(_lands) as answer:
        await page.get_by_role("button", name="Sign in").click()
    return await answer.value


def _cell(page: Page, text: str) -> Locator:
    return page.get_by_role("cell", name=text, exact=True)


async def _shows_the_sign_in_form(page: Page) -> None:
    field = page.get_by_label("Ops token")
    await expect(field).to_be_visible()
    await expect(field).to_have_attribute("name", "token")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()


async def _shows_nothing_of(page: Page, incident: ServedIncident) -> None:
    body = page.locator("body")
    for secret in (incident.id, incident.ops_title, incident.update_message):
        await expect(body).not_to_contain_text(secret)


@pytest.mark.parametrize("path", OPS_PAGES)
async def test_an_ops_page_without_the_token_is_refused_with_a_sign_in_form(
    open_page: OpenPage, incident: ServedIncident, path: str
) -> None:
    page = await open_page()
    response = await _visit(page, incident.dispatcher_url + path)
    assert response.status in REFUSED, f"{path} answered {response.status}"
    await _shows_the_sign_in_form(page)
    await _shows_nothing_of(page, incident)


async def test_after_signing_in_the_deliveries_page_shows_the_incidents_deliveries(
    open_page: OpenPage, incident: ServedIncident, screenshot: Callable[..., Path]
) -> None:
    page = await open_page(viewport={"width": 1280, "height": 800})
    deliveries = incident.dispatcher_url + "/ops/deliveries"
    assert (await _visit(page, deliveries)).status in REFUSED

    signed_in = await _sign_in(page, OPS_TOKEN)
    assert signed_in.status == 200, f"signing in landed on a {signed_in.status}"
    response = await _visit(page, deliveries)
    assert response.status == 200

    # A row per email: this incident, the channel, the recipient masked, and "sent".
    rows = page.get_by_role("row").filter(has_text=incident.id)
    for address in EMAILS:
        local, domain = address.split("@")
        sent_email = (
            rows.filter(has=_cell(page, "email"))
            .filter(has=_cell(page, f"{local[0]}***@{domain}"))
            .filter(has=_cell(page, "sent"))
        )
        await expect(sent_email.first).to_be_visible()
        await expect(page.locator("body")).not_to_contain_text(address)

    # The session is not the token itself, and the token is never shown back.
    await expect(page.locator("body")).not_to_contain_text(OPS_TOKEN)
    cookies = await page.context.cookies()
    assert cookies, "signing in set no session cookie"
    assert all(OPS_TOKEN not in c["value"] for c in cookies), "the cookie holds the token"

    shot = screenshot()
    await page.screenshot(path=shot, full_page=True)
    assert shot.is_file(), shot
    assert is_png(shot), shot


async def test_a_wrong_token_stays_refused(open_page: OpenPage, incident: ServedIncident) -> None:
    page = await open_page()
    deliveries = incident.dispatcher_url + "/ops/deliveries"
    assert (await _visit(page, deliveries)).status in REFUSED

    refused = await _sign_in(page, "not-the-ops-token")
    assert refused.status in REFUSED, f"a wrong token answered {refused.status}"
    await _shows_the_sign_in_form(page)
    await _shows_nothing_of(page, incident)

    again = await _visit(page, deliveries)
    assert again.status in REFUSED, f"after a wrong token, {again.status}"
    await _shows_nothing_of(page, incident)
